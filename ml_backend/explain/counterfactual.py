"""Counterfactual inputs for interactive explanation (pure: tensors in, tensors out).

The annotator marks a region Irrelevant ("what would the model say without this?") or Relevant
("is this part enough on its own?"). The positions to change are the Irrelevant marks and
everything outside the Relevant marks; they are filled exactly as the counterexamples strategy
fills them (``image_counterexamples``, the kind's ``replace_tokens``). Images take their donors
from the serving version's donor bank (``donor_bank``: a few training inputs of every class, stored
with the version); without one (text, or a version from before the bank) the strategy's documented
fallback, random values or random other tokens, applies.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ml_backend.models.base import IMAGE, ModelKind
from ml_backend.training.strategies.counterexamples import image_counterexamples


def replaced_positions(irrelevant: Optional[np.ndarray], relevant: Optional[np.ndarray],
                       shape: tuple[int, ...]) -> torch.Tensor:
    """Bool ``shape`` mask of the input positions to change: the Irrelevant marks, and all but the
    Relevant marks; ValueError when a mask does not have that shape."""
    out = torch.zeros(shape, dtype=torch.bool)
    for mask, invert in ((irrelevant, False), (relevant, True)):
        if mask is None:
            continue
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"a mark of shape {tuple(mask.shape)} does not fit the model's input {tuple(shape)}")
        marked = torch.as_tensor(np.asarray(mask, dtype=bool))
        out |= ~marked if invert else marked
    return out


def donor_bank(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Up to ``size`` of the inputs ``x`` (N, ...), drawn in turn from each class of ``y`` ((N,)
    indices, or (N, K) multi-hot, grouped by the first class set), so that every class gives some."""
    if size <= 0 or len(x) == 0:
        return x[:0]
    groups = y.argmax(dim=1) if y.dim() == 2 else y
    generator = torch.Generator().manual_seed(seed)
    queues = [idx[torch.randperm(len(idx), generator=generator)].tolist()
              for c in torch.unique(groups) if len(idx := torch.nonzero(groups == c).flatten())]
    picked: list[int] = []
    while len(picked) < min(size, len(x)):
        for queue in queues:
            if queue and len(picked) < size:
                picked.append(queue.pop())
    return x[torch.tensor(sorted(picked))]


def counterfactual_inputs(model: ModelKind, x: torch.Tensor, replaced: torch.Tensor, fill: str, copies: int,
                          generator: torch.Generator, donors: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(copies, *x.shape): ``x`` (one example) with the ``replaced`` positions filled as
    counterexamples fill them, from ``donors`` (M, *x.shape) when given (one copy for a blur,
    which is the same every time)."""
    copies = 1 if fill == "blur" else max(1, copies)
    if model.modality == IMAGE:
        usable = donors if donors is not None and tuple(donors.shape[1:]) == tuple(x.shape) else None
        return image_counterexamples(x, replaced, copies, fill=fill, donors=usable, generator=generator)
    return model.replace_tokens(x, replaced, copies, generator)


def pool_copies(probs: torch.Tensor, relevance: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(mean probabilities (K,), mean relevance of the copies that predict the mean's class)."""
    mean = probs.mean(dim=0)
    agree = (probs.argmax(dim=1) == mean.argmax()).numpy()
    chosen = relevance[agree] if agree.any() else relevance
    return mean, chosen.mean(axis=0)
