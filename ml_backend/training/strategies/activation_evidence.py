"""Activation evidence (Bekkemoen 2021): irrelevant regions' last-conv units observed at zero."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ml_backend.models.base import ActivationEvidenceModel, ModelKind
from ml_backend.training.losses import activation_evidence_loss, activation_evidence_scale
from ml_backend.training.sets import Batch, Forward
from ml_backend.training.strategies import Strategy


class ActivationEvidence(Strategy):
    name = "activation_evidence"
    requires = ActivationEvidenceModel
    requirement = "it constrains a Bayesian network's activations: set model_kind to 'bayesian_cnn'"

    def __init__(self, sigma: float = 0.5) -> None:
        self.sigma = sigma

    @classmethod
    def from_settings(cls, settings: Any) -> "ActivationEvidence":
        return cls(settings.evidence_sigma)

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        rows = batch.has_irrelevant
        if self.sigma <= 0 or not bool(rows.any()):
            return None
        preact = model.evidence_preactivation(batch.x[rows])
        evidence = activation_evidence_loss(preact, batch.irrelevant[rows], sigma=self.sigma)
        parts["activation_evidence"] = evidence.item()
        parts["activation_scale"] = activation_evidence_scale(preact, batch.irrelevant[rows], positive_only=True)
        return evidence
