"""The loss of one mini-batch, per model type: what each feedback strategy adds to it.

- every model: cross-entropy + RRR (irrelevant masks) + relevant-region penalty (losses.xil_loss);
- SENN: CALI on its relevances, and SENN's robustness penalty (and, for learned concepts,
  reconstruction and sparsity);
- Bayesian CNN: the ELBO's KL term, and the thesis' activation evidence on irrelevant masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.training.losses import xil_loss
from ml_backend.training.xil_losses import (activation_evidence_loss, activation_evidence_scale, cali_loss,
                                            senn_concept_losses, senn_robustness)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    irrelevant: torch.Tensor
    has_irrelevant: torch.Tensor
    relevant: torch.Tensor
    has_relevant: torch.Tensor


@dataclass
class Weights:
    rrr_lambda: float = 0.0
    relevant_lambda: float = 0.0
    cali_lambda: float = 0.0  # CALI's lambda: lambda * l_Y + (1 - lambda) * l_Z; 0 = off
    senn_robustness: float = 0.0  # alpha of SENN's robustness penalty
    senn_concepts: float = 0.1  # reconstruction + sparsity for learned SENN concepts
    kl_weight: float = 0.01  # tempered ELBO: the exact 1.0 collapses to the prior on small projects
    evidence_sigma: float = 0.0  # activation evidence scale; 0 = off (smaller = stronger)


def is_senn(model: nn.Module) -> bool:
    return getattr(model, "kind", "") in ("senn", "text_senn")


def is_bayesian(model: nn.Module) -> bool:
    return getattr(model, "kind", "") == "bayesian_cnn"


def concept_mask(model: nn.Module, mask: torch.Tensor) -> Optional[torch.Tensor]:
    """Pixel or token mask -> (N, D) concept mask of a SENN (None for learned concepts)."""
    if getattr(model, "kind", "") == "text_senn":
        return mask
    kind = getattr(model, "concept_kind", None)
    if kind == "pixels":
        return mask.flatten(1)
    if kind == "patches":
        # a patch belongs to the correction when most of it is marked
        return (F.avg_pool2d(mask[:, None].float(), model.patch) > 0.5).flatten(1)
    return None


def corrected_relevances(shown: torch.Tensor, irrelevant: Optional[torch.Tensor],
                         relevant: Optional[torch.Tensor]) -> torch.Tensor:
    """z from z_hat: irrelevant concepts set to zero, relevant ones raised to at least the top shown value."""
    z = shown.clone()
    if irrelevant is not None:
        z = z.masked_fill(irrelevant, 0.0)
    if relevant is not None:
        top = shown.abs().max(dim=1, keepdim=True).values.expand_as(shown)
        z = torch.where(relevant, torch.maximum(shown, top), z)
    return z


def batch_loss(model: nn.Module, batch: Batch, weights: Weights, n_train: int) -> tuple[torch.Tensor, dict[str, float]]:
    loss, parts = xil_loss(model, batch.x, batch.y, irrelevant=batch.irrelevant, has_irrelevant=batch.has_irrelevant,
                           relevant=batch.relevant, has_relevant=batch.has_relevant,
                           rrr_lambda=weights.rrr_lambda, relevant_lambda=weights.relevant_lambda)
    if is_senn(model):
        loss = loss + _senn_terms(model, batch, weights, parts)
    if is_bayesian(model):
        loss = loss + _bayesian_terms(model, batch, weights, parts, n_train)
    return loss, parts


def _senn_terms(model: nn.Module, batch: Batch, weights: Weights, parts: dict[str, float]) -> torch.Tensor:
    extra = batch.x.new_zeros(())
    corrected_rows = batch.has_irrelevant | batch.has_relevant
    if weights.cali_lambda > 0 and bool(corrected_rows.any()):
        irr = concept_mask(model, batch.irrelevant)
        rel = concept_mask(model, batch.relevant)
        if irr is not None:
            _, _, theta = model.forward_with_explanation(batch.x[corrected_rows])
            rows = torch.arange(theta.shape[0], device=theta.device)
            theta_t = theta[rows, :, batch.y[corrected_rows]]
            shown = theta_t.detach()
            z = corrected_relevances(shown, irr[corrected_rows], rel[corrected_rows])
            l_z = cali_loss(theta_t, shown, z, mode="anchored")
            # lambda * l_Y + (1 - lambda) * l_Z, with l_Y already in the loss at weight 1
            extra = extra + (1 - weights.cali_lambda) / weights.cali_lambda * l_z
            parts["cali"] = l_z.item()
    if weights.senn_robustness > 0 and batch.x.dtype != torch.long:
        omega = senn_robustness(model, batch.x, target=batch.y)
        extra = extra + weights.senn_robustness * omega
        parts["robustness"] = omega.item()
    if getattr(model, "concept_kind", None) == "learned" and weights.senn_concepts > 0:
        reconstruction, sparsity = senn_concept_losses(model, batch.x)
        extra = extra + weights.senn_concepts * (reconstruction + 0.1 * sparsity)
        parts["reconstruction"] = reconstruction.item()
    return extra


def _bayesian_terms(model: nn.Module, batch: Batch, weights: Weights, parts: dict[str, float],
                    n_train: int) -> torch.Tensor:
    kl = model.kl()
    extra = weights.kl_weight * kl / max(n_train, 1)
    parts["kl"] = kl.item()
    if weights.evidence_sigma > 0 and bool(batch.has_irrelevant.any()):
        rows = batch.has_irrelevant
        preact = model.last_conv_preactivation(batch.x[rows])
        evidence = activation_evidence_loss(preact, batch.irrelevant[rows], sigma=weights.evidence_sigma)
        extra = extra + evidence
        parts["activation_evidence"] = evidence.item()
        parts["activation_scale"] = activation_evidence_scale(preact, batch.irrelevant[rows], positive_only=True)
    return extra
