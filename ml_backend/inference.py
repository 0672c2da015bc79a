"""Tensors in, probabilities and relevance maps out, for any model kind (no Label Studio format here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

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
