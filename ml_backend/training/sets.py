"""The tensors a fit runs on: a training set at model resolution, and one mini-batch of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


def label_tensor(labels: list) -> torch.Tensor:
    """Answers -> ``TrainingSet.y``: class indices (N,) long, or, for multi-label answers (each
    with ``multi_hot()``, a ``feedback.parse.LabelSet``), multi-hot rows (N, K) float."""
    if labels and not isinstance(labels[0], int):
        return torch.as_tensor(np.stack([label.multi_hot() for label in labels]), dtype=torch.float32)
    return torch.tensor(labels, dtype=torch.long)


@dataclass
class TrainingSet:
    """Masks are (N, H, W) for images, (N, L) for text; ``propagated`` (N,) marks examples whose
    Irrelevant marks came from other tasks' corrections, not their own; ``source`` (N,) is, for a
    counterexample, the row of the example it was made from (-1 for the rest, and for a copy that
    replaced its original). ``y`` is (N,) class indices, or (N, K) multi-hot for multi-label Choices."""

    x: torch.Tensor
    y: torch.Tensor
    irrelevant: torch.Tensor
    relevant: torch.Tensor
    propagated: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.propagated is None:
            self.propagated = torch.zeros(len(self.y), dtype=torch.bool)
        if self.source is None:
            self.source = torch.full((len(self.y),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def has_irrelevant(self) -> torch.Tensor:
        return self.irrelevant.flatten(1).any(dim=1)

    @property
    def has_relevant(self) -> torch.Tensor:
        return self.relevant.flatten(1).any(dim=1)

    def grown(self, keep: torch.Tensor, extra: int, made_from: Optional[torch.Tensor] = None) -> "TrainingSet":
        """The rows ``keep`` followed by ``extra`` rows for the caller to fill (x and y unset, masks
        empty, not propagated), one allocation per tensor: at a backbone's 224 px a set is a GB,
        and each copy of it cost seconds (a concatenation took 8-14 s of a 1,000-task job).
        ``made_from`` (extra,): the rows of this set the extra rows are copies of (their ``source``)."""
        n = len(keep)

        def grow(t: torch.Tensor, zeros: bool) -> torch.Tensor:
            out = (torch.zeros if zeros else torch.empty)((n + extra, *t.shape[1:]), dtype=t.dtype)
            torch.index_select(t, 0, keep, out=out[:n])
            return out

        position = torch.full((len(self) + 1,), -1, dtype=torch.long)  # the last entry maps -1 to -1
        position[keep] = torch.arange(n)
        source = torch.full((n + extra,), -1, dtype=torch.long)
        source[:n] = position[self.source[keep]]
        if made_from is not None:
            source[n:] = position[made_from]
        return TrainingSet(grow(self.x, False), grow(self.y, False), grow(self.irrelevant, True),
                           grow(self.relevant, True), grow(self.propagated, True), source)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    irrelevant: torch.Tensor
    has_irrelevant: torch.Tensor
    relevant: torch.Tensor
    has_relevant: torch.Tensor


@dataclass
class Forward:
    """One batch's forward pass: logits, and squared input gradients when a strategy asked."""

    logits: torch.Tensor
    grad_sq: Optional[torch.Tensor] = None
