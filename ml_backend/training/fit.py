"""The training core, pure: labelled examples -> generalised corrections -> strategies -> fit -> metrics.

No Label Studio client, store or queue here: the training job (``jobs.train``) loads the examples,
calls ``fit_examples`` and ``evaluate``, and publishes. The XIL benchmark calls the same two.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ml_backend.config import ProjectSettings
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.feedback.parse import Feedback
from ml_backend.feedback.concepts import RegionFeatures, generalise_marks
from ml_backend.feedback.propagate import propagate
from ml_backend.feedback.text_concepts import match_marked_text
from ml_backend.models.base import ModelKind
from ml_backend.training.sets import TrainingSet, label_tensor
from ml_backend.training.strategies import Strategy, strategies_for
from ml_backend.training.trainer import FitConfig, FitReport, accuracy, fit

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class Example:
    task_id: int
    x: torch.Tensor
    feedback: Feedback
    text: Optional[str] = None  # text tasks: the document and its tokens, aligned with the masks,
    tokens: Optional[list[Any]] = None  # so a marked phrase is found again in other documents


@dataclass
class Fitted:
    """What one fit produced besides the trained model."""

    data: TrainingSet  # the labelled examples it saw (before augmentation)
    report: FitReport
    added: dict[str, Any] = field(default_factory=dict)  # propagated_to, generalised_by, counterexamples


def in_holdout(task_id: int, share: float) -> bool:
    """A stable split: a task stays on its side across versions."""
    return share > 0 and (zlib.crc32(str(task_id).encode()) % 1000) < share * 1000


def marked(example: Example) -> bool:
    """Whether an annotator marked evidence on the example (Irrelevant or Relevant)."""
    return example.feedback.irrelevant is not None or example.feedback.relevant is not None


def split_holdout(examples: list[Example], share: float) -> tuple[list[Example], list[Example]]:
    """(train, held out); everything trains when the holdout would take all. A corrected example
    always trains: the queue puts the least confident first, which are the held-out tasks the model
    never fitted, so a holdout took most corrections (6 of 8 on four corners) and none reached it."""
    held = [e for e in examples if in_holdout(e.task_id, share) and not marked(e)]
    train = [e for e in examples if marked(e) or not in_holdout(e.task_id, share)] or examples
    return train, held


def to_training_set(examples: list[Example], model: ModelKind) -> TrainingSet:
    x = torch.stack([e.x for e in examples])
    y = label_tensor([e.feedback.label for e in examples])
    mask_shape = model.mask_shape(x)

    def masks(attr: str) -> torch.Tensor:
        out = torch.zeros((len(examples), *mask_shape), dtype=torch.bool)
        for i, e in enumerate(examples):
            value = getattr(e.feedback, attr)
            if value is not None:
                out[i] = torch.as_tensor(np.asarray(value, dtype=bool))
        return out

    return TrainingSet(x, y, masks("irrelevant"), masks("relevant"))


def fit_set(data: TrainingSet, model: ModelKind, settings: ProjectSettings, strategies: list[Strategy], seed: int,
            docs: Optional[list[tuple[str, list[Any]]]] = None) -> tuple[TrainingSet, dict[str, Any]]:
    """What the model is fitted on: the labelled set with the corrections generalised to every
    task (``generalise``) and each strategy's extra examples. Returns it and what was added."""
    spread = generalise(data, model, settings, docs)
    out = TrainingSet(data.x, data.y, spread.irrelevant, data.relevant, spread.added)
    for strategy in strategies:
        out = strategy.augment(out, model, seed)
    info = {"propagated_to": int(spread.added.sum()), "generalised_by": spread.rules,
            "counterexamples": len(out) - len(data)}  # net: a background's copy replaces its original
    return out, info


@dataclass
class Spread:
    irrelevant: torch.Tensor
    added: torch.Tensor
    rules: list[str]  # how the marks reached other tasks


def generalise(data: TrainingSet, model: ModelKind, settings: ProjectSettings,
               docs: Optional[list[tuple[str, list[Any]]]] = None) -> Spread:
    """Irrelevant marks carried to every labelled task by what was marked: text by the marked
    words and phrases (``feedback.text_concepts``), images by validated position, background,
    template and feature-space rules (``feedback.concepts``; the features are the model's before
    this fit: the version whose evidence the annotators corrected). ``propagate_min_support`` = 0 keeps marks where they are."""
    none = Spread(data.irrelevant, torch.zeros(len(data), dtype=torch.bool), [])
    if settings.propagate_min_support < 1 or not data.has_irrelevant.any():
        return none
    if model.input_spec().modality == "text":
        if docs is not None and len(docs) == len(data):
            found = match_marked_text(docs, data.irrelevant, data.relevant)
            return Spread(found.irrelevant, found.added, ["text"] if found.added.any() else [])
        # no document text at hand (a caller with ids only): the marked token ids instead
        spread = propagate(model.mask_ids(data.x), data.irrelevant, data.relevant, settings.propagate_min_support)
        return Spread(spread.irrelevant, spread.added, ["token ids"] if spread.added.any() else [])
    if int(data.has_irrelevant.sum()) < max(2, settings.propagate_min_support):
        return none
    x = data.x.float()
    size = tuple(data.irrelevant.shape[1:])
    if tuple(x.shape[2:]) != size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    found = generalise_marks(x, data.irrelevant, data.relevant, features=region_feature_source(model, data.x))
    return Spread(found.irrelevant, found.added, sorted(found.rules))


def region_feature_source(model: ModelKind, x: torch.Tensor) -> Optional[RegionFeatures]:
    """Task indices -> the model's region features of those inputs, computed when asked (a
    project's tasks need not fit in memory as feature maps), or None if its kind has none."""
    device = model.device()
    if model.region_features(x[:1].to(device)) is None:
        return None
    return lambda indices: model.region_features(x[indices].to(device), keep=True)


def fit_examples(model: ModelKind, examples: list[Example], settings: ProjectSettings, *, seed: int,
                 device: Optional[torch.device] = None, progress: Optional[Progress] = None) -> Fitted:
    """Train ``model`` in place on the examples with the project's strategies."""
    data = to_training_set(examples, model)
    strategies = strategies_for(settings, type(model))
    docs = [(e.text, e.tokens) for e in examples] if all(e.tokens is not None for e in examples) else None
    augmented, added = fit_set(data, model, settings, strategies, seed, docs)
    report = fit(model, augmented, FitConfig.from_settings(settings, seed), strategies, device=device,
                 progress=progress)
    return Fitted(data, report, added)


def attribution_on_irrelevant(model: ModelKind, data: TrainingSet, method: str) -> Optional[float]:
    """Share of the served explanation's mass that falls on annotated irrelevant regions."""
    idx = torch.nonzero(data.has_irrelevant).flatten()
    if len(idx) == 0:
        return None
    x = data.x[idx].to(model.device())
    _, relevance = model.predict_and_explain(x, method)
    mass = irrelevant_mass(relevance.detach().cpu().numpy(), data.irrelevant[idx].numpy())
    return None if mass != mass else float(mass)  # NaN: every explanation was empty


def evaluate(model: ModelKind, fitted: Fitted, held: list[Example], settings: ProjectSettings) -> dict[str, Any]:
    """A version's metrics: accuracy, explanation mass on irrelevant marks, the kind's quality."""
    holdout = to_training_set(held, model) if held else None
    data, method = fitted.data, settings.attribution
    metrics: dict[str, Any] = {
        "holdout_accuracy": accuracy(model, holdout.x, holdout.y, mc_samples=settings.mc_samples) if holdout else None,
        "train_accuracy": accuracy(model, data.x, data.y, mc_samples=settings.mc_samples),
        "irrelevant_attribution_mass": attribution_on_irrelevant(model, data, method),
        "holdout_irrelevant_attribution_mass": attribution_on_irrelevant(model, holdout, method) if holdout else None,
        **model.quality(data.x),
    }
    last = fitted.report.history[-1] if fitted.report.history else {}
    if "activation_scale" in last:
        metrics["activation_evidence_scale"] = last["activation_scale"]
    return metrics
