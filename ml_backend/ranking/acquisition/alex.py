"""ALEX: uncertain tasks whose explanations differ most from the labelled tasks' explanations."""
from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.ranking.acquisition.base import EPS, Acquisition, _normalise, get_acquisition, rank


class ALEX(Acquisition):
    """ALEX (Mondal & Ganguly): uncertainty candidates re-ranked by explanation divergence.

    1. candidates: the ``k = k_factor * b`` most uncertain tasks (``uncertainty``, entropy by default;
       the paper uses least confidence);
    2. each candidate's explanation and every labeled task's explanation are normalised to
       distributions; its divergence is the mean ``KL(candidate || labeled_m)`` over the M labeled;
    3. order: the ``b`` candidates with the highest divergence, then the other candidates, then all
       remaining tasks, each group by decreasing uncertainty (the top group by divergence).

    Scores are ``(N - position) / N`` (higher = earlier), so ``rank`` reproduces this order. With no
    labeled explanations, the order is plain uncertainty. Only candidate rows of ``explanations``
    are read, so a caller may fill the others with zeros (see ``candidates``).
    """

    name = "alex"
    needs_explanations = True

    @classmethod
    def from_settings(cls, settings: Any, seed: int) -> "ALEX":
        return cls(b=settings.alex_batch)

    def __init__(self, b: int = 10, k_factor: int = 3, uncertainty: str = "entropy") -> None:
        if b < 1 or k_factor < 1:
            raise ValueError("b and k_factor must be >= 1")
        self.b, self.k_factor = int(b), int(k_factor)
        self.uncertainty = get_acquisition(uncertainty)
        if self.uncertainty.needs_mc or self.uncertainty.needs_explanations:
            raise ValueError("alex's uncertainty must be computable from probs alone")

    def candidates(self, probs: np.ndarray | None = None, *,
                   mc_probs: np.ndarray | None = None, multi_label: bool = False) -> np.ndarray:
        """Indices of the ``k`` most uncertain tasks, most uncertain first."""
        order = rank(self.uncertainty.scores(probs, mc_probs=mc_probs, multi_label=multi_label))
        return order[: self.b * self.k_factor]

    def divergence(self, explanations: np.ndarray, labeled_explanations: np.ndarray) -> np.ndarray:
        """Mean KL(e_i || l_m) over m for each row i of ``explanations``."""
        e = _normalise(np.asarray(explanations, dtype=np.float64).reshape(len(explanations), -1))
        lab = np.asarray(labeled_explanations, dtype=np.float64)
        lab = _normalise(lab.reshape(len(lab), -1))
        if e.shape[1] != lab.shape[1]:
            raise ValueError(f"explanation sizes differ: {e.shape[1]} vs {lab.shape[1]}")
        # mean_m KL(p || q_m) = sum p log p - p . mean_m log q_m : O((N + M) D), no N x M x D tensor
        e = np.clip(e, EPS, 1.0)
        mean_log_q = np.log(np.clip(lab, EPS, 1.0)).mean(axis=0)
        return np.clip((e * np.log(e)).sum(axis=1) - e @ mean_log_q, 0.0, None)

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               explanations: np.ndarray | None = None,
               labeled_explanations: np.ndarray | None = None, multi_label: bool = False,
               **_: object) -> np.ndarray:
        """Multi-label: the uncertainty is over independent labels; explanations are the served
        classes' evidence together (``rendering.render_multi_label``)."""
        unc = self.uncertainty.scores(probs, mc_probs=mc_probs, multi_label=multi_label)
        n = len(unc)
        order = rank(unc)
        has_labeled = labeled_explanations is not None and len(labeled_explanations) > 0
        if has_labeled and n > 0:
            if explanations is None or len(explanations) != n:
                raise ValueError("alex needs explanations (N, D), one row per task")
            cand = order[: self.b * self.k_factor]
            div = self.divergence(np.asarray(explanations)[cand], labeled_explanations)
            by_div = cand[rank(div)]  # ties keep uncertainty order
            top = by_div[: self.b]
            rest_cand = cand[~np.isin(cand, top)]
            order = np.concatenate([top, rest_cand, order[len(cand):]])
        out = np.empty(n, dtype=np.float64)
        out[order] = (n - np.arange(n)) / max(n, 1)
        return out

    def __repr__(self) -> str:
        return f"ALEX(b={self.b}, k_factor={self.k_factor}, uncertainty={self.uncertainty.name!r})"
