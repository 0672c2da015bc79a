"""Spread a queue over what the model's evidence lies on, so one lesson is not asked forty times.

After a correction generalises (a tag, a stamp), the tasks it covered are the ones the model is now
least sure of: uncertainty ranking then serves more of them, while the tasks whose evidence lies on
another shortcut, predicted with confidence, are never shown. Here each predicted class's tasks are
grouped by their evidence content (``discovery.evidence``: the model's region features under its
relevance) with k-means, as many groups as the evidence's kNN graph has modes (its eigengap), and
each group's share of the class's queue is capped, as ``acquisition.rank`` caps a class's share of
the whole queue. Pure NumPy and scikit-learn; no I/O.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from ml_backend.discovery.clusters import eigengap_clusters
from ml_backend.ranking.acquisition.base import capped_order

GROUPS_PER_CLASS = 8  # a class's evidence splits into at most this many groups
LANDMARKS = 400  # tasks per class the number of groups is read from (the discovery's clustering's)
NEIGHBOURS = 10


def evidence_groups(content: np.ndarray, predicted: np.ndarray, groups_per_class: int = GROUPS_PER_CLASS,
                    seed: int = 0) -> np.ndarray:
    """(N, D) evidence vectors and (N,) predicted classes -> (N,) group ids, distinct across classes."""
    content = np.asarray(content, dtype=np.float32)
    predicted = np.asarray(predicted).ravel()
    if len(content) != len(predicted):
        raise ValueError(f"one evidence vector per task: {len(content)} != {len(predicted)}")
    out = np.zeros(len(predicted), dtype=np.int64)
    rng = np.random.default_rng(seed)
    offset = 0
    for cls in np.unique(predicted):
        rows = np.flatnonzero(predicted == cls)
        sample = rows if len(rows) <= LANDMARKS else np.sort(rng.choice(rows, LANDMARKS, replace=False))
        # as many groups as the evidence has modes: k-means alone splits one shortcut's tasks into
        # several groups, each of which the cap would then let in
        k = eigengap_clusters(content[sample], groups_per_class, NEIGHBOURS)
        if k > 1:
            labels = KMeans(k, n_init=3, random_state=seed).fit_predict(content[rows])
        else:
            labels = np.zeros(len(rows), dtype=np.int64)
        out[rows] = offset + labels
        offset += k
    return out


def rank_by_class_and_evidence(scores: np.ndarray, classes: np.ndarray | None, class_share: float,
                               groups: np.ndarray, group_share: float) -> np.ndarray:
    """Task indices, first to annotate first: within each class no evidence group holds more than
    ``group_share`` of any prefix of the class's tasks, then the classes merged as ``rank`` merges
    them (each class's k-th place keeps the class's k-th best score, so classes compare as before)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = np.where(np.isnan(s), -np.inf, s)
    cls = np.zeros(len(s), dtype=np.int64) if classes is None else np.asarray(classes).ravel()
    value = np.empty(len(s))
    place = np.empty(len(s), dtype=np.int64)
    for c in np.unique(cls):
        rows = np.flatnonzero(cls == c)
        order = rows[capped_order(np.argsort(-s[rows], kind="stable"), groups[rows], group_share)]
        value[order] = np.sort(s[rows])[::-1]
        place[order] = np.arange(len(rows))
    merged = np.lexsort((place, -value))
    if classes is None or class_share >= 1.0:
        return merged
    return capped_order(merged, cls, class_share)
