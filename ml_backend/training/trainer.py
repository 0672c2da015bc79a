"""The fit loop: device choice, mini-batches, the loss (cross-entropy + each strategy's term + the
model kind's own terms), early stopping, progress."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ml_backend.config import ProjectSettings
from ml_backend.inference import resolve_device
from ml_backend.models.base import ModelKind
from ml_backend.training.head import fit_linear_head
from ml_backend.training.losses import label_loss
from ml_backend.training.sets import Batch, Forward, TrainingSet
from ml_backend.training.strategies import Strategy

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class FitConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    lr_schedule: str = "auto"  # "auto": the model kind's own (ModelKind.lr_schedule)
    seed: int = 0
    project: ProjectSettings = field(default_factory=ProjectSettings)  # what the kind's own terms read

    @classmethod
    def from_settings(cls, settings: ProjectSettings, seed: int) -> "FitConfig":
        return cls(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                   patience=settings.patience, lr_schedule=settings.lr_schedule, seed=seed, project=settings)


@dataclass
class FitReport:
    epochs_run: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    history: list[dict[str, float]] = field(default_factory=list)


class GatheredBatch(Batch):
    """A mini-batch whose inputs are gathered from the training set when first read: a fit on a
    frozen backbone's features reads them only for batches that need input gradients, and
    copying every epoch's images would cost more than fitting the head."""

    def __init__(self, x: torch.Tensor, idx: torch.Tensor, device: torch.device, *parts: torch.Tensor) -> None:
        self._source, self._idx, self._device, self._x = x, idx, device, None
        super().__init__(None, *parts)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def x(self) -> torch.Tensor:
        if self._x is None:
            self._x = self._source[self._idx].to(self._device)
        return self._x

    @x.setter
    def x(self, value: Optional[torch.Tensor]) -> None:
        self._x = value


def batch_loss(model: ModelKind, batch: Batch, strategies: Sequence[Strategy], settings: ProjectSettings,
               n_train: int, frozen: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy (multi-label: a BCE per class) + each strategy's term + the kind's own terms;
    (loss, parts for logging).

    Input gradients are kept (a double backward pass) only for batches a strategy needs them for;
    other batches start from the batch's ``frozen`` features when the kind has them."""
    if any(s.needs_input_gradients(batch) for s in strategies):
        forward = Forward(*model.input_gradients(batch.x))
    elif frozen is not None:
        forward = Forward(model.logits_from_frozen(frozen))
    else:
        forward = Forward(model.logits(batch.x))
    loss = label_loss(forward.logits, batch.y)
    parts = {"ce": loss.item()}
    for term in [s.loss(model, batch, forward, parts) for s in strategies] + \
            [model.training_terms(batch, n_train, settings, parts)]:
        if term is not None:
            loss = loss + term
    return loss, parts


def fit(model: ModelKind, data: TrainingSet, config: FitConfig, strategies: Sequence[Strategy] = (), *,
        device: Optional[torch.device] = None, progress: Optional[Progress] = None) -> FitReport:
    """Train ``model`` in place; returns the history. Early-stops on the training loss plateau."""
    device = device or resolve_device()
    network = model.network
    network.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameter_groups(config.learning_rate, config.project), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    report = FitReport(device=str(device))
    started = time.perf_counter()
    best, best_state, stale = float("inf"), None, 0
    has_irr, has_rel = data.has_irrelevant, data.has_relevant
    n = len(data)
    frozen = model.frozen_features(data.x)  # a frozen backbone runs once per example, not per epoch
    if frozen is not None:  # its head is a logistic regression: fitted whole, then fine-tuned by any terms
        head = fit_linear_head(model, frozen, data.y, seed=config.seed, source=data.source)
        report.history.append({"loss": head.loss, "ce": head.label_loss, "head_iterations": head.iterations,
                               "head_c": head.c})
        if not any(s.adds_terms(data) for s in strategies):
            if progress:
                progress(1.0, f"head fitted in {head.iterations} iterations (C = {head.c:g}), loss {head.loss:.4f}")
            return _finished(network, report, started, n)
        network.train()
    steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    schedule_name = model.lr_schedule if config.lr_schedule == "auto" else config.lr_schedule
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if schedule_name == "cosine" else None
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        totals: dict[str, float] = {}
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            batch = GatheredBatch(data.x, idx, device, data.y[idx].to(device),
                                  data.irrelevant[idx].to(device), has_irr[idx].to(device),
                                  data.relevant[idx].to(device), has_rel[idx].to(device))
            loss, parts = batch_loss(model, batch, strategies, config.project, n,
                                     None if frozen is None else frozen[idx.to(frozen.device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
        epoch_stats = {**{k: v / n for k, v in totals.items()}, "lr": optimizer.param_groups[0]["lr"]}
        report.history.append(epoch_stats)
        report.epochs_run = epoch + 1
        if progress:
            progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs} loss {epoch_stats['loss']:.4f}")
        if epoch_stats["loss"] < best - 1e-4:
            best, best_state, stale = epoch_stats["loss"], copy.deepcopy(network.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    return _finished(network, report, started, n)


def _finished(network: torch.nn.Module, report: FitReport, started: float, n: int) -> FitReport:
    network.eval()
    report.seconds = time.perf_counter() - started
    log.info("trained %d epochs on %d examples in %.1fs on %s", report.epochs_run, n, report.seconds, report.device)
    return report


@torch.no_grad()
def accuracy(model: ModelKind, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             mc_samples: int = 10, threshold: float = 0.5) -> Optional[float]:
    """Share of examples whose served class (the kind's ``probs``) is the label; multi-label
    (``y`` multi-hot (N, K)): share of (example, class) decisions right at ``threshold``."""
    if len(y) == 0:
        return None
    device = model.device()
    correct = 0
    for start in range(0, len(y), batch_size):
        probs = model.probs(x[start:start + batch_size].to(device), mc_samples).cpu()
        target = y[start:start + batch_size]
        if target.dim() == 2:
            correct += float(((probs > threshold) == (target > 0.5)).float().mean(1).sum())
        else:
            correct += int((probs.argmax(1) == target).sum())
    return correct / len(y)
