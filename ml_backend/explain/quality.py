"""Explanation quality metrics: mass on irrelevant regions, SENN stability, faithfulness."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

ArrayLike = np.ndarray | torch.Tensor
Target = int | torch.Tensor | None


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def irrelevant_mass(relevance: ArrayLike, irrelevant_mask: ArrayLike) -> float:
    """Mean share of attribution mass inside the irrelevant mask (thesis' overlap metric, Eq. 17).

    relevance: (N, H, W) or (N, L), non-negative; irrelevant_mask: same shape, bool. Averaged over
    examples whose mask is non-empty and whose total attribution is positive (an all-zero
    explanation has no share to measure). NaN when no example qualifies. Lower is better.
    """
    rel = _np(relevance).astype(np.float64).reshape(len(relevance), -1)
    mask = _np(irrelevant_mask).astype(bool).reshape(len(irrelevant_mask), -1)
    if rel.shape != mask.shape:
        raise ValueError(f"relevance {rel.shape} and mask {mask.shape} differ")
    if (rel < 0).any():
        raise ValueError("relevance must be non-negative (take abs() or ReLU first)")
    total = rel.sum(1)
    keep = mask.any(1) & (total > 0)
    if not keep.any():
        return float("nan")
    return float(((rel * mask).sum(1)[keep] / total[keep]).mean())


def _theta_for(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    theta = model.relevances(x)
    if target is None:
        return theta.flatten(1)
    idx = torch.as_tensor(target, device=x.device).long().reshape(-1).expand(len(x))
    return theta[torch.arange(len(x)), :, idx]


@torch.no_grad()
def senn_stability(model: nn.Module, x: torch.Tensor, n_samples: int = 20, eps: float = 0.1,
                   target: Target = None, seed: int = 0) -> float:
    """Sample-based local Lipschitz estimate of theta (SENN §5.4, Eq. 5 with ||x - x'|| below).

    For each x: max over ``n_samples`` uniform perturbations in the L-inf ball of radius eps of
    ||theta(x) - theta(x')|| / ||x - x'||, then averaged over x. theta is restricted to the target
    class when ``target`` is given. Runs in eval mode; higher = less stable.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        base = _theta_for(model, x, target)
        best = torch.zeros(len(x), dtype=torch.float64)
        for _ in range(n_samples):
            delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * eps
            ratio = (base - _theta_for(model, x + delta, target)).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
            best = torch.maximum(best, ratio.double().cpu())
    finally:
        model.train(was_training)
    return float(best.mean())


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


@torch.no_grad()
def faithfulness(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, relevance: ArrayLike,
                 feature_removal: Callable[[torch.Tensor, int], torch.Tensor] | float = 0.0,
                 target: Target = None) -> float:
    """Mean Pearson correlation between relevances and probability drops (SENN §5.3).

    For each feature d (D = relevance.shape[1]) the model is run on x with d removed, and the drop
    p_target(x) - p_target(x without d) is correlated with relevance[:, d] per example. Removal is a
    callable ``(x, d) -> x'`` (e.g. blank patch d), or a baseline value written into the d-th entry
    of the flattened input (pixel concepts with D = number of input entries). ``target`` defaults
    to the predicted class. Examples with constant relevance or drops are skipped; NaN if all are.
    """
    rel = _np(relevance).astype(np.float64)
    n, d_count = rel.shape
    probs = model_fn(x)
    idx = probs.argmax(1) if target is None else torch.as_tensor(target).long().reshape(-1).expand(n)
    rows = torch.arange(n)
    p0 = probs[rows, idx]
    if callable(feature_removal):
        remove = feature_removal
    else:
        if x[0].numel() != d_count:
            raise ValueError("a baseline value needs one relevance per input entry; pass a callable")

        def remove(inp: torch.Tensor, d: int) -> torch.Tensor:
            out = inp.clone().flatten(1)
            out[:, d] = feature_removal
            return out.view_as(inp)

    drops = np.empty((n, d_count))
    for d in range(d_count):
        drops[:, d] = (p0 - model_fn(remove(x, d))[rows, idx]).double().cpu().numpy()
    scores = [_pearson(rel[i], drops[i]) for i in range(n)]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")
