"""The training job, a thin adapter: resync with Label Studio, read the stored annotations into
examples, call the training core (``training.fit``), publish a version in the project store."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import torch

from ml_backend.config import Settings
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.prepare import marks_on_input, prepare_task
from ml_backend.discovery.describe import (add_thumbnails, apply_cluster_corrections, cluster_payload, describe_inputs,
                                          representative_ids)
from ml_backend.discovery.clusters import StrategyClustering
from ml_backend.explain.counterfactual import donor_bank
from ml_backend.feedback.parse import FeedbackError, feedback_counts, parse_annotation
from ml_backend.feedback.store import AnnotationStore
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.models.base import IMAGE, ModelKind
from ml_backend.project import ProjectContext, new_model, project_context
from ml_backend.inference import resolve_device
from ml_backend.store import ProjectStore, StoreError, open_annotation_store
from ml_backend.training.fit import Example, evaluate, fit_examples, split_holdout

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
# training inputs stored with an image version, that the interactive counterfactual fills from:
# at most 16, in about 2 MB at half precision (six at 224 px)
DONORS_MAX, DONORS_BYTES = 16, 2 << 20


def _quiet(fraction: float, message: str = "") -> None:
    pass


def retrying(call: Callable[[], Any], attempts: int = 4, first_delay: float = 1.0) -> Any:
    """Retry a call to Label Studio on connection errors and 5xx, with exponential backoff."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return call()
        except LabelStudioError as exc:
            status = getattr(exc, "status", None)
            if attempt == attempts - 1 or (status is not None and status < 500):
                raise
            log.warning("Label Studio call failed (%s); retrying in %.0fs", exc, delay)
        time.sleep(delay)
        delay *= 2


def resync(settings: Settings, project: str, store: AnnotationStore, force: bool) -> Optional[dict[str, int]]:
    """Make the store equal to Label Studio's annotations for the project (paged), when
    asked to or when the counts disagree. Returns the changes, or None when not synced."""
    if not settings.reaches_label_studio(project):
        return None
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout)
    if not force:
        info = retrying(lambda: client.get_project(int(project)))
        if int(info.get("total_annotations_number", -1)) == store.count(project):
            return None
    pairs = []
    for task in retrying(lambda: list(client.iter_annotated_tasks(int(project)))):
        for annotation in task.get("annotations") or []:
            task_only = {k: v for k, v in task.items() if k not in ("annotations", "predictions", "drafts")}
            pairs.append((annotation, task_only))
    changes = store.replace_all(project, pairs)
    log.info("project %s: resynced from Label Studio: %s", project, changes)
    return changes


def load_examples(ctx: ProjectContext, model: ModelKind, pairs: list, fetcher: Fetcher,
                  progress: Progress) -> tuple[list[Example], dict[str, int]]:
    """Stored (annotation, task) pairs -> examples; what cannot be used is counted, not fatal."""
    spec = model.input_spec()
    examples, skipped = [], {"cancelled_or_unlabelled": 0, "unreadable": 0, "invalid": 0}
    for i, (annotation, task) in enumerate(pairs):
        if annotation.get("was_cancelled"):
            skipped["cancelled_or_unlabelled"] += 1
            continue
        try:
            prepared = prepare_task(ctx.schema, model, task, fetcher)
        except DataError as exc:
            log.warning("project %s task %s: unreadable data: %s", ctx.key, task.get("id"), exc)
            skipped["unreadable"] += 1
            continue
        try:
            feedback = marks_on_input(parse_annotation(annotation, task, ctx.schema, image_size=spec.image_size,
                                                       max_len=spec.max_len, text=prepared.text,
                                                       tokens=prepared.tokens), prepared)
        except FeedbackError as exc:
            log.warning("project %s annotation %s: %s", ctx.key, annotation.get("id"), exc)
            skipped["invalid"] += 1
            continue
        except Exception as exc:  # one malformed annotation must never stop a project's training
            log.warning("project %s annotation %s: malformed (%s); skipped", ctx.key, annotation.get("id"),
                        type(exc).__name__)
            skipped["invalid"] += 1
            continue
        if feedback.label is None:
            skipped["cancelled_or_unlabelled"] += 1
            continue
        examples.append(Example(int(task.get("id", i)), prepared.tensor, feedback, prepared.text, prepared.tokens))
        if i % 50 == 0:
            progress(0.1 + 0.2 * i / max(len(pairs), 1), f"read {i + 1}/{len(pairs)} annotations")
    return examples, skipped


def starting_model(ctx: ProjectContext, store: ProjectStore) -> tuple[ModelKind, Optional[str]]:
    """The current version when it fits the project (a warm start: a few epochs on the new
    feedback are enough), else a new model; and the parent version's name."""
    current = store.current()
    if current:
        try:
            loaded = store.load(current, donors=False)
            same_kind = (type(loaded.model) is ctx.kind and loaded.model.fits(ctx.settings)
                         and loaded.model.multi_label == ctx.schema.multi_label)
            if loaded.classes == ctx.schema.classes and same_kind:
                return loaded.model, current
        except StoreError as exc:
            log.warning("project %s: cannot warm-start from %s: %s", ctx.key, current, exc)
    return new_model(ctx), current


def train_project(settings: Settings, project: str, reason: str = "annotations",
                  progress: Progress = _quiet, job_id: Optional[str] = None) -> dict[str, Any]:
    """Retrain a project's model from every stored annotation; publish a new version. Its meta
    says what the training read (``store_revision``, ``annotations``) and when it ran, by which job
    (``trained``: job id, start and end, wall clock): the trainings of a project never overlap."""
    started = time.perf_counter()
    started_at = time.time()
    ctx = project_context(settings, project)
    annotations = open_annotation_store(settings)
    progress(0.02, "checking annotations against Label Studio")
    synced = resync(settings, project, annotations, force=(reason == "resync"))
    revision = annotations.revision(project)
    pairs = annotations.list(project)
    progress(0.1, f"{len(pairs)} annotations")
    store = ProjectStore(settings.model_dir, project)
    model, parent = starting_model(ctx, store)
    model.use_feature_cache(store.feature_cache(ctx.settings.feature_cache_mb))
    examples, skipped = load_examples(ctx, model, pairs, Fetcher(settings), progress)
    if not examples:
        return {"version": None, "skipped": "no usable annotations", "annotations": len(pairs), **skipped}
    corrections = annotations.cluster_corrections(project)
    cluster_marked = apply_cluster_corrections(
        examples, corrections, correction_models(store, model, parent), ctx.settings.attribution,
        ctx.settings.evidence_mass, ctx.settings.mc_samples) if corrections else 0
    train, held = split_holdout(examples, ctx.settings.holdout)
    fitted = fit_examples(model, train, ctx.settings, seed=revision, device=resolve_device(settings.device),
                          progress=lambda f, m: progress(0.3 + 0.6 * f, m))
    progress(0.92, "evaluating")
    metrics = evaluate(model, fitted, held, ctx.settings)
    counts = feedback_counts([e.feedback for e in examples])
    if annotations.revision(project) != revision:
        log.info("project %s: annotations changed during training; a follow-up job will include them", project)
    report = fitted.report
    meta = {
        "metrics": metrics, "feedback": counts, "examples": len(examples), "holdout": len(held),
        **fitted.added, "strategies": list(ctx.settings.strategies),
        "reason": reason, "store_revision": revision, "resync": synced, "skipped": skipped,
        "epochs": report.epochs_run, "train_seconds": round(report.seconds, 3), "device": report.device,
        "final_loss": report.history[-1] if report.history else None, "parent": parent,
        "concept_examples": None, **model.version_notes(fitted.data.x, [e.task_id for e in train]),
        "annotations": len(pairs), "trained": {"job": job_id, "started_at": started_at, "ended_at": time.time()},
        "cluster_corrections": {"clusters": [c["cluster"] for c in corrections], "tasks_marked": cluster_marked},
    }
    donors = None
    if model.modality == IMAGE and len(fitted.data.x):
        size = max(2, min(DONORS_MAX, DONORS_BYTES // (2 * fitted.data.x[0].numel())))
        donors = donor_bank(fitted.data.x, fitted.data.y, size, seed=revision)
    version = store.publish(model.to(resolve_device("cpu")), ctx.schema.classes, meta, donors=donors)
    log.info("project %s: published %s (%d examples, metrics %s) in %.1fs", project, version, len(examples),
             metrics, time.perf_counter() - started)
    # with Label Studio, the ranking job that follows every version clusters the labelled tasks
    # beside the unlabelled ones (and replaces these): describing them here too cost a second pass,
    # minutes for 1,000 tasks on a frozen ResNet-18 at 224 px, while the next training waited
    if ctx.settings.evidence_clusters and not settings.reaches_label_studio(project):
        progress(0.96, "clustering the evidence of the labelled tasks")
        publish_clusters(ctx, store, model, version, examples)
    progress(1.0, f"published {version}")
    return {"version": version, "metrics": metrics, "examples": len(examples), "feedback": counts}


def correction_models(store: ProjectStore, starting: ModelKind, parent: Optional[str]) -> Callable[[str], ModelKind]:
    """Version name -> its model (loaded once), for the evidence a cluster correction marks; the
    starting model for a version that is gone."""
    loaded: dict[str, ModelKind] = {}

    def model_of(version: str) -> ModelKind:
        if version in loaded:
            return loaded[version]
        try:
            model = store.load(version, donors=False).model
            model.network.eval()
            loaded[version] = model
        except StoreError:
            log.info("project %s: version %s of a cluster correction is gone; marking what %s shows", store.project,
                     version, parent)
            loaded[version] = starting
        return loaded[version]

    return model_of


def publish_clusters(ctx: ProjectContext, store: ProjectStore, model: ModelKind, version: str,
                     examples: list[Example]) -> Optional[dict[str, Any]]:
    """The new version's evidence clusters over the labelled tasks (the ranking job adds the
    unlabelled ones), stored with the version. A failure here is logged and never costs the
    version: what the model looks at is a view on it."""
    try:
        first = {}
        for e in examples:
            first.setdefault(e.task_id, e)
        task_ids = list(first)
        x = torch.stack([first[t].x for t in task_ids])
        descriptors = describe_inputs(model, x, ctx.settings.attribution, ctx.settings.mc_samples, keep=True).result()
        clusters = StrategyClustering(seed=store.number(version)).fit(descriptors)
        payload = cluster_payload(clusters, task_ids, set(task_ids), ctx.schema.classes, version,
                                  store.number(version))
        try:
            shown = representative_ids(payload)  # never empty: every cluster has a representative
            add_thumbnails(payload, model, torch.stack([first[t].x for t in shown]), shown, ctx.settings.attribution,
                           ctx.settings.evidence_mass, ctx.settings.mc_samples, [first[t].tokens for t in shown])
        except Exception as exc:  # noqa: BLE001 - the clusters stand without their pictures
            log.warning("project %s: thumbnails of %s's clusters not drawn: %s: %s", ctx.key, version,
                        type(exc).__name__, exc)
        store.save_clusters({**payload, "computed_at": time.time(), "sources": ["labeled"]})
        return payload
    except Exception as exc:  # noqa: BLE001 - the version stands without its clusters
        log.warning("project %s: evidence clusters of %s not computed: %s: %s", ctx.key, version,
                    type(exc).__name__, exc)
        return None
