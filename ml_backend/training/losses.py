"""The explanation-feedback losses, in one module; feedback strategies weigh and apply them.

- Right for the right reasons (Ross et al. 2017): the share of input-gradient mass inside
  irrelevant masks, or outside relevant ones. Normalised per example by the total squared input
  gradient, so each is a number in [0, 1] whatever the input size, model or data scale: that is
  what lets one default lambda work across projects (Ross et al.'s raw sum needs lambda retuned
  for every input size). The denominator is not detached: with a detached one, shrinking the whole
  network lowers the penalty and training collapses to a constant model. The share has its own
  loophole: a network can lower it by inflating its gradients outside the mask while it keeps
  using what is inside (measured on a planted corner: inside mass unchanged, total up 400-2000x).
  RRR alone therefore does not remove a shortcut; counterexamples do (tests/test_training.py).
- CALI (Teso 2019): a correction loss on a self-explaining network's relevances.
- Activation evidence (Bekkemoen 2021, Eq. 5.10-5.16): irrelevant last-conv units observed at 0.

A model kind's own terms (a Bayesian KL, SENN's robustness and concept losses) live with the kind.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def label_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The labels' term: cross-entropy for class indices ``y`` (N,); for multi-hot ``y`` (N, K)
    (multi-label Choices) a binary cross-entropy per class on its own sigmoid, summed over
    classes and averaged over examples (so its scale matches cross-entropy's)."""
    if y.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="sum") / max(len(y), 1)
    return F.cross_entropy(logits, y)


def masked_gradient_share(grad_sq: torch.Tensor, mask: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Mean over active examples of (gradient mass inside mask) / (total gradient mass)."""
    if not bool(active.any()):
        return grad_sq.sum() * 0.0
    dims = tuple(range(1, grad_sq.dim()))
    inside = (grad_sq * mask.to(grad_sq.dtype)).sum(dim=dims)
    total = grad_sq.sum(dim=dims) + EPS
    return (inside / total)[active].mean()


def cali_loss(theta_target: torch.Tensor, shown: torch.Tensor, corrected: torch.Tensor,
              mode: str = "ranking") -> torch.Tensor:
    """Explanation-correction loss on relevances (N, D), mean over examples.

    ``ranking`` (CALI Eq. 3): <theta(x), z_hat - z>, which is (||theta - z||^2 - ||theta - z_hat||^2) / 2
    up to a constant, so minimising it pulls theta toward the corrected explanation z and away from
    the shown one z_hat: a concept marked irrelevant (z_j < z_hat_j) has its relevance pushed down,
    one marked relevant pushed up, uncorrected concepts (z_j = z_hat_j) contribute nothing. It is
    linear in theta and unbounded below, so an irrelevant concept is pushed past z into negative
    relevance for as long as it trains.
    ``anchored`` (what training uses): sum over corrected concepts of (theta_j - z_j)^2 / 2, the first
    half of that difference: the same gradient at theta = z_hat, but it stops at z.
    ``shown`` and ``corrected`` are targets and are detached.
    """
    shown, corrected = shown.detach(), corrected.detach()
    if mode == "ranking":
        return (theta_target * (shown - corrected)).sum(1).mean()
    if mode == "anchored":
        changed = (shown != corrected).to(theta_target.dtype)
        return (0.5 * changed * (theta_target - corrected).pow(2)).sum(1).mean()
    raise ValueError(f"mode must be 'ranking' or 'anchored', got {mode!r}")


def corrected_relevances(shown: torch.Tensor, irrelevant: torch.Tensor | None,
                         relevant: torch.Tensor | None) -> torch.Tensor:
    """z from z_hat: irrelevant concepts set to zero, relevant ones raised to at least the top shown value."""
    z = shown.clone()
    if irrelevant is not None:
        z = z.masked_fill(irrelevant, 0.0)
    if relevant is not None:
        top = shown.abs().max(dim=1, keepdim=True).values.expand_as(shown)
        z = torch.where(relevant, torch.maximum(shown, top), z)
    return z


def pool_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool -> (N, 1, h, w) bool: a cell is masked if it touches a masked pixel (Eq. 5.10)."""
    return F.adaptive_max_pool2d(mask[:, None].float(), size) > 0


def activation_evidence_loss(preact: torch.Tensor, irrelevant_mask: torch.Tensor, sigma: float = 1.0,
                             positive_only: bool = True) -> torch.Tensor:
    """-log N(0; a, sigma^2) (constants dropped) for last-conv pre-activations under the mask.

    The thesis observes a_F = 0 as extra evidence (Eq. 5.13-5.16). Here that becomes a^2 / (2 sigma^2)
    averaged over all masked units in the batch, so its strength does not depend on how many
    examples in a batch carry feedback or on the mask's size; sigma sets the weight (smaller =
    stronger). ``positive_only`` keeps Eq. 5.12's filter: only units whose gradient reaches the
    logits count, which behind a ReLU are those with a > 0, i.e. the penalty is relu(a)^2.
    Returns 0 when nothing is masked.
    """
    cells = pool_mask(irrelevant_mask, preact.shape[-2:]).expand_as(preact)
    n = cells.sum()
    if n == 0:
        return preact.sum() * 0.0
    a = torch.relu(preact) if positive_only else preact
    return (a.pow(2) * cells).sum() / (2 * sigma ** 2 * n)


@torch.no_grad()
def activation_evidence_scale(preact: torch.Tensor, mask: torch.Tensor, positive_only: bool = False) -> float:
    """Mean |pre-activation| inside the pooled mask (0.0 if empty): the magnitude to monitor.

    With ``positive_only`` it is mean relu(a), the part ``activation_evidence_loss`` acts on by default.
    """
    cells = pool_mask(mask, preact.shape[-2:]).expand_as(preact)
    n = int(cells.sum())
    a = torch.relu(preact) if positive_only else preact.abs()
    return float(a[cells].sum() / n) if n else 0.0
