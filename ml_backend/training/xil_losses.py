"""Explanation-feedback losses for self-explaining and Bayesian models.

- CALI (Teso 2019, seed 000): ranking loss on a SENN's relevances, plus SENN's robustness penalty.
- SENN concept losses (Alvarez-Melis & Jaakkola 2018, seed 003): reconstruction and sparsity.
- Bayes-by-backprop ELBO and the thesis' activation evidence (Bekkemoen 2021, Eq. 5.10-5.16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Target = int | torch.Tensor | None


def cali_loss(theta_target: torch.Tensor, shown: torch.Tensor, corrected: torch.Tensor,
              mode: str = "ranking") -> torch.Tensor:
    """Explanation-correction loss on relevances (N, D), mean over examples.

    ``ranking`` (CALI Eq. 3, default): <theta(x), z_hat - z>, which is
    (||theta - z||^2 - ||theta - z_hat||^2) / 2 up to a constant, so minimising it pulls theta toward
    the corrected explanation z and away from the shown one z_hat: a concept marked irrelevant
    (z_j < z_hat_j) has its relevance pushed down, one marked relevant pushed up, uncorrected
    concepts (z_j = z_hat_j) contribute nothing. It is linear in theta and unbounded below, so an
    irrelevant concept is pushed past z into negative relevance for as long as it trains.
    ``anchored``: sum over corrected concepts of (theta_j - z_j)^2 / 2, the first half of that
    difference: the same gradient at theta = z_hat, but it stops at z.
    ``shown`` and ``corrected`` are targets and are detached.
    """
    shown, corrected = shown.detach(), corrected.detach()
    if mode == "ranking":
        return (theta_target * (shown - corrected)).sum(1).mean()
    if mode == "anchored":
        changed = (shown != corrected).to(theta_target.dtype)
        return (0.5 * changed * (theta_target - corrected).pow(2)).sum(1).mean()
    raise ValueError(f"mode must be 'ranking' or 'anchored', got {mode!r}")


def cali_objective(logits: torch.Tensor, y: torch.Tensor, theta_t: torch.Tensor, shown: torch.Tensor,
                   corrected: torch.Tensor, lam: float = 0.5, alpha: float = 0.0,
                   omega: torch.Tensor | float = 0.0, mode: str = "ranking") -> torch.Tensor:
    """lam * CE + (1 - lam) * l_Z + alpha * Omega (CALI Eq. 3); omega from ``senn_robustness``."""
    l_z = cali_loss(theta_t, shown, corrected, mode)
    return lam * F.cross_entropy(logits, y) + (1 - lam) * l_z + alpha * omega


def senn_robustness(model: nn.Module, x: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Omega = ||grad_x f(x) - theta(x)^T J_x^h(x)||, mean over examples (SENN Eq. 3).

    With ``target`` None the norm runs over all classes (one double-backward pass per class), else
    over the target class only. Both terms are built with create_graph=True, so the penalty trains
    theta and h. For pixel concepts (J_h constant) it reduces to ||(d theta/dx)^T h||: theta must
    vary slowly where the concepts are active.
    """
    x = x.detach().requires_grad_(True)
    logits, h, theta = model.forward_with_explanation(x)
    n, _, k = theta.shape
    if target is None:
        classes = [torch.full((n,), c, dtype=torch.long, device=x.device) for c in range(k)]
    elif isinstance(target, int):
        classes = [torch.full((n,), target, dtype=torch.long, device=x.device)]
    else:
        classes = [torch.as_tensor(target, device=x.device).long().reshape(-1).expand(n)]
    sq = torch.zeros(n, device=x.device, dtype=x.dtype)
    for c in classes:
        f_c = logits.gather(1, c[:, None]).sum()
        (grad_f,) = torch.autograd.grad(f_c, x, create_graph=True)
        theta_c = theta.gather(2, c.view(-1, 1, 1).expand(-1, theta.shape[1], 1)).squeeze(2)
        # theta_c^T J_h as a vector-Jacobian product; differentiable in theta_c and h
        (theta_j,) = torch.autograd.grad(h, x, grad_outputs=theta_c, create_graph=True)
        sq = sq + (grad_f - theta_j).pow(2).flatten(1).sum(1)
    return sq.clamp_min(1e-12).sqrt().mean()


def senn_concept_losses(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction MSE of decode(h(x)) against x, L1 sparsity mean |h|) for learned concepts."""
    h = model.concepts(x)
    return F.mse_loss(model.decode(h), x), h.abs().mean()


def elbo_loss(logits: torch.Tensor, y: torch.Tensor, kl: torch.Tensor, n_train: int,
              kl_weight: float = 1.0) -> torch.Tensor:
    """Negative ELBO per example: CE + kl_weight * KL / n_train (thesis Eq. 5.7, KL weighted by 1/n).

    kl_weight = 1 is the exact ELBO. With a few hundred examples the KL of any useful posterior
    outweighs the data and the posterior collapses onto the prior (uniform predictions), so small
    annotation sets need a tempered kl_weight << 1 (or KL annealing).
    """
    return F.cross_entropy(logits, y) + kl_weight * kl / n_train


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
