"""Activation evidence (Bekkemoen 2021): irrelevant regions' pre-activations observed at zero."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ml_backend.models.base import ActivationEvidenceModel, ModelKind
from ml_backend.training.losses import label_loss
from ml_backend.training.sets import Batch, Forward
from ml_backend.training.strategies import Strategy


class ActivationEvidence(Strategy):
    """The thesis' evidence e_act = {a_F = 0} in the ELBO (Eq. 5.13-5.16), on the examples with
    Irrelevant marks:

    - the class likelihood given a_F = 0: their cross-entropy is computed with the marked units
      clamped to 0 (it replaces the unclamped one in the batch's loss);
    - the likelihood of the observation, -log N(0; a, sigma^2) up to constants: relu(a)^2 / (2 sigma^2)
      averaged over the marked units (relu: Eq. 5.12 keeps only units whose gradient reaches the
      logits, which behind a ReLU are those with a > 0). ``sigma`` (``evidence_sigma``) weighs it.

    The marked units are every cell whose receptive field touches a marked pixel, on the map the
    served evidence reads (see ``BayesianCNN.marked_cells``); with the thesis' cells (those under
    the mask only) the decoy's signal reached the unmarked neighbours and stayed in use
    (four corners: 0.69 against 0.98 on one seed).
    """

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
        y = batch.y[rows]
        logits, preact, cells = model.evidence_forward(batch.x[rows], batch.irrelevant[rows])
        swap = (label_loss(logits, y) - label_loss(forward.logits[rows], y)) * len(y) / len(batch.y)
        n = cells.sum().clamp_min(1)
        active = torch.relu(preact)
        evidence = (active.pow(2) * cells).sum() / (2 * self.sigma ** 2 * n)
        parts["activation_evidence"] = evidence.item()
        parts["activation_scale"] = float((active.detach() * cells).sum() / n)
        return swap + evidence
