"""Each task's evidence as two small vectors: *where* it lies (the relevance map pooled to a few
cells) and *what* it lies on (the model's region features pooled under the relevance: the
representation of the evidence region in the model's own feature space, as the concepts of
``feedback.concepts`` use it). Tensors in, NumPy out; no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

PLACE_CELLS = 8  # an image's evidence place: 8x8 cells (a text's: 16 bins)
TEXT_BINS = 16
MAP_CELLS = 16  # the mean relevance map a cluster's card shows: 16x16 (texts: 16 bins)
CONTENT_DIMS = 64
FIT_ROWS = 512


@dataclass
class Descriptors:
    """Per task: ``place`` (N, P) unit vectors (square roots of the unit-sum pooled map, so a dot
    product is the Bhattacharyya overlap of two maps), ``content`` (N, D) unit vectors or (N, 0)
    when the kind has no region features, ``maps`` (N, M) unit-sum maps for display, and the
    ``predicted`` class whose evidence it is."""
    place: np.ndarray
    content: np.ndarray
    maps: np.ndarray
    predicted: np.ndarray

    def __len__(self) -> int:
        return len(self.place)


def pool_relevance(relevance: torch.Tensor, cells: int) -> torch.Tensor:
    """(N, H, W) -> (N, cells * cells), (N, L) -> (N, cells): the positive relevance per cell,
    summing to 1 per task (an all-zero map stays zero)."""
    r = torch.nan_to_num(relevance.float()).clamp_min(0).unsqueeze(1)
    pooled = (F.adaptive_avg_pool2d(r, cells) if r.dim() == 4 else F.adaptive_avg_pool1d(r, cells)).flatten(1)
    return pooled / pooled.sum(dim=1, keepdim=True).clamp_min(1e-12)


def pooled_features(relevance: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The region features averaged under the positive relevance: (N, D, h, w) with (N, H, W),
    or (N, L, D) per token with (N, L'), -> (N, D)."""
    r = torch.nan_to_num(relevance.float()).clamp_min(0).unsqueeze(1)
    if features.dim() == 4:
        weights = F.adaptive_avg_pool2d(r, features.shape[2:]).flatten(1)
        values = features.flatten(2)
    else:
        weights = F.interpolate(r, size=features.shape[1], mode="linear", align_corners=False).flatten(1) \
            if r.shape[-1] != features.shape[1] else r.flatten(1)
        values = features.transpose(1, 2)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("ndp,np->nd", values.float(), weights)


class EvidenceDescriber:
    """Streams batches of (relevance, region features) into ``Descriptors``.

    The content is standardised per channel and projected to ``CONTENT_DIMS`` by a fixed random
    Gaussian map, with statistics fitted on the first ``FIT_ROWS`` tasks: a job sees tasks in
    batches, and a backbone's 2,048 channels for 100,000 tasks would hold 800 MB."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._place: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []
        self._maps: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []  # pooled features before the statistics are fitted
        self._content: list[np.ndarray] = []
        self._fitted: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self._has_content: Optional[bool] = None

    def add(self, relevance: torch.Tensor, features: Optional[torch.Tensor], predicted: np.ndarray) -> None:
        """One batch: relevance (N, H, W) or (N, L), region features or None, predicted classes (N,)."""
        relevance = torch.as_tensor(relevance).detach().cpu()
        self._predicted.append(np.asarray(predicted, dtype=np.int64).reshape(-1))
        text = relevance.dim() == 2
        place = pool_relevance(relevance, TEXT_BINS if text else PLACE_CELLS)
        self._place.append(place.sqrt().numpy().astype(np.float32))
        self._maps.append(pool_relevance(relevance, TEXT_BINS if text else MAP_CELLS).numpy().astype(np.float16))
        if self._has_content is None:
            self._has_content = features is not None
        if not self._has_content:
            return
        if features is None:
            raise ValueError("region features are missing for some batches")
        raw = pooled_features(relevance, torch.as_tensor(features).detach().cpu()).numpy().astype(np.float32)
        if self._fitted is None:
            self._raw.append(raw)
            if sum(len(r) for r in self._raw) >= FIT_ROWS:
                self._fit()
        else:
            self._content.append(self._project(raw))

    def _fit(self) -> None:
        raw = np.concatenate(self._raw)
        mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6
        dims = raw.shape[1]
        if dims > CONTENT_DIMS:
            rng = np.random.default_rng(self.seed)
            projection = (rng.standard_normal((dims, CONTENT_DIMS)) / np.sqrt(CONTENT_DIMS)).astype(np.float32)
        else:
            projection = np.eye(dims, dtype=np.float32)
        self._fitted = (mean, std, projection)
        self._content = [self._project(raw)]
        self._raw = []

    def _project(self, raw: np.ndarray) -> np.ndarray:
        assert self._fitted is not None
        mean, std, projection = self._fitted
        z = ((raw - mean) / std) @ projection
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def result(self) -> Descriptors:
        if self._has_content and self._fitted is None and self._raw:
            self._fit()
        place = np.concatenate(self._place) if self._place else np.zeros((0, 0), np.float32)
        maps = np.concatenate(self._maps) if self._maps else np.zeros((0, 0), np.float16)
        content = np.concatenate(self._content) if self._content else np.zeros((len(place), 0), np.float32)
        predicted = np.concatenate(self._predicted) if self._predicted else np.zeros(0, np.int64)
        return Descriptors(place, content, maps, predicted)

    def __len__(self) -> int:
        return sum(len(p) for p in self._predicted)
