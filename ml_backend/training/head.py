"""A linear head on a frozen backbone's features, fitted to convergence: a logistic regression.

Thirty epochs of mini-batch steps on raw pooled features underfit (a training accuracy of 0.66
where scikit-learn's logistic regression on the same features reached 0.89): the features' scales
differ by orders of magnitude and the steps stop long before the optimum. The loss is convex in the
head, so it is fitted whole: features standardised (the head keeps their mean and scale), the
mean label loss plus an L2 penalty on the weights of ``1 / (C n)`` (scikit-learn's ``C``), full-batch
L-BFGS from the current head (a warm start converges in a few iterations).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ml_backend.models.base import ModelKind
from ml_backend.training.losses import label_loss

HEAD_C = 1.0  # inverse L2 strength, scikit-learn's default; within 0.006 of a cross-validated C on every
# problem of docs/xil-benchmarks.md's probe table
MAX_ITERATIONS = 300


@dataclass
class HeadFit:
    loss: float  # label loss + penalty at the end
    label_loss: float
    iterations: int


def fit_linear_head(model: ModelKind, features: torch.Tensor, y: torch.Tensor, c: float = HEAD_C,
                    max_iterations: int = MAX_ITERATIONS) -> HeadFit:
    """Fit ``model``'s head (its trainable parameters) on ``features`` (N, D) of a frozen part and
    labels ``y`` (class indices, or multi-hot rows), after standardising the head's input to them."""
    model.set_feature_statistics(features)
    params = model.trainable_parameters()
    weights = [p for p in params if p.dim() >= 2]  # the bias goes unpenalised, as in scikit-learn
    y = y.to(features.device)
    penalty = 1.0 / (c * max(1, len(y)))
    network = model.network
    network.eval()  # no dropout: the head's optimum, not a sample of it
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    last: dict[str, float] = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        data_loss = label_loss(model.logits_from_frozen(features), y)
        loss = data_loss + 0.5 * penalty * sum(w.pow(2).sum() for w in weights)
        loss.backward()
        last.update(loss=float(loss.detach()), label_loss=float(data_loss.detach()))
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state_dict()["state"].get(0, {}).get("n_iter", 0))
    return HeadFit(last["loss"], last["label_loss"], iterations)
