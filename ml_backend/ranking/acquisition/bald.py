"""BALD: mutual information between the prediction and the model's parameters (MC samples)."""
from __future__ import annotations

import numpy as np

from ml_backend.ranking.acquisition.base import Acquisition, _binary_entropy, _clip01, _entropy, _normalise


class BALD(Acquisition):
    """Mutual information between label and weights: ``H[mean_t p_t] - mean_t H[p_t]``.

    Needs ``mc_probs`` (T, N, K); high when individually confident samples disagree. Multi-label:
    the labels are independent given the weights, so the information is summed over labels, each
    a Bernoulli: ``sum_k H_b(mean_t p_tk) - mean_t H_b(p_tk)``.
    """

    name = "bald"
    needs_mc = True

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               multi_label: bool = False, **_: object) -> np.ndarray:
        if mc_probs is None:
            if probs is not None and np.ndim(probs) == 3:
                mc_probs = probs
            else:
                raise ValueError("bald needs mc_probs (T, N, K)")
        mc = np.asarray(mc_probs, dtype=np.float64)
        if mc.ndim != 3:
            raise ValueError(f"mc_probs must be (T, N, K), got shape {mc.shape}")
        if multi_label:
            mc = _clip01(mc)
            mi = _binary_entropy(mc.mean(axis=0)) - _binary_entropy(mc).mean(axis=0)
        else:
            mc = _normalise(mc)
            mi = _entropy(mc.mean(axis=0)) - _entropy(mc).mean(axis=0)
        return np.clip(mi, 0.0, None)  # >= 0 by Jensen; clip rounding noise
