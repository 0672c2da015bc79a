"""RRR (Ross et al. 2017): penalise input-gradient mass inside regions marked Irrelevant."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ml_backend.models.base import ModelKind
from ml_backend.training.losses import masked_gradient_share
from ml_backend.training.sets import Batch, Forward, TrainingSet
from ml_backend.training.strategies import Strategy


class RRR(Strategy):
    name = "rrr"

    def __init__(self, weight: float = 10.0) -> None:
        self.weight = weight

    @classmethod
    def from_settings(cls, settings: Any) -> "RRR":
        return cls(settings.rrr_lambda)

    def adds_terms(self, data: TrainingSet) -> bool:
        return self.weight > 0 and bool(data.has_irrelevant.any())

    def needs_input_gradients(self, batch: Batch) -> bool:
        return self.weight > 0 and bool(batch.has_irrelevant.any())

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        if not self.needs_input_gradients(batch):
            return None
        share = masked_gradient_share(forward.grad_sq, batch.irrelevant, batch.has_irrelevant)
        parts["rrr"] = share.item()
        return self.weight * share
