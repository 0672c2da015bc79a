"""The acquisition-function interface and its helpers: which unlabeled task is most worth an annotator's time.

Pure functions of the model's outputs, in the style of baal's heuristics: one small class per
function, each with a ``name`` and ``scores(...)`` returning one value per task, HIGHER = MORE
informative. Inputs:

- ``probs``: (N, K) mean predictive probabilities;
- ``mc_probs``: (T, N, K) MC-dropout samples (their mean over T is ``probs``); BALD needs them,
  the others use their mean when only ``mc_probs`` is given;
- ``explanations`` (N, D) and ``labeled_explanations`` (M, D): non-negative attribution maps
  (e.g. |Grad-CAM| flattened), for ALEX only;
- ``multi_label``: the K columns are independent per-class probabilities (multi-label Choices,
  a sigmoid each), not one distribution: uncertainty is taken per label (each a Bernoulli) and
  summed (entropy, BALD) or taken at the least certain label (least confidence, margin).

Each function is one class in one module of this package and registers itself by ``name``
(``ACQUISITIONS``); a new function is one new module.

``rank(scores)`` turns scores into task indices, most informative first (ties: lower index first);
``rank(scores, groups, max_share)`` caps each predicted class's share of the queue (``max_class_share``).

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

import heapq
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ml_backend.plugins import Registry

EPS = 1e-12


# ---------------------------------------------------------------------------- helpers


def _mean_probs(probs: np.ndarray | None, mc_probs: np.ndarray | None) -> np.ndarray:
    """(N, K) float64: ``probs``, or the mean over the samples of ``mc_probs`` (or of probs passed as samples)."""
    if probs is None:
        if mc_probs is None:
            raise ValueError("need probs (N, K) or mc_probs (T, N, K)")
        probs = np.asarray(mc_probs, dtype=np.float64).mean(axis=0)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 3:  # MC samples passed as probs
        p = p.mean(axis=0)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    return p


def _as_probs(probs: np.ndarray | None, mc_probs: np.ndarray | None) -> np.ndarray:
    """(N, K) float64 probabilities, clipped and renormalised."""
    return _normalise(_mean_probs(probs, mc_probs))


def _normalise(p: np.ndarray) -> np.ndarray:
    """Clip to [0, inf), replace NaN by 0, make rows sum to 1 (an all-zero row becomes uniform)."""
    p = np.clip(np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = p.sum(axis=-1, keepdims=True)
    k = p.shape[-1]
    uniform = np.full_like(p, 1.0 / max(k, 1))
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def _as_bernoulli(probs: np.ndarray | None, mc_probs: np.ndarray | None) -> np.ndarray:
    """(N, K) float64 per-class probabilities in [0, 1] (multi-label: not renormalised)."""
    return _clip01(_mean_probs(probs, mc_probs))


def _clip01(p: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(p, nan=0.5, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of independent Bernoulli labels, summed over the last axis."""
    q = np.clip(p, EPS, 1.0 - EPS)
    return -(q * np.log(q) + (1 - q) * np.log(1 - q)).sum(axis=-1)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, 0 log 0 = 0."""
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=-1)


def rank(scores: np.ndarray, groups: np.ndarray | None = None, max_share: float = 0.0) -> np.ndarray:
    """Task indices, most informative (highest score) first; ties keep index order; NaN last.

    ``groups`` (one per task: the predicted class) caps each group's share of the queue: among the
    first n tasks, for every n, a group holds at most ``ceil(max_share * n)`` (at least one). While
    no group may take the next place, the least represented group's best task does. ``max_share``
    1 is the plain order; 0 interleaves the groups (each group's best, then each one's second...,
    each such round by score); 0.5 lets no group take more than half of any prefix."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-s, kind="stable")
    if groups is None or max_share >= 1.0:
        return order
    return capped_order(order, groups, max_share)


def capped_order(order: np.ndarray, groups: np.ndarray, max_share: float) -> np.ndarray:
    """``order`` (task indices, best first) reordered so that among the first n, for every n, a
    group holds at most ``ceil(max_share * n)`` (at least one); see ``rank``."""
    order = np.asarray(order, dtype=np.int64)
    g = np.asarray(groups).ravel()
    if g.shape != order.shape:
        raise ValueError(f"groups must have one value per task: {g.shape} != {order.shape}")
    if max_share >= 1.0:
        return order
    members = [order[g[order] == value] for value in np.unique(g)]  # each group's tasks, best first
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))
    taken = [0] * len(members)
    # groups under the cap by their best remaining task's place; those at it by (taken, place):
    # O(n log K) instead of scanning every group for every place
    under = [(int(place[tasks[0]]), k) for k, tasks in enumerate(members)]
    heapq.heapify(under)
    over: list[tuple[int, int, int]] = []
    out = np.empty(len(order), dtype=np.int64)
    for n in range(len(order)):
        cap = max(1, math.ceil(max_share * (n + 1) - 1e-9))
        while over and over[0][0] < cap:  # the cap grew past these groups' counts
            _, head, k = heapq.heappop(over)
            heapq.heappush(under, (head, k))
        _, best = heapq.heappop(under) if under else heapq.heappop(over)[1:]
        out[n] = members[best][taken[best]]
        taken[best] += 1
        if taken[best] < len(members[best]):
            head = int(place[members[best][taken[best]]])
            if taken[best] >= cap:
                heapq.heappush(over, (taken[best], head, best))
            else:
                heapq.heappush(under, (head, best))
    return out


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


def ls_scores(scores: np.ndarray, groups: np.ndarray | None = None, max_share: float = 0.0) -> np.ndarray:
    """Label Studio scores for every task, in task order (lower = more informative, all distinct)."""
    return ls_scores_of(rank(scores, groups, max_share))


def ls_scores_of(order: np.ndarray) -> np.ndarray:
    """Label Studio scores, in task order, for a queue ``order`` (task indices, first served first)."""
    order = np.asarray(order, dtype=np.int64)
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(len(order))
    return np.asarray(ls_score(positions, len(order)), dtype=np.float64)


# ---------------------------------------------------------------------------- heuristics


ACQUISITIONS: Registry["Acquisition"] = Registry("ml_backend.ranking.acquisition", "acquisition function")


class Acquisition(ABC):
    """Base class. ``needs_mc`` / ``needs_explanations`` tell the ranking job what to compute."""

    name: ClassVar[str] = ""
    needs_mc: ClassVar[bool] = False
    needs_explanations: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            ACQUISITIONS.add(cls.name, cls)

    @classmethod
    def from_settings(cls, settings: Any, seed: int) -> "Acquisition":
        """The function for a project's settings; ``seed`` is fixed per project and model version."""
        return cls()

    @abstractmethod
    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               explanations: np.ndarray | None = None, labeled_explanations: np.ndarray | None = None,
               multi_label: bool = False) -> np.ndarray:
        """One value per task; higher = more informative."""

    def rank(self, probs: np.ndarray | None = None, **kw: np.ndarray | None) -> np.ndarray:
        """Task indices, most informative first."""
        return rank(self.scores(probs, **kw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

def get_acquisition(name: str, **kw: Any) -> Acquisition:
    """An acquisition function by name; keyword arguments go to its constructor."""
    return ACQUISITIONS.get(name.lower())(**kw)
