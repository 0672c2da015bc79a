"""A token id marked Irrelevant in several documents counts as irrelevant in every document.

The fallback of ``training.fit.generalise`` for callers that give token ids without the documents'
text; with the text, ``feedback.text_concepts`` finds a marked word in any case or spelling and a
marked phrase, and images generalise by ``feedback.concepts``. One mark alone never propagates here:
an id says less than the word it hashes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PADDING = 0  # token id 0 is padding in the text models


@dataclass
class Propagated:
    """Masks after propagation, and which documents got marks they did not have."""

    irrelevant: torch.Tensor  # (N, L) bool: own marks | recurring tokens
    added: torch.Tensor  # (N,) bool: documents with no Irrelevant mark of their own that now have one
    tokens: torch.Tensor  # (K,) long: the recurring token ids


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


def propagate(ids: torch.Tensor, irrelevant: torch.Tensor, relevant: torch.Tensor, min_support: int) -> Propagated:
    """Own Irrelevant marks, plus the recurring token ids wherever the document has no Relevant mark
    there. ``ids`` and the masks are (N, L); ``min_support`` < 1 turns propagation off."""
    own = irrelevant.flatten(1).any(dim=1)
    if min_support < 1 or int(own.sum()) < min_support:
        return Propagated(irrelevant, torch.zeros_like(own), torch.zeros(0, dtype=torch.long))
    tokens = recurring_tokens(ids, irrelevant, min_support)
    marks = irrelevant | (torch.isin(ids, tokens) & (ids != PADDING) & ~relevant)
    return Propagated(marks, marks.flatten(1).any(dim=1) & ~own, tokens)
