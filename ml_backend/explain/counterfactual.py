"""Counterfactual inputs for interactive explanation (pure: tensors in, tensors out).

The annotator marks a region Irrelevant ("what would the model say without this?") or Relevant
("is this part enough on its own?"). The positions to change are the Irrelevant marks and
everything outside the Relevant marks; they are filled exactly as the counterexamples strategy
fills them (``image_counterexamples``, the kind's ``replace_tokens``), with no donor tasks at
serving time, so its documented fallback (random values / random other tokens) applies.
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


def counterfactual_inputs(model: ModelKind, x: torch.Tensor, replaced: torch.Tensor, fill: str, copies: int,
                          generator: torch.Generator) -> torch.Tensor:
    """(copies, *x.shape): ``x`` (one example) with the ``replaced`` positions filled as
    counterexamples fill them (one copy for a blur, which is the same every time)."""
    copies = 1 if fill == "blur" else max(1, copies)
    if model.modality == IMAGE:
        return image_counterexamples(x, replaced, copies, fill=fill, donors=None, generator=generator)
    return model.replace_tokens(x, replaced, copies, generator)


def pool_copies(probs: torch.Tensor, relevance: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(mean probabilities (K,), mean relevance of the copies that predict the mean's class)."""
    mean = probs.mean(dim=0)
    agree = (probs.argmax(dim=1) == mean.argmax()).numpy()
    chosen = relevance[agree] if agree.any() else relevance
    return mean, chosen.mean(axis=0)
