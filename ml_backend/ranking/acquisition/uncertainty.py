"""Uncertainty of the predictive distribution: random (the baseline), least confidence, margin, entropy."""
from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.ranking.acquisition.base import Acquisition, _as_probs, _entropy


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
    """``1 - max_k p_k``."""

    name = "least_confidence"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        return 1.0 - _as_probs(probs, mc_probs).max(axis=1)


class Margin(Acquisition):
    """``1 - (p_(1) - p_(2))``: a small gap between the two most likely classes = uncertain."""

    name = "margin"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        p = _as_probs(probs, mc_probs)
        if p.shape[1] < 2:
            return np.zeros(p.shape[0])
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])


class Entropy(Acquisition):
    """Predictive entropy ``-sum_k p_k log p_k`` (nats)."""

    name = "entropy"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        return _entropy(_as_probs(probs, mc_probs))
