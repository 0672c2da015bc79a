"""The ranking core: score unlabeled tasks with one model version and an acquisition function.

No Label Studio client, store or queue here (the ranking job, ``jobs.rank``, reads the tasks and
pushes the results). Memory stays flat in the number of tasks: tasks arrive as an iterator and
are scored in batches; each task keeps only its probabilities (and, for ALEX, a small pooled
explanation), while its rendered prediction waits in a JSON-lines spool file on disk until the
scores are known.
"""
from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.prepare import PreparedTask, prepare_task
from ml_backend.discovery.evidence import EvidenceDescriber
from ml_backend.project import ProjectContext
from ml_backend.ranking.acquisition import ACQUISITIONS, rank
from ml_backend.ranking.acquisition.base import ls_scores_of
from ml_backend.ranking.evidence_share import evidence_groups, rank_by_class_and_evidence
from ml_backend.rendering import render_predictions
from ml_backend.store import LoadedModel

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
BATCH = 32
EXPLANATION_CELLS = 16  # ALEX compares explanations pooled to 16x16 (images) or 16 token bins


def _quiet(fraction: float, message: str = "") -> None:
    pass


def pooled_explanations(relevance: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, L) relevance -> (N, D) small non-negative vectors for ALEX."""
    r = torch.as_tensor(relevance, dtype=torch.float32).clamp_min(0)
    if r.dim() == 3:
        return F.adaptive_avg_pool2d(r.unsqueeze(1), EXPLANATION_CELLS).flatten(1).numpy()
    return F.adaptive_avg_pool1d(r.unsqueeze(1), EXPLANATION_CELLS).flatten(1).numpy()


def _batches(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Scorer:
    """Scores batches of prepared tasks with one model version and one acquisition function."""

    def __init__(self, ctx: ProjectContext, loaded: LoadedModel, describer: Optional[EvidenceDescriber] = None) -> None:
        self.ctx, self.loaded, self.describer = ctx, loaded, describer
        seed = zlib.crc32(f"{ctx.key}:{loaded.version}".encode())
        self.acquisition = ACQUISITIONS.get(ctx.settings.acquisition).from_settings(ctx.settings, seed)
        self.probs: list[np.ndarray] = []
        self.mc: list[np.ndarray] = []
        self.explanations: list[np.ndarray] = []
        # the unlabeled tasks' evidence, for the evidence groups' cap (the describer may hold labelled ones too)
        self.evidence = EvidenceDescriber(seed) if ctx.settings.max_evidence_share < 1.0 else None

    def add(self, prepared: list[PreparedTask]) -> list[dict[str, Any]]:
        """Render predictions for a batch and keep what the acquisition function needs."""
        need_expl = self.acquisition.needs_explanations
        describers = [d for d in (self.describer, self.evidence) if d is not None]
        rendered = render_predictions(self.ctx, self.loaded, prepared, with_relevance=need_expl or bool(describers))
        self.probs.append(rendered.probs.numpy())
        if describers and rendered.relevance is not None:
            model = self.loaded.model
            with torch.no_grad():
                features = model.region_features(torch.stack([p.tensor for p in prepared]).to(model.device()))
            for describer in describers:
                describer.add(torch.as_tensor(rendered.relevance), None if features is None else features.cpu(),
                              rendered.probs.argmax(dim=1).numpy())
        if self.acquisition.needs_mc:
            model = self.loaded.model
            x = torch.stack([p.tensor for p in prepared]).to(model.device())
            self.mc.append(model.mc_probs(x, self.ctx.settings.mc_samples))
        if need_expl:
            self.explanations.append(pooled_explanations(rendered.relevance))
        return rendered.predictions

    def scores(self, labeled_explanations: Optional[np.ndarray] = None) -> np.ndarray:
        probs = np.concatenate(self.probs) if self.probs else np.zeros((0, self.ctx.schema.n_classes))
        kwargs: dict[str, Any] = {"multi_label": True} if self.ctx.schema.multi_label else {}
        if self.mc:
            kwargs["mc_probs"] = np.concatenate(self.mc, axis=1)
        if self.explanations:
            kwargs["explanations"] = np.concatenate(self.explanations)
            kwargs["labeled_explanations"] = labeled_explanations
        return self.acquisition.scores(probs, **kwargs)

    def groups(self) -> Optional[np.ndarray]:
        """Each task's predicted class when the project caps a class's share of the queue, else None."""
        if self.ctx.settings.max_class_share >= 1.0 or not self.probs:
            return None
        return np.concatenate(self.probs).argmax(axis=1)

    def order(self, values: np.ndarray) -> np.ndarray:
        """Task indices, the first to annotate first: ``acquisition.rank`` with the project's class
        share cap, and its evidence share cap (``max_evidence_share``) when that is on."""
        settings = self.ctx.settings
        if self.evidence is None or len(self.evidence) != len(values):
            return rank(values, self.groups(), settings.max_class_share)
        evidence = self.evidence.result()
        content = evidence.content if evidence.content.shape[1] else evidence.place
        groups = evidence_groups(content, evidence.predicted, seed=self.evidence.seed)
        return rank_by_class_and_evidence(values, evidence.predicted, settings.max_class_share, groups,
                                          settings.max_evidence_share)

    def ls_scores(self, values: np.ndarray) -> np.ndarray:
        """Label Studio's scores in task order: lower is served first."""
        return ls_scores_of(self.order(values))


def labeled_explanations(ctx: ProjectContext, loaded: LoadedModel, prepared: list[PreparedTask]
                         ) -> Optional[np.ndarray]:
    """ALEX compares candidates with the explanations of already labeled tasks."""
    if not prepared:
        return None
    out = []
    for start in range(0, len(prepared), BATCH):
        rendered = render_predictions(ctx, loaded, prepared[start:start + BATCH], with_relevance=True)
        out.append(pooled_explanations(rendered.relevance))
    return np.concatenate(out)


def prepare_readable(ctx: ProjectContext, loaded: LoadedModel, tasks: list[dict[str, Any]], fetcher: Fetcher
                     ) -> list[PreparedTask]:
    """The tasks whose data can be read, prepared for the model."""
    prepared = []
    for task in tasks:
        try:
            prepared.append(prepare_task(ctx.schema, loaded.model, task, fetcher, len(prepared),
                                         ctx.settings.slic_segments > 0))
        except DataError:
            continue
    return prepared


def existing_predictions(task: dict[str, Any], version: str) -> list[int]:
    """Ids of the task's predictions of this version already in Label Studio (/predict's or ours)."""
    return [p["id"] for p in task.get("predictions") or []
            if isinstance(p, dict) and p.get("model_version") == version and "id" in p]


def rank_tasks(ctx: ProjectContext, loaded: LoadedModel, tasks: Iterator[dict[str, Any]], fetcher: Fetcher,
               spool: Path, progress: Progress = _quiet, labeled: Optional[np.ndarray] = None,
               unreadable: Optional[dict[int, dict[str, Any]]] = None,
               describer: Optional[EvidenceDescriber] = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(task ids, acquisition values, Label Studio scores) for the tasks; predictions spooled to disk.

    A task whose data cannot be read is not ranked: it gets no prediction, so it never sorts as
    the most informative. ``unreadable`` (when given) receives each such task's id -> {"reason",
    "existing": ids of its predictions of this version}, for the caller to log and remove.
    ``describer`` (when given) receives each scored task's evidence, for the evidence clusters."""
    scorer = Scorer(ctx, loaded, describer)
    ids: list[int] = []
    unreadable = {} if unreadable is None else unreadable
    with spool.open("w") as out:
        for batch in _batches(tasks, BATCH):
            prepared, batch_ids, existing = [], [], []
            for task in batch:
                try:
                    prepared.append(prepare_task(ctx.schema, loaded.model, task, fetcher, len(prepared),
                                                 ctx.settings.slic_segments > 0))
                    batch_ids.append(int(task["id"]))
                    existing.append(existing_predictions(task, loaded.version))
                except DataError as exc:
                    task_id = task.get("id") if isinstance(task, dict) else None
                    if isinstance(task_id, int):
                        unreadable[task_id] = {"reason": str(exc),
                                               "existing": existing_predictions(task, loaded.version)}
            if not prepared:
                continue
            for task_id, old, prediction in zip(batch_ids, existing, scorer.add(prepared)):
                out.write(json.dumps({"task": task_id, "result": prediction["result"], "existing": old}) + "\n")
            ids += batch_ids
            progress(0.05 + 0.6 * min(1.0, len(ids) / max(len(ids) + BATCH, 1)), f"scored {len(ids)} tasks")
    if unreadable:
        log.info("project %s: %d unlabeled tasks could not be read and were not ranked", ctx.key, len(unreadable))
    values = scorer.scores(labeled) if ids else np.zeros(0)
    return ids, values, scorer.ls_scores(values) if ids else np.zeros(0)


