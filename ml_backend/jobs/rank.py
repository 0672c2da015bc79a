"""The ranking job, a thin adapter: read the unlabeled tasks from Label Studio, score them with
the serving version (``ranking.score``), push predictions and scores (``ranking.push``), and
switch the project's queue to uncertainty sampling."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ml_backend.config import Settings
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.prepare import prepare_task
from ml_backend.discovery.clusters import StrategyClustering
from ml_backend.discovery.describe import add_thumbnails, cluster_payload, describe_inputs, representative_ids
from ml_backend.discovery.evidence import EvidenceDescriber
from ml_backend.inference import resolve_device
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.project import project_context
from ml_backend.ranking.acquisition import ACQUISITIONS
from ml_backend.ranking.push import push_predictions
from ml_backend.ranking.score import labeled_explanations, prepare_readable, rank_tasks
from ml_backend.store import ProjectStore, open_annotation_store

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
LABELED_FOR_EXPLANATIONS = 200
LABELED_FOR_CLUSTERS = 5000  # the newest labelled tasks clustered beside every unlabelled one


def _quiet(fraction: float, message: str = "") -> None:
    pass


def rank_project(settings: Settings, project: str, progress: Progress = _quiet) -> dict[str, Any]:
    """Rank the project's unlabeled tasks, push predictions and scores, switch Label Studio's queue.
    Jobs of one project run one at a time (the queue's rank lock); a ranking of a version that a
    newer one replaced meanwhile is dropped, not written over the newer one's."""
    started = time.perf_counter()
    ctx = project_context(settings, project)
    store = ProjectStore(settings.model_dir, project)
    version = store.current()
    if version is None:
        return {"skipped": "no model version yet"}
    if not settings.reaches_label_studio(project):
        return {"skipped": "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to rank tasks"}
    loaded = store.load(version, ctx.settings.feature_cache_mb, donors=False)
    loaded.model.to(resolve_device(settings.device)).network.eval()
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout)
    fetcher = Fetcher(settings)
    labeled = None
    if ACQUISITIONS.get(ctx.settings.acquisition).needs_explanations:
        pairs = open_annotation_store(settings).list(project)[-LABELED_FOR_EXPLANATIONS:]
        labeled = labeled_explanations(ctx, loaded, prepare_readable(ctx, loaded, [t for _, t in pairs], fetcher))
    describer: Optional[EvidenceDescriber] = None
    labeled_ids: list[int] = []
    labeled_tasks: dict[int, dict[str, Any]] = {}
    # off, no describer: the scorer then computes relevance only when its acquisition function reads it
    if ctx.settings.evidence_clusters:
        describer, labeled_ids, labeled_tasks = labeled_evidence(settings, ctx, loaded, project, fetcher)
    with tempfile.TemporaryDirectory(prefix="rank-") as tmp:
        spool = Path(tmp) / "predictions.jsonl"
        tasks = client.iter_tasks(int(project), only_unlabeled=True, with_predictions=True)
        unreadable: dict[int, dict[str, Any]] = {}
        ids, values, scores = rank_tasks(ctx, loaded, tasks, fetcher, spool, progress, labeled, unreadable,
                                         describer)
        if store.superseded(version):  # a newer version was published meanwhile: its own ranking follows
            return {"version": version, "skipped": f"superseded by {store.current()}"}
        scores = review_first(ids, scores, store.review(), version)
        pushed, unchanged = push_predictions(client, int(project), version, ids, scores, spool, store.pushed(),
                                             store.save_pushed, progress)
    removed = drop_unreadable(client, project, unreadable, (store.ranking() or {}).get("unreadable") or {})
    fields: dict[str, Any] = {}
    if ids:  # Label Studio refuses (400) a model_version that no prediction of the project carries
        fields["model_version"] = version
    if ctx.settings.set_uncertainty_sampling:
        fields["sampling"] = "Uncertainty sampling"
    if fields and not store.superseded(version):
        client.update_project(int(project), **fields)
    order = np.argsort(scores, kind="stable")
    ranking = {"project": project, "model_version": version, "acquisition": ctx.settings.acquisition,
               "computed_at": time.time(), "seconds": round(time.perf_counter() - started, 3),
               "tasks": [{"task": ids[i], "score": float(scores[i]), "acquisition_value": float(values[i])}
                         for i in order],
               "unreadable": {str(task): item["reason"] for task, item in unreadable.items()}}
    if not store.save_ranking(ranking):
        return {"version": version, "skipped": f"superseded by {store.current()}"}
    clustered = None
    if describer is not None:
        progress(0.97, "clustering the evidence")

        def task_of(task_id: int) -> dict[str, Any]:  # only the representatives are read again
            return labeled_tasks.get(task_id) or client.get_task(task_id)

        clustered = save_clusters(ctx, store, version, describer, labeled_ids, ids,
                                  draw=representative_thumbnails(ctx, loaded, fetcher, task_of))
    log.info("project %s: ranked %d unlabeled tasks with %s (%d pushed, %d unchanged) in %.1fs", project, len(ids),
             ctx.settings.acquisition, pushed, unchanged, ranking["seconds"])
    progress(1.0, f"ranked {len(ids)} tasks")
    return {"version": version, "ranked": len(ids), "pushed": pushed, "unchanged": unchanged,
            "unreadable": len(unreadable), "removed": removed, "acquisition": ctx.settings.acquisition,
            "clusters": clustered,
            "top": ranking["tasks"][:5]}


def drop_unreadable(client: Any, project: str, unreadable: dict[int, dict[str, Any]],
                    before: dict[str, str]) -> int:
    """Unreadable tasks get no prediction: remove any of this version they still have, so none
    sorts by a stale score. Logs each task's reason once: when it was not unreadable, or not for
    that reason, at the previous ranking. Returns how many predictions were removed."""
    removed = 0
    for task_id, item in unreadable.items():
        if before.get(str(task_id)) != item["reason"]:
            log.warning("project %s task %s: cannot read data (not ranked, no prediction): %s", project, task_id,
                        item["reason"])
        for prediction_id in item["existing"]:
            client.delete_prediction(prediction_id)
            removed += 1
    return removed


def labeled_evidence(settings: Settings, ctx: Any, loaded: Any, project: str, fetcher: Fetcher
                     ) -> tuple[EvidenceDescriber, list[int], dict[int, dict[str, Any]]]:
    """A describer holding the evidence of the newest labelled tasks (one per task), their ids,
    and the tasks by id: the clusters cover them beside the unlabelled tasks the ranking explains."""
    describer = EvidenceDescriber()
    tasks: dict[int, dict[str, Any]] = {}
    for _, task in open_annotation_store(settings).list(project)[-LABELED_FOR_CLUSTERS:]:
        if isinstance(task.get("id"), int):
            tasks[task["id"]] = task
    inputs, ids = [], []
    for task_id, task in tasks.items():
        try:
            inputs.append(prepare_task(ctx.schema, loaded.model, task, fetcher).tensor)
            ids.append(task_id)
        except DataError:
            continue
    if inputs:
        describe_inputs(loaded.model, torch.stack(inputs), ctx.settings.attribution, ctx.settings.mc_samples,
                        describer=describer, keep=True)
    return describer, ids, tasks


def review_first(ids: list[int], scores: np.ndarray, review: Optional[dict[str, Any]], version: str) -> np.ndarray:
    """Label Studio's scores with the tasks a project manager sent to annotators served first
    (lower is served first), in the order they were sent."""
    if not review or not ids:
        return scores
    position = {int(t): i for i, t in enumerate(review.get("task_ids") or [])}
    rows = [i for i, t in enumerate(ids) if t in position]
    if not rows:
        return scores
    out = np.array(scores, dtype=np.float64, copy=True)
    floor = float(out.min()) - 1.0 - len(position)
    for i in rows:
        out[i] = floor + position[ids[i]]
    return out


def representative_thumbnails(ctx: Any, loaded: Any, fetcher: Fetcher, task_of: Callable[[int], Any]
                              ) -> Callable[[dict[str, Any]], None]:
    """Draws the thumbnails of a cluster payload's representatives into it: only those tasks are
    read again (``task_of``: id -> task) and explained; one that cannot be read gets none."""

    def draw(payload: dict[str, Any]) -> None:
        shown, inputs, tokens = [], [], []
        for task_id in representative_ids(payload):
            try:
                prepared = prepare_task(ctx.schema, loaded.model, task_of(task_id), fetcher)
            except (DataError, LabelStudioError) as exc:
                log.info("project %s task %s: no thumbnail: %s", ctx.key, task_id, exc)
                continue
            shown.append(task_id)
            inputs.append(prepared.tensor)
            tokens.append(prepared.tokens)
        if shown:
            add_thumbnails(payload, loaded.model, torch.stack(inputs), shown, ctx.settings.attribution,
                           ctx.settings.evidence_mass, ctx.settings.mc_samples, tokens)

    return draw


def save_clusters(ctx: Any, store: ProjectStore, version: str, describer: EvidenceDescriber, labeled_ids: list[int],
                  unlabeled_ids: list[int], draw: Optional[Callable[[dict[str, Any]], None]] = None
                  ) -> Optional[dict[str, Any]]:
    """Cluster the described evidence and store it with the version (a view: a failure is logged),
    with the representatives' thumbnails when ``draw`` is given (a failure there costs only them)."""
    try:
        descriptors = describer.result()
        task_ids = labeled_ids + unlabeled_ids
        if len(descriptors) != len(task_ids) or not task_ids:
            return None
        clusters = StrategyClustering(seed=store.number(version)).fit(descriptors)
        payload = cluster_payload(clusters, task_ids, set(labeled_ids), ctx.schema.classes, version,
                                  store.number(version))
        if draw is not None:
            try:
                draw(payload)
            except Exception as exc:  # noqa: BLE001 - the clusters stand without their pictures
                log.warning("project %s: thumbnails of %s's clusters not drawn: %s: %s", ctx.key, version,
                            type(exc).__name__, exc)
        if store.superseded(version):
            return None
        store.save_clusters({**payload, "computed_at": time.time(), "sources": ["labeled", "unlabeled"]})
        return {"clusters": len(payload["clusters"]), "suspicious": sum(c["suspicious"] for c in payload["clusters"])}
    except Exception as exc:  # noqa: BLE001 - the ranking stands without its clusters
        log.warning("project %s: evidence clusters of %s not computed: %s: %s", ctx.key, version,
                    type(exc).__name__, exc)
        return None
