"""Tensors in, probabilities and relevance maps out, for any model kind (no Label Studio format here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ml_backend.explain.counterfactual import counterfactual_inputs, pool_copies
from ml_backend.models.base import ModelKind


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise; decided at run time."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Inference:
    probs: torch.Tensor  # (N, K) on CPU
    relevance: Optional[np.ndarray]  # (N, H, W) or (N, L) at model resolution, when explained


def infer(model: ModelKind, x: torch.Tensor, method: str, explain: bool, mc_samples: int = 10) -> Inference:
    """One batch: the kind's probabilities and, if asked, its evidence for the predicted class."""
    x = x.to(model.device())
    if x.dim() == 4 and x.is_floating_point():  # images: NHWC convolutions are about twice as fast on CPU
        x = x.contiguous(memory_format=torch.channels_last)
    if explain:
        probs, relevance = model.predict_and_explain(x, method, mc_samples)
        return Inference(probs.detach().cpu(), relevance.detach().cpu().numpy())
    return Inference(model.probs(x, mc_samples).cpu(), None)


@dataclass
class CounterfactualInference:
    before: torch.Tensor  # (K,) probabilities on the task as it is
    after: torch.Tensor  # (K,) on the counterfactual input (mean over its copies)
    # single label: (H, W) or (L,), the evidence for ``after``'s class on the counterfactual input;
    # multi-label: (K, H, W) or (K, L), each class's evidence where a copy serves it (zeros elsewhere)
    relevance: np.ndarray


def infer_counterfactual(model: ModelKind, x: torch.Tensor, replaced: torch.Tensor, method: str, fill: str,
                         copies: int, mc_samples: int = 10, seed: int = 0,
                         threshold: Optional[float] = None,
                         donors: Optional[torch.Tensor] = None) -> CounterfactualInference:
    """One example ``x``: its prediction, and the prediction and evidence with ``replaced`` filled
    as counterexamples are, from ``donors`` when given (the same answer every time: a seeded fill).
    A ``threshold`` asks for multi-label inference: independent sigmoids, the evidence of every
    class served."""
    edited = counterfactual_inputs(model, x, replaced, fill, copies, torch.Generator().manual_seed(seed), donors)
    if threshold is not None:
        before = infer_multi_label(model, x[None], method, threshold, explain=False, mc_samples=mc_samples).probs[0]
        out = infer_multi_label(model, edited, method, threshold, explain=True, mc_samples=mc_samples)
        return CounterfactualInference(before, out.probs.mean(dim=0), out.relevance.mean(axis=0))
    before = infer(model, x[None], method, explain=False, mc_samples=mc_samples).probs[0]
    out = infer(model, edited, method, explain=True, mc_samples=mc_samples)
    after, relevance = pool_copies(out.probs, out.relevance)
    return CounterfactualInference(before, after, relevance)


def least_certain_decision(probs: torch.Tensor) -> torch.Tensor:
    """A multi-label task's score: its least certain decision, min_k max(p_k, 1 - p_k), over the last
    axis (lower is more uncertain, as a single label's confidence)."""
    return torch.maximum(probs, 1 - probs).min(dim=-1).values


@dataclass
class MultiLabelInference:
    probs: torch.Tensor  # (N, K) one sigmoid per class, on CPU
    served: torch.Tensor  # (N, K) bool: the classes above the threshold
    relevance: Optional[np.ndarray]  # (N, K, H, W) or (N, K, L): each served class's evidence (zeros elsewhere)


def infer_multi_label(model: ModelKind, x: torch.Tensor, method: str, threshold: float, explain: bool,
                      mc_samples: int = 10) -> MultiLabelInference:
    """One batch of a multi-label model: every class above ``threshold`` and, if asked, each
    served class's own evidence (a row with none served: its most probable class's, so a
    ranking that compares explanations still has one)."""
    x = x.to(model.device())
    if x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    probs = model.probs(x, mc_samples).detach().cpu()
    served = probs > threshold
    if not explain:
        return MultiLabelInference(probs, served, None)
    wanted = served.clone()
    wanted[torch.arange(len(probs)), probs.argmax(dim=1)] |= ~served.any(dim=1)
    relevance: Optional[np.ndarray] = None
    for k in range(probs.shape[1]):
        rows = torch.nonzero(wanted[:, k]).flatten()
        if len(rows) == 0:
            continue
        targets = torch.full((len(rows),), k, dtype=torch.long, device=x.device)
        maps = model.relevance(x[rows.to(x.device)], targets, method).detach().cpu().numpy()
        if relevance is None:
            relevance = np.zeros((len(probs), probs.shape[1], *maps.shape[1:]), dtype=np.float32)
        relevance[rows.numpy(), k] = maps
    return MultiLabelInference(probs, served, relevance)

