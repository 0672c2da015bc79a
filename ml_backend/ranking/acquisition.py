"""Acquisition functions: which unlabeled task is most worth an annotator's time.

Pure functions of the model's outputs, in the style of baal's heuristics: one small class per
function, each with a ``name`` and ``scores(...)`` returning one value per task, HIGHER = MORE
informative. Inputs:

- ``probs``: (N, K) mean predictive probabilities;
- ``mc_probs``: (T, N, K) MC-dropout samples (their mean over T is ``probs``); BALD needs them,
  the others use their mean when only ``mc_probs`` is given;
- ``explanations`` (N, D) and ``labeled_explanations`` (M, D): non-negative attribution maps
  (e.g. |Grad-CAM| flattened), for ALEX only.

``rank(scores)`` turns scores into task indices, most informative first (ties: lower index first).

Label Studio's ``score``
------------------------
Label Studio 1.23's "Uncertainty sampling" serves, among unlabeled tasks that have a prediction
of the project's current ``model_version``, the one with the LOWEST ``predictions.score``
(``order_by('predictions__score')``). Its scale is the opposite of ours, so we push the task's
normalised rank position instead of the raw acquisition value::

    ls_score(position, n) = position / (n - 1)        # 0.0 = most informative, 1.0 = least

``ls_scores(scores)`` does this for every task. Positions come from the stable ``rank``, so every
task gets a distinct score and equal acquisition values keep the deterministic index order
(the database would otherwise break ties arbitrarily). The value is comparable across
acquisition functions and independent of K. Label Studio itself still adds two twists: when
predictions carry a ``cluster`` it first prefers clusters the annotator solved least, and with
more than one annotator it picks at random among the first ``annotators + 1`` tasks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

EPS = 1e-12


# ---------------------------------------------------------------------------- helpers


def _as_probs(probs: np.ndarray | None, mc_probs: np.ndarray | None) -> np.ndarray:
    """(N, K) float64 probabilities, clipped and renormalised; the mean of ``mc_probs`` if needed."""
    if probs is None:
        if mc_probs is None:
            raise ValueError("need probs (N, K) or mc_probs (T, N, K)")
        probs = np.asarray(mc_probs, dtype=np.float64).mean(axis=0)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 3:  # MC samples passed as probs
        p = p.mean(axis=0)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    return _normalise(p)


def _normalise(p: np.ndarray) -> np.ndarray:
    """Clip to [0, inf), replace NaN by 0, make rows sum to 1 (an all-zero row becomes uniform)."""
    p = np.clip(np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = p.sum(axis=-1, keepdims=True)
    k = p.shape[-1]
    uniform = np.full_like(p, 1.0 / max(k, 1))
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, 0 log 0 = 0."""
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=-1)


def rank(scores: np.ndarray) -> np.ndarray:
    """Task indices, most informative (highest score) first; ties keep index order; NaN last."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = np.where(np.isnan(s), -np.inf, s)
    return np.argsort(-s, kind="stable")


def ls_score(rank_position: int | np.ndarray, n: int) -> float | np.ndarray:
    """Label Studio prediction score for a task at ``rank_position`` (0 = most informative) of ``n``.

    ``position / (n - 1)`` in [0, 1]: the most informative task gets 0.0 (served first by
    Label Studio's uncertainty sampling, which sorts ascending), the least informative 1.0.
    """
    if n <= 1:
        return 0.0 if np.isscalar(rank_position) else np.zeros(np.shape(rank_position))
    pos = np.asarray(rank_position, dtype=np.float64)
    if np.any(pos < 0) or np.any(pos >= n):
        raise ValueError(f"rank_position must be in [0, {n - 1}]")
    out = pos / (n - 1)
    return float(out) if out.ndim == 0 else out


def ls_scores(scores: np.ndarray) -> np.ndarray:
    """Label Studio scores for every task, in task order (lower = more informative, all distinct)."""
    order = rank(scores)
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(len(order))
    return np.asarray(ls_score(positions, len(order)), dtype=np.float64)


# ---------------------------------------------------------------------------- heuristics


class Acquisition(ABC):
    """Base class. ``needs_mc`` / ``needs_explanations`` tell the ranking job what to compute."""

    name = "base"
    needs_mc = False
    needs_explanations = False

    @abstractmethod
    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               explanations: np.ndarray | None = None,
               labeled_explanations: np.ndarray | None = None) -> np.ndarray:
        """One value per task; higher = more informative."""

    def rank(self, probs: np.ndarray | None = None, **kw: np.ndarray | None) -> np.ndarray:
        """Task indices, most informative first."""
        return rank(self.scores(probs, **kw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Random(Acquisition):
    """Uniform random scores from a seeded generator (the baseline)."""

    name = "random"

    def __init__(self, seed: int | None = 0) -> None:
        self.rng = np.random.default_rng(seed)

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


class BALD(Acquisition):
    """Mutual information between label and weights: ``H[mean_t p_t] - mean_t H[p_t]``.

    Needs ``mc_probs`` (T, N, K); high when individually confident samples disagree.
    """

    name = "bald"
    needs_mc = True

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        if mc_probs is None:
            if probs is not None and np.ndim(probs) == 3:
                mc_probs = probs
            else:
                raise ValueError("bald needs mc_probs (T, N, K)")
        mc = _normalise(np.asarray(mc_probs, dtype=np.float64))
        if mc.ndim != 3:
            raise ValueError(f"mc_probs must be (T, N, K), got shape {mc.shape}")
        mi = _entropy(mc.mean(axis=0)) - _entropy(mc).mean(axis=0)
        return np.clip(mi, 0.0, None)  # >= 0 by Jensen; clip rounding noise


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

    def __init__(self, b: int = 10, k_factor: int = 3, uncertainty: str = "entropy") -> None:
        if b < 1 or k_factor < 1:
            raise ValueError("b and k_factor must be >= 1")
        self.b, self.k_factor = int(b), int(k_factor)
        self.uncertainty = get_acquisition(uncertainty)
        if self.uncertainty.needs_mc or self.uncertainty.needs_explanations:
            raise ValueError("alex's uncertainty must be computable from probs alone")

    def candidates(self, probs: np.ndarray | None = None, *,
                   mc_probs: np.ndarray | None = None) -> np.ndarray:
        """Indices of the ``k`` most uncertain tasks, most uncertain first."""
        order = rank(self.uncertainty.scores(probs, mc_probs=mc_probs))
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
               labeled_explanations: np.ndarray | None = None, **_: object) -> np.ndarray:
        unc = self.uncertainty.scores(probs, mc_probs=mc_probs)
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


ACQUISITIONS: dict[str, type[Acquisition]] = {
    cls.name: cls for cls in (Random, LeastConfidence, Margin, Entropy, BALD, ALEX)
}


def get_acquisition(name: str, **kw) -> Acquisition:
    """An acquisition function by name (``random``, ``least_confidence``, ``margin``, ``entropy``,
    ``bald``, ``alex``); keyword arguments go to its constructor."""
    try:
        cls = ACQUISITIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown acquisition {name!r}; known: {', '.join(ACQUISITIONS)}") from None
    return cls(**kw)
