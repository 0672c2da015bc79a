"""Uncertainty of the predictive distribution: random (the baseline), least confidence, margin, entropy."""
from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.ranking.acquisition.base import Acquisition, _as_bernoulli, _as_probs, _binary_entropy, _entropy


class Random(Acquisition):
    """Uniform random scores from a seeded generator (the baseline)."""

    name = "random"

    def __init__(self, seed: int | None = 0) -> None:
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_settings(cls, settings: Any, seed: int) -> "Random":
        return cls(seed=seed)  # a new order per version, reproducible for the same version

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        n = _as_probs(probs, mc_probs).shape[0]
        return self.rng.random(n)


class LeastConfidence(Acquisition):
    """``1 - max_k p_k``; multi-label: ``1 - min_k max(p_k, 1 - p_k)``, the least certain label."""

    name = "least_confidence"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               multi_label: bool = False, **_: object) -> np.ndarray:
        if multi_label:
            p = _as_bernoulli(probs, mc_probs)
            return 1.0 - np.maximum(p, 1 - p).min(axis=1)
        return 1.0 - _as_probs(probs, mc_probs).max(axis=1)


class Margin(Acquisition):
    """``1 - (p_(1) - p_(2))``: a small gap between the two most likely classes = uncertain.
    Multi-label: each label's margin between its two outcomes, ``|p_k - (1 - p_k)|``, at the
    least certain label: ``1 - min_k |2 p_k - 1|``."""

    name = "margin"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               multi_label: bool = False, **_: object) -> np.ndarray:
        if multi_label:
            return 1.0 - np.abs(2 * _as_bernoulli(probs, mc_probs) - 1).min(axis=1)
        p = _as_probs(probs, mc_probs)
        if p.shape[1] < 2:
            return np.zeros(p.shape[0])
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])


class Entropy(Acquisition):
    """Predictive entropy ``-sum_k p_k log p_k`` (nats); multi-label: the entropy of the
    independent labels, ``sum_k H_b(p_k)``."""

    name = "entropy"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               multi_label: bool = False, **_: object) -> np.ndarray:
        if multi_label:
            return _binary_entropy(_as_bernoulli(probs, mc_probs))
        return _entropy(_as_probs(probs, mc_probs))
