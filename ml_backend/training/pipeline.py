"""One training job: annotations -> feedback -> tensors (+ counterexamples) -> fit -> evaluate -> publish."""
from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from ml_backend.config import Settings
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.explain.quality import faithfulness, irrelevant_mass, senn_stability
from ml_backend.feedback.counterexamples import image_counterexamples, text_counterexamples
from ml_backend.feedback.intake import store_path
from ml_backend.feedback.parse import Feedback, FeedbackError, feedback_counts, parse_annotation
from ml_backend.feedback.propagate import propagate
from ml_backend.feedback.store import AnnotationStore
from ml_backend.serving import ProjectContext, new_model, prepare_task, project_context, relevance_maps
from ml_backend.training.registry import ProjectRegistry, RegistryError
from ml_backend.training.objectives import Weights
from ml_backend.training.trainer import FitConfig, TrainingSet, accuracy, fit, pick_device

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class Example:
    task_id: int
    x: torch.Tensor
    feedback: Feedback


def _quiet(fraction: float, message: str = "") -> None:
    pass


def retrying(call: Callable[[], Any], attempts: int = 4, first_delay: float = 1.0) -> Any:
    """Retry a call to Label Studio on connection errors and 5xx, with exponential backoff."""
    from ml_backend.labelstudio.client import LabelStudioError

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
    if not (settings.label_studio_url and settings.label_studio_api_key) or not project.isdigit():
        return None
    from ml_backend.labelstudio.client import LabelStudioClient

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


def _holdout(task_id: int, share: float) -> bool:
    """A stable split: a task stays on its side across versions."""
    return share > 0 and (zlib.crc32(str(task_id).encode()) % 1000) < share * 1000


def load_examples(ctx: ProjectContext, model_config: dict[str, Any], pairs: list, fetcher: Fetcher,
                  progress: Progress) -> tuple[list[Example], dict[str, int]]:
    image_size = model_config.get("image_size")
    max_len = model_config.get("max_len")
    examples, skipped = [], {"cancelled_or_unlabelled": 0, "unreadable": 0, "invalid": 0}
    for i, (annotation, task) in enumerate(pairs):
        if annotation.get("was_cancelled"):
            skipped["cancelled_or_unlabelled"] += 1
            continue
        try:
            prepared = prepare_task(ctx, model_config, task, fetcher)
            feedback = parse_annotation(annotation, task, ctx.schema, image_size=image_size, max_len=max_len,
                                        text=prepared.text)
        except DataError as exc:
            log.warning("project %s task %s: unreadable data: %s", ctx.key, task.get("id"), exc)
            skipped["unreadable"] += 1
            continue
        except FeedbackError as exc:
            log.warning("project %s annotation %s: %s", ctx.key, annotation.get("id"), exc)
            skipped["invalid"] += 1
            continue
        if feedback.label is None:
            skipped["cancelled_or_unlabelled"] += 1
            continue
        examples.append(Example(int(task.get("id", i)), prepared.tensor, feedback))
        if i % 50 == 0:
            progress(0.1 + 0.2 * i / max(len(pairs), 1), f"read {i + 1}/{len(pairs)} annotations")
    return examples, skipped


def to_training_set(examples: list[Example], text: bool) -> TrainingSet:
    x = torch.stack([e.x for e in examples])
    y = torch.tensor([e.feedback.label for e in examples], dtype=torch.long)
    mask_shape = x.shape[1:] if text else x.shape[2:]

    def masks(attr: str) -> torch.Tensor:
        out = torch.zeros((len(examples), *mask_shape), dtype=torch.bool)
        for i, e in enumerate(examples):
            value = getattr(e.feedback, attr)
            if value is not None:
                out[i] = torch.as_tensor(np.asarray(value, dtype=bool))
        return out

    return TrainingSet(x, y, masks("irrelevant"), masks("relevant"))


def add_counterexamples(data: TrainingSet, ctx: ProjectContext, model_config: dict[str, Any], seed: int,
                        propagated: Optional[torch.Tensor] = None) -> TrainingSet:
    """CAIPI: c copies of each corrected example with its irrelevant part changed, same label.

    Examples whose marks were only ``propagated`` (N,) bool get one copy each: enough to break the
    shortcut across the whole set without multiplying its size by c.
    """
    c = ctx.settings.counterexamples
    idx = torch.nonzero(data.has_irrelevant).flatten()
    if c <= 0 or len(idx) == 0:
        return data
    copies = torch.full((len(data),), c, dtype=torch.long)
    if propagated is not None:
        copies[propagated] = 1
    generator = torch.Generator().manual_seed(seed)
    text = data.x.dtype == torch.long
    xs = []
    for i in idx.tolist():
        k = int(copies[i])
        if text:
            xs.append(text_counterexamples(data.x[i], data.irrelevant[i], k, model_config["n_buckets"], generator=generator))
        else:
            donors = _donors(data.x, i, generator)
            xs.append(image_counterexamples(data.x[i], data.irrelevant[i], k, fill=ctx.settings.counterexample_fill,
                                            donors=donors, generator=generator))
    x = torch.cat(xs)
    y = data.y[idx].repeat_interleave(copies[idx])
    empty = torch.zeros((len(y), *data.irrelevant.shape[1:]), dtype=torch.bool)
    return TrainingSet.concat([data, TrainingSet(x, y, empty, empty.clone())])


def _donors(x: torch.Tensor, i: int, generator: torch.Generator, k: int = 16) -> Optional[torch.Tensor]:
    """Up to k random other examples to substitute from (indexing, not a copy of the whole set
    per example: with propagation every example gets a copy)."""
    if len(x) < 2:
        return None
    picks = torch.randint(len(x) - 1, (min(k, len(x) - 1),), generator=generator)
    return x[picks + (picks >= i).long()]


def fit_set(data: TrainingSet, ctx: ProjectContext, model_config: dict[str, Any], seed: int
            ) -> tuple[TrainingSet, dict[str, int]]:
    """What the model is fitted on: the labelled set with recurring corrections propagated
    (``feedback.propagate``) and, if chosen, counterexamples. Returns it and what was added."""
    spread = propagate(data.x, data.irrelevant, data.relevant, ctx.settings.propagate_min_support)
    marked = TrainingSet(data.x, data.y, spread.irrelevant, data.relevant)
    out = marked
    if "counterexamples" in ctx.settings.strategies:
        out = add_counterexamples(marked, ctx, model_config, seed, propagated=spread.added)
    info = {"propagated_to": int(spread.added.sum()), "propagated_region": spread.region_size,
            "counterexamples": len(out) - len(data)}
    return out, info


def attribution_on_irrelevant(model, data: TrainingSet, method: str) -> Optional[float]:
    """Share of the served explanation's mass that falls on annotated irrelevant regions."""
    idx = torch.nonzero(data.has_irrelevant).flatten()
    if len(idx) == 0:
        return None
    device = next(model.parameters()).device
    x = data.x[idx].to(device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    relevance = relevance_maps(model, x, targets, method).detach().cpu().numpy()
    mass = irrelevant_mass(relevance, data.irrelevant[idx].numpy())
    return None if mass != mass else float(mass)  # NaN: every explanation was empty


def explanation_quality(model, data: TrainingSet, limit: int = 32) -> dict[str, Optional[float]]:
    """SENN's stability (local Lipschitz estimate) and faithfulness (relevance vs. probability drop)."""
    if getattr(model, "kind", "") not in ("senn", "text_senn") or len(data) == 0:
        return {}
    device = next(model.parameters()).device
    x = data.x[:limit].to(device)
    model.eval()
    with torch.no_grad():
        target = model(x).argmax(1)
        relevance = model.evidence(x, target)
    out: dict[str, Optional[float]] = {"senn_stability": None, "senn_faithfulness": None}
    if x.dtype != torch.long:
        out["senn_stability"] = senn_stability(model, x, n_samples=10, eps=0.05, target=target)
    removal = concept_removal(model)
    if removal is not None:
        def probs(inp: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.softmax(model(inp), dim=1)

        out["senn_faithfulness"] = faithfulness(probs, x, relevance, removal, target=target)
    return {k: (None if v is None or v != v else float(v)) for k, v in out.items()}


def concept_removal(model) -> Optional[Callable[[torch.Tensor, int], torch.Tensor]]:
    """How to remove concept d from an input: blank its pixel or patch, or pad its token."""
    if model.kind == "text_senn":
        def remove_token(ids: torch.Tensor, d: int) -> torch.Tensor:
            out = ids.clone()
            out[:, d] = 0
            return out
        return remove_token
    if model.concept_kind in ("pixels", "patches"):
        p = 1 if model.concept_kind == "pixels" else model.patch
        cols = model.grid[1]

        def remove_cell(x: torch.Tensor, d: int) -> torch.Tensor:
            out = x.clone()
            r, c = divmod(d, cols)
            out[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = 0.0
            return out
        return remove_cell
    return None


def loss_weights(settings) -> Weights:
    """The project's strategies as loss weights (a strategy not chosen weighs 0)."""
    on = set(settings.strategies)
    return Weights(
        rrr_lambda=settings.rrr_lambda if "rrr" in on else 0.0,
        relevant_lambda=settings.relevant_lambda if "relevant" in on else 0.0,
        cali_lambda=settings.cali_lambda if "cali" in on else 0.0,
        senn_robustness=settings.senn_robustness,
        kl_weight=settings.kl_weight,
        evidence_sigma=settings.evidence_sigma if "activation_evidence" in on else 0.0,
    )


def train_project(settings: Settings, project: str, reason: str = "annotations",
                  progress: Progress = _quiet) -> dict[str, Any]:
    """Retrain a project's model from every stored annotation; publish a new version."""
    started = time.perf_counter()
    ctx = project_context(settings, project)
    store = AnnotationStore(store_path(settings))
    progress(0.02, "checking annotations against Label Studio")
    synced = resync(settings, project, store, force=(reason == "resync"))
    revision = store.revision(project)
    pairs = store.list(project)
    progress(0.1, f"{len(pairs)} annotations")
    registry = ProjectRegistry(settings.model_dir, project)
    current = registry.current()
    model = None
    if current:
        try:
            loaded = registry.load(current)
            if loaded.classes == ctx.schema.classes:
                model = loaded.model  # warm start: a few epochs on the new feedback are enough
        except RegistryError as exc:
            log.warning("project %s: cannot warm-start from %s: %s", project, current, exc)
    model = model or new_model(ctx)
    fetcher = Fetcher(settings)
    examples, skipped = load_examples(ctx, model.config, pairs, fetcher, progress)
    if not examples:
        return {"version": None, "skipped": "no usable annotations", "annotations": len(pairs), **skipped}
    text = ctx.schema.object_type == "text"
    held = [e for e in examples if _holdout(e.task_id, ctx.settings.holdout)]
    train = [e for e in examples if not _holdout(e.task_id, ctx.settings.holdout)] or examples
    data = to_training_set(train, text)
    augmented, added = fit_set(data, ctx, model.config, seed=revision)
    config = FitConfig(epochs=ctx.settings.epochs, batch_size=ctx.settings.batch_size,
                       learning_rate=ctx.settings.learning_rate, weights=loss_weights(ctx.settings),
                       patience=ctx.settings.patience, seed=revision)
    device = pick_device(settings.device)
    report = fit(model, augmented, config, device=device,
                 progress=lambda f, m: progress(0.3 + 0.6 * f, m))
    progress(0.92, "evaluating")
    holdout = to_training_set(held, text) if held else None
    metrics = {
        "holdout_accuracy": accuracy(model, holdout.x, holdout.y) if holdout else None,
        "train_accuracy": accuracy(model, data.x, data.y),
        "irrelevant_attribution_mass": attribution_on_irrelevant(model, data, ctx.settings.attribution),
        "holdout_irrelevant_attribution_mass": attribution_on_irrelevant(model, holdout, ctx.settings.attribution)
        if holdout else None,
        **explanation_quality(model, data),
    }
    if report.history and "activation_scale" in report.history[-1]:
        metrics["activation_evidence_scale"] = report.history[-1]["activation_scale"]
    counts = feedback_counts([e.feedback for e in examples])
    concept_examples = None
    if getattr(model, "concept_kind", None) == "learned":
        # each learned concept is shown through the training tasks that activate it most
        from ml_backend.models.senn import most_activating_examples

        top = most_activating_examples(model, data.x.to(next(model.parameters()).device), k=min(5, len(data)))
        concept_examples = {str(c): [train[int(i)].task_id for i in idx] for c, idx in top.items()}
    if store.revision(project) != revision:
        log.info("project %s: annotations changed during training; a follow-up job will include them", project)
    meta = {
        "metrics": metrics, "feedback": counts, "examples": len(examples), "holdout": len(held),
        "counterexamples": added["counterexamples"], "propagated_to": added["propagated_to"],
        "propagated_region": added["propagated_region"], "strategies": list(ctx.settings.strategies),
        "reason": reason, "store_revision": revision, "resync": synced, "skipped": skipped,
        "epochs": report.epochs_run, "train_seconds": round(report.seconds, 3), "device": report.device,
        "final_loss": report.history[-1] if report.history else None, "parent": current,
        "concept_examples": concept_examples,
    }
    version = registry.publish(model.cpu(), ctx.schema.classes, meta)
    log.info("project %s: published %s (%d examples, metrics %s) in %.1fs", project, version, len(examples),
             metrics, time.perf_counter() - started)
    progress(1.0, f"published {version}")
    return {"version": version, "metrics": metrics, "examples": len(examples), "feedback": counts}
