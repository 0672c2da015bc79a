"""Corrections that recur at the same pixels or token ids generalise to every labelled task.

Superseded in training by generalisation by content (``feedback.concepts`` for images, whose
``position`` rule is this one validated; ``feedback.text_concepts`` for text). ``training.fit``
still uses the token-id form when a caller gives token ids without the documents' text.

A confounder is rarely a one-off: a watermark, a scanner tag or a ruler sits at the same place
on many images, a boilerplate word recurs across documents. When annotators mark the same
pixels (at model resolution) or the same token Irrelevant on at least ``min_support``
corrected tasks, those pixels or that token are treated as irrelevant on every labelled task,
not only on the few the annotators corrected. One correction alone never propagates, so a
region that was irrelevant on one image only (a background object) stays local to it.

Without this step a penalty on 1% of the training set leaves the shortcut intact on the other
99%, and the model keeps it (``docs/xil-benchmarks.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PADDING = 0  # token id 0 is padding in the text models


@dataclass
class Propagated:
    """Masks after propagation, and which tasks got marks they did not have."""

    irrelevant: torch.Tensor  # (N, H, W) or (N, L) bool: own marks | recurring marks
    added: torch.Tensor  # (N,) bool: tasks with no Irrelevant mark of their own that now have one
    region: torch.Tensor  # images: (H, W) bool recurring pixels; text: (K,) long recurring token ids
    support: int  # corrected tasks the recurring marks were drawn from

    @property
    def region_size(self) -> int:
        """Recurring pixels (images) or tokens (text)."""
        return int(self.region.sum()) if self.region.dtype == torch.bool else self.region.numel()


def recurring_pixels(irrelevant: torch.Tensor, min_support: int) -> torch.Tensor:
    """(H, W) bool: pixels marked Irrelevant on at least ``min_support`` of the (N, H, W) masks."""
    if irrelevant.dim() != 3:
        raise ValueError(f"image masks must be (N, H, W), got {tuple(irrelevant.shape)}")
    return irrelevant.sum(dim=0) >= max(min_support, 1)


def recurring_tokens(ids: torch.Tensor, irrelevant: torch.Tensor, min_support: int) -> torch.Tensor:
    """Sorted token ids marked Irrelevant in at least ``min_support`` documents (counted once each)."""
    if ids.shape != irrelevant.shape or ids.dim() != 2:
        raise ValueError(f"ids and masks must both be (N, L), got {tuple(ids.shape)} and {tuple(irrelevant.shape)}")
    doc, pos = torch.nonzero(irrelevant & (ids != PADDING), as_tuple=True)
    if len(doc) == 0:
        return torch.zeros(0, dtype=torch.long)
    pairs = torch.unique(torch.stack([doc, ids[doc, pos]]), dim=1)  # (doc, token) once per document
    tokens, counts = torch.unique(pairs[1], return_counts=True)
    return tokens[counts >= max(min_support, 1)]


def propagate(x: torch.Tensor, irrelevant: torch.Tensor, relevant: torch.Tensor, min_support: int) -> Propagated:
    """Own Irrelevant marks, plus the recurring ones wherever the task has no Relevant mark there.

    ``x`` is (N, C, H, W) images or (N, L) long token ids; masks are (N, H, W) or (N, L) bool.
    ``min_support`` < 1 turns propagation off.
    """
    own = irrelevant.flatten(1).any(dim=1)
    support = int(own.sum())
    text = x.dtype == torch.long
    if min_support < 1 or support < min_support:
        empty = torch.zeros(0, dtype=torch.long) if text else torch.zeros(irrelevant.shape[1:], dtype=torch.bool)
        return Propagated(irrelevant, torch.zeros_like(own), empty, support)
    if text:
        region = recurring_tokens(x, irrelevant, min_support)
        recurring = torch.isin(x, region) & (x != PADDING)
    else:
        region = recurring_pixels(irrelevant, min_support)
        recurring = region.unsqueeze(0).expand_as(irrelevant)
    marks = irrelevant | (recurring & ~relevant)
    added = marks.flatten(1).any(dim=1) & ~own
    return Propagated(marks, added, region, support)
