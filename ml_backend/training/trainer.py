"""The fit loop: device choice, mini-batches, explanation penalties, early stopping, progress."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ml_backend.training.objectives import Batch, Weights, batch_loss

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class TrainingSet:
    """Tensors at model resolution. Masks are (N, H, W) for images, (N, L) for text."""

    x: torch.Tensor
    y: torch.Tensor
    irrelevant: torch.Tensor
    relevant: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def has_irrelevant(self) -> torch.Tensor:
        return self.irrelevant.flatten(1).any(dim=1)

    @property
    def has_relevant(self) -> torch.Tensor:
        return self.relevant.flatten(1).any(dim=1)

    def subset(self, index: torch.Tensor) -> "TrainingSet":
        return TrainingSet(self.x[index], self.y[index], self.irrelevant[index], self.relevant[index])

    @staticmethod
    def concat(parts: list["TrainingSet"]) -> "TrainingSet":
        return TrainingSet(*(torch.cat([getattr(p, name) for p in parts]) for name in ("x", "y", "irrelevant", "relevant")))


@dataclass
class FitConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    weights: Weights = field(default_factory=Weights)
    patience: int = 8
    seed: int = 0


@dataclass
class FitReport:
    epochs_run: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise; decided at run time."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(model: nn.Module, data: TrainingSet, config: FitConfig, *, device: Optional[torch.device] = None,
        progress: Optional[Progress] = None) -> FitReport:
    """Train ``model`` in place; returns the history. Early-stops on the training loss plateau."""
    device = device or pick_device()
    model.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    report = FitReport(device=str(device))
    started = time.perf_counter()
    best, best_state, stale = float("inf"), None, 0
    has_irr, has_rel = data.has_irrelevant, data.has_relevant
    n = len(data)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        totals: dict[str, float] = {}
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            batch = Batch(data.x[idx].to(device), data.y[idx].to(device),
                          data.irrelevant[idx].to(device), has_irr[idx].to(device),
                          data.relevant[idx].to(device), has_rel[idx].to(device))
            loss, parts = batch_loss(model, batch, config.weights, n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
        epoch_stats = {k: v / n for k, v in totals.items()}
        report.history.append(epoch_stats)
        report.epochs_run = epoch + 1
        if progress:
            progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs} loss {epoch_stats['loss']:.4f}")
        if epoch_stats["loss"] < best - 1e-4:
            best, best_state, stale = epoch_stats["loss"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - started
    log.info("trained %d epochs on %d examples in %.1fs on %s", report.epochs_run, n, report.seconds, device)
    return report


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> Optional[float]:
    if len(y) == 0:
        return None
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / len(y)
