"""The ranking job: score a project's unlabeled tasks with the serving version and make Label
Studio serve the most informative first.

Memory stays flat in the number of tasks: tasks are read from Label Studio page by page and
scored in batches; each task keeps only its probabilities (and, for ALEX, a small pooled
explanation), while its rendered prediction waits in a JSON-lines spool file on disk until the
scores are known.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.config import Settings
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.ranking.acquisition import get_acquisition, ls_scores
from ml_backend.ranking.mc import mc_dropout_probs
from ml_backend.serving import (PreparedTask, ProjectContext, prepare_task, project_context, render_predictions,
                                resolve_device)
from ml_backend.training.registry import ProjectRegistry, _write_atomic

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
BATCH = 32
PUSH_BATCH = 200
EXPLANATION_CELLS = 16  # ALEX compares explanations pooled to 16x16 (images) or 16 token bins


def _quiet(fraction: float, message: str = "") -> None:
    pass


def pooled_explanations(relevance: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, L) relevance -> (N, D) small non-negative vectors for ALEX."""
    r = torch.as_tensor(relevance, dtype=torch.float32).clamp_min(0)
    if r.dim() == 3:
        return F.adaptive_avg_pool2d(r.unsqueeze(1), EXPLANATION_CELLS).flatten(1).numpy()
    return F.adaptive_avg_pool1d(r.unsqueeze(1), EXPLANATION_CELLS).flatten(1).numpy()


def queue_path(settings: Settings, project: str) -> Path:
    return ProjectRegistry(settings.model_dir, project).root / "queue.json"


def load_queue(settings: Settings, project: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(queue_path(settings, project).read_text())
    except FileNotFoundError:
        return None


def _batches(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _digest(result: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]


class Scorer:
    """Scores batches of prepared tasks with one model version and one acquisition function."""

    def __init__(self, ctx: ProjectContext, loaded, device: torch.device) -> None:
        self.ctx, self.loaded, self.device = ctx, loaded, device
        s = ctx.settings
        kwargs: dict[str, Any] = {"b": s.alex_batch} if s.acquisition == "alex" else {}
        if s.acquisition == "random":  # a new order per version, reproducible for the same version
            kwargs["seed"] = zlib.crc32(f"{ctx.key}:{loaded.version}".encode())
        self.acquisition = get_acquisition(s.acquisition, **kwargs)
        self.probs: list[np.ndarray] = []
        self.mc: list[np.ndarray] = []
        self.explanations: list[np.ndarray] = []

    def add(self, prepared: list[PreparedTask]) -> list[dict[str, Any]]:
        """Render predictions for a batch and keep what the acquisition function needs."""
        need_expl = self.acquisition.needs_explanations
        rendered = render_predictions(self.ctx, self.loaded, prepared, self.device, with_relevance=need_expl)
        self.probs.append(rendered.probs.numpy())
        if self.acquisition.needs_mc:
            x = torch.stack([p.tensor for p in prepared]).to(self.device)
            model, T = self.loaded.model, self.ctx.settings.mc_samples
            if hasattr(model, "mc_probs"):  # weight samples of a Bayesian model
                self.mc.append(model.mc_probs(x, T).cpu().numpy())
            else:  # dropout samples: features once, the head T times
                self.mc.append(mc_dropout_probs(model, x, T))
        if need_expl:
            self.explanations.append(pooled_explanations(rendered.relevance))
        return rendered.predictions

    def scores(self, labeled_explanations: Optional[np.ndarray] = None) -> np.ndarray:
        probs = np.concatenate(self.probs) if self.probs else np.zeros((0, self.ctx.schema.n_classes))
        kwargs: dict[str, Any] = {}
        if self.mc:
            kwargs["mc_probs"] = np.concatenate(self.mc, axis=1)
        if self.explanations:
            kwargs["explanations"] = np.concatenate(self.explanations)
            kwargs["labeled_explanations"] = labeled_explanations
        return self.acquisition.scores(probs, **kwargs)


def _labeled_explanations(settings: Settings, ctx: ProjectContext, loaded, fetcher: Fetcher,
                          device: torch.device, limit: int = 200) -> Optional[np.ndarray]:
    """ALEX compares candidates with the explanations of already labeled tasks (the store's)."""
    from ml_backend.feedback.intake import store_path
    from ml_backend.feedback.store import AnnotationStore

    pairs = AnnotationStore(store_path(settings)).list(ctx.key)[-limit:]
    prepared = []
    for _, task in pairs:
        try:
            prepared.append(prepare_task(ctx, loaded.model.config, task, fetcher, len(prepared)))
        except DataError:
            continue
    if not prepared:
        return None
    out = []
    for start in range(0, len(prepared), BATCH):
        rendered = render_predictions(ctx, loaded, prepared[start:start + BATCH], device, with_relevance=True)
        out.append(pooled_explanations(rendered.relevance))
    return np.concatenate(out)


def existing_predictions(task: dict[str, Any], version: str) -> list[int]:
    """Ids of the task's predictions of this version already in Label Studio (/predict's or ours)."""
    return [p["id"] for p in task.get("predictions") or []
            if isinstance(p, dict) and p.get("model_version") == version and "id" in p]


def rank_tasks(ctx: ProjectContext, loaded, tasks: Iterator[dict[str, Any]], fetcher: Fetcher,
               device: torch.device, spool: Path, progress: Progress = _quiet,
               labeled_explanations: Optional[np.ndarray] = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(task ids, acquisition values, Label Studio scores) for the tasks; predictions spooled to disk."""
    scorer = Scorer(ctx, loaded, device)
    ids: list[int] = []
    unreadable = 0
    with spool.open("w") as out:
        for batch in _batches(tasks, BATCH):
            prepared, batch_ids, existing = [], [], []
            for task in batch:
                try:
                    prepared.append(prepare_task(ctx, loaded.model.config, task, fetcher, len(prepared)))
                    batch_ids.append(int(task["id"]))
                    existing.append(existing_predictions(task, loaded.version))
                except DataError as exc:
                    unreadable += 1
                    log.warning("project %s task %s: cannot read data: %s", ctx.key, task.get("id"), exc)
            if not prepared:
                continue
            for task_id, old, prediction in zip(batch_ids, existing, scorer.add(prepared)):
                out.write(json.dumps({"task": task_id, "result": prediction["result"], "existing": old}) + "\n")
            ids += batch_ids
            progress(0.05 + 0.6 * min(1.0, len(ids) / max(len(ids) + BATCH, 1)), f"scored {len(ids)} tasks")
    if unreadable:
        log.warning("project %s: %d unlabeled tasks could not be read and were not ranked", ctx.key, unreadable)
    values = scorer.scores(labeled_explanations) if ids else np.zeros(0)
    return ids, values, ls_scores(values) if ids else np.zeros(0)


def rank_project(settings: Settings, project: str, progress: Progress = _quiet) -> dict[str, Any]:
    """Rank the project's unlabeled tasks, push predictions and scores, switch Label Studio's queue."""
    from ml_backend.labelstudio.client import LabelStudioClient

    started = time.perf_counter()
    ctx = project_context(settings, project)
    registry = ProjectRegistry(settings.model_dir, project)
    version = registry.current()
    if version is None:
        return {"skipped": "no model version yet"}
    if not (settings.label_studio_url and settings.label_studio_api_key) or not project.isdigit():
        return {"skipped": "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to rank tasks"}
    loaded = registry.load(version)
    device = resolve_device(settings.device)
    loaded.model.to(device, memory_format=torch.channels_last).eval()
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout)
    fetcher = Fetcher(settings)
    labeled = None
    if ctx.settings.acquisition == "alex":
        labeled = _labeled_explanations(settings, ctx, loaded, fetcher, device)
    with tempfile.TemporaryDirectory(prefix="rank-") as tmp:
        spool = Path(tmp) / "predictions.jsonl"
        tasks = client.iter_tasks(int(project), only_unlabeled=True, with_predictions=True)
        ids, values, scores = rank_tasks(ctx, loaded, tasks, fetcher, device, spool, progress, labeled)
        pushed, unchanged = push_predictions(settings, client, project, version, ids, scores, spool, progress)
    fields: dict[str, Any] = {}
    if ids:  # Label Studio refuses (400) a model_version that no prediction of the project carries
        fields["model_version"] = version
    if ctx.settings.set_uncertainty_sampling:
        fields["sampling"] = "Uncertainty sampling"
    if fields:
        client.update_project(int(project), **fields)
    order = np.argsort(scores, kind="stable")
    queue = {"project": project, "model_version": version, "acquisition": ctx.settings.acquisition,
             "computed_at": time.time(), "seconds": round(time.perf_counter() - started, 3),
             "tasks": [{"task": ids[i], "score": float(scores[i]), "acquisition_value": float(values[i])}
                       for i in order]}
    _write_atomic(queue_path(settings, project), json.dumps(queue).encode())
    log.info("project %s: ranked %d unlabeled tasks with %s (%d pushed, %d unchanged) in %.1fs", project, len(ids),
             ctx.settings.acquisition, pushed, unchanged, queue["seconds"])
    progress(1.0, f"ranked {len(ids)} tasks")
    return {"version": version, "ranked": len(ids), "pushed": pushed, "unchanged": unchanged,
            "acquisition": ctx.settings.acquisition, "top": queue["tasks"][:5]}


def push_predictions(settings: Settings, client, project: str, version: str, ids: list[int], scores: np.ndarray,
                     spool: Path, progress: Progress = _quiet) -> tuple[int, int]:
    """Post each task's prediction with its score; skip those Label Studio already has unchanged.

    A task that already has a prediction of this version (ranked before: new tasks shift every
    rank-based score; or served by /predict, whose score is the confidence) gets that prediction
    updated and any other of the version removed: Label Studio's uncertainty sampling orders by
    the scores of all the task's predictions of the project's model_version, so one per task."""
    state_path = ProjectRegistry(settings.model_dir, project).root / "pushed.json"
    try:
        pushed_before = json.loads(state_path.read_text())
    except FileNotFoundError:
        pushed_before = {}
    score_of = {task_id: float(s) for task_id, s in zip(ids, scores)}
    pushed = unchanged = 0
    creates: list[dict[str, Any]] = []

    def flush() -> None:
        if creates:  # one request per batch: a large project would otherwise take a request per task
            client.import_predictions(int(project), creates)
            creates.clear()
            _write_atomic(state_path, json.dumps(pushed_before).encode())

    with spool.open() as lines:
        for n, line in enumerate(lines):
            item = json.loads(line)
            task_id = item["task"]
            score = score_of[task_id]
            key = [version, round(score, 6), _digest(item["result"])]
            before = pushed_before.get(str(task_id)) or []
            existing = list(item.get("existing") or [])  # Label Studio's own view, read while ranking
            if before[:3] == key and len(existing) == 1 and before[3:4] in ([None], existing):
                unchanged += 1
                continue
            prediction_id = None
            if existing:
                updated = client.update_prediction(existing[0], item["result"], score=score)
                prediction_id = (updated or {}).get("id")
                for extra in existing[1:]:
                    client.delete_prediction(extra)
            if prediction_id is None:
                creates.append({"task": task_id, "result": item["result"], "score": score, "model_version": version})
            pushed_before[str(task_id)] = [*key, prediction_id]
            pushed += 1
            if len(creates) >= PUSH_BATCH:
                flush()
                progress(0.65 + 0.3 * n / max(len(ids), 1), f"pushed {pushed} predictions")
    flush()
    _write_atomic(state_path, json.dumps(pushed_before).encode())
    return pushed, unchanged
