"""Relevant regions: penalise input-gradient mass outside regions marked Relevant."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ml_backend.models.base import ModelKind
from ml_backend.training.losses import masked_gradient_share
from ml_backend.training.sets import Batch, Forward, TrainingSet
from ml_backend.training.strategies import Strategy


class RelevantRegion(Strategy):
    name = "relevant"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @classmethod
    def from_settings(cls, settings: Any) -> "RelevantRegion":
        return cls(settings.relevant_lambda)

    def adds_terms(self, data: TrainingSet) -> bool:
        return self.weight > 0 and bool(data.has_relevant.any())

    def needs_input_gradients(self, batch: Batch) -> bool:
        return self.weight > 0 and bool(batch.has_relevant.any())

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        if not self.needs_input_gradients(batch):
            return None
        outside = masked_gradient_share(forward.grad_sq, ~batch.relevant, batch.has_relevant)
        parts["relevant"] = outside.item()
        return self.weight * outside
