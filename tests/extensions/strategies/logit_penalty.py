"""A trivial feedback strategy: keep logits small (a one-file change under training/strategies/)."""
from __future__ import annotations

from typing import Optional

import torch

from ml_backend.training.strategies import Strategy


class LogitPenalty(Strategy):
    name = "logit_penalty"

    def loss(self, model, batch, forward, parts: dict[str, float]) -> Optional[torch.Tensor]:
        penalty = forward.logits.pow(2).mean()
        parts["logit_penalty"] = penalty.item()
        return 1e-3 * penalty
