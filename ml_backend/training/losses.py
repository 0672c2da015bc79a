"""Cross-entropy plus explanation penalties on input gradients (right for the right reasons).

The penalties are normalised per example by the total squared input gradient, so each is
the share of gradient mass in the wrong place, a number in [0, 1] whatever the input size,
model or data scale. That is what lets one default lambda work across projects; Ross et al.'s
raw sum needs lambda retuned for every input size. The denominator is deliberately not
detached: with a detached one, shrinking the whole network lowers the penalty, and training
collapses to a constant model (seen on the planted-confounder test); the true share is
invariant to that scaling and only moves gradient mass out of the mask.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12


def input_gradients(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, d sum_k log p_k / d input) with the graph kept for a second backward pass.

    Images: gradients w.r.t. the pixels, reduced to (N, H, W) by summing squares over channels.
    Text (long ids): gradients w.r.t. the embeddings, reduced to (N, L) per token.
    Returned gradient maps are squared magnitudes.
    """
    if x.dtype == torch.long:
        emb = model.embedding(x)
        logits = model.forward_embedded(emb, x != 0)
        wrt = emb
    else:
        wrt = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = model(wrt)
    log_probs = F.log_softmax(logits, dim=1)
    (grads,) = torch.autograd.grad(log_probs.sum(), wrt, create_graph=True)
    squared = grads.pow(2)
    reduce_dim = 2 if x.dtype == torch.long else 1
    return logits, squared.sum(dim=reduce_dim)


def masked_gradient_share(grad_sq: torch.Tensor, mask: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Mean over active examples of (gradient mass inside mask) / (total gradient mass)."""
    if not bool(active.any()):
        return grad_sq.sum() * 0.0
    dims = tuple(range(1, grad_sq.dim()))
    inside = (grad_sq * mask.to(grad_sq.dtype)).sum(dim=dims)
    total = grad_sq.sum(dim=dims) + EPS
    return (inside / total)[active].mean()


def xil_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             irrelevant: Optional[torch.Tensor] = None, has_irrelevant: Optional[torch.Tensor] = None,
             relevant: Optional[torch.Tensor] = None, has_relevant: Optional[torch.Tensor] = None,
             rrr_lambda: float = 0.0, relevant_lambda: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy + rrr_lambda * RRR share inside irrelevant masks
    + relevant_lambda * share outside relevant masks. Returns (loss, parts for logging)."""
    use_rrr = rrr_lambda > 0 and has_irrelevant is not None and bool(has_irrelevant.any())
    use_rel = relevant_lambda > 0 and has_relevant is not None and bool(has_relevant.any())
    if not (use_rrr or use_rel):
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        return ce, {"ce": ce.item()}
    logits, grad_sq = input_gradients(model, x)
    ce = F.cross_entropy(logits, y)
    loss, parts = ce, {"ce": ce.item()}
    if use_rrr:
        rrr = masked_gradient_share(grad_sq, irrelevant, has_irrelevant)
        loss = loss + rrr_lambda * rrr
        parts["rrr"] = rrr.item()
    if use_rel:
        outside = masked_gradient_share(grad_sq, ~relevant, has_relevant)
        loss = loss + relevant_lambda * outside
        parts["relevant"] = outside.item()
    return loss, parts
