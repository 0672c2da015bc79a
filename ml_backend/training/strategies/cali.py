"""CALI (Teso 2019): pull a self-explaining network's relevances toward the corrected explanation."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ml_backend.models.base import ConceptExplainer, ModelKind
from ml_backend.training.losses import cali_loss, corrected_relevances
from ml_backend.training.sets import Batch, Forward
from ml_backend.training.strategies import Strategy


class CALI(Strategy):
    """lambda * l_Y + (1 - lambda) * l_Z, with l_Y (cross-entropy) already in the loss at weight 1."""

    name = "cali"
    requires = ConceptExplainer
    requirement = "it corrects a self-explaining network's relevances: set model_kind to 'senn'"

    def __init__(self, cali_lambda: float = 0.5) -> None:
        self.cali_lambda = cali_lambda

    @classmethod
    def from_settings(cls, settings: Any) -> "CALI":
        return cls(settings.cali_lambda)

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        rows = batch.has_irrelevant | batch.has_relevant
        if self.cali_lambda <= 0 or not bool(rows.any()):
            return None
        irrelevant = model.concept_mask(batch.irrelevant)
        if irrelevant is None:  # learned concepts: a pixel mask does not name concepts
            return None
        relevant = model.concept_mask(batch.relevant)
        _, _, theta = model.explanation(batch.x[rows])
        index = torch.arange(theta.shape[0], device=theta.device)
        theta_t = theta[index, :, batch.y[rows]]
        shown = theta_t.detach()
        z = corrected_relevances(shown, irrelevant[rows], relevant[rows])
        l_z = cali_loss(theta_t, shown, z, mode="anchored")
        parts["cali"] = l_z.item()
        return (1 - self.cali_lambda) / self.cali_lambda * l_z
