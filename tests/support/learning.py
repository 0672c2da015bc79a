"""Small confounded problems and one fit through the backend's trainer, for tests that assert learning.

- ``decoy_digits``: scikit-learn's digits (8x8) in a 12x12 box centred in 16x16, with a 2x2 swatch in
  all four corners whose shade follows the label in training and is random at test (the thesis'
  four-corner decoy, small). Clean twins have no swatch.
- ``decoy_reviews``: the benchmark's generated reviews (label = majority of sentiment words) with a
  spurious token per class in training and a random one at test, as token ids and token masks.

``train`` fits a model kind with a project's strategies through ``training.trainer.fit``: the loss,
the kind's own terms and each strategy's terms, exactly as a project's fit runs them.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.config import ProjectSettings
from ml_backend.data.text import encode_tokens, tokenize
from ml_backend.models import kind_for
from ml_backend.models.base import ModelKind
from ml_backend.training.sets import TrainingSet
from ml_backend.training.strategies import strategies_for
from ml_backend.training.trainer import FitConfig, accuracy, fit

SIZE = 16
MAX_LEN = 24
BUCKETS = 2000


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    box = F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False)
    images = torch.zeros(len(box), 1, SIZE, SIZE)
    images[:, :, 2:14, 2:14] = box.clamp(0, 1)
    return images, torch.tensor(digits.target)


def corners_mask() -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    for r in (0, SIZE - 2):
        for c in (0, SIZE - 2):
            mask[r:r + 2, c:c + 2] = True
    return mask


def decoy_digits(seed: int, n_train: int = 1000) -> dict[str, torch.Tensor]:
    """(N, 3, 16, 16) images in [0, 1]: train (shade 1 - 0.09 y), test (random shade), clean twins; masks."""
    images, y = _digits()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    tr, te = order[:n_train], order[n_train:]
    mask = corners_mask()

    def swatch(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shade = (1.0 - 0.09 * labels.float()).view(-1, 1, 1, 1)
        return torch.where(mask, shade.expand_as(x), x)

    random_labels = torch.randint(0, 10, (len(te),), generator=g)
    rgb = lambda x: x.repeat(1, 3, 1, 1)  # noqa: E731
    return {"x": rgb(swatch(images[tr], y[tr])), "y": y[tr], "mask": mask.expand(len(tr), SIZE, SIZE).clone(),
            "x_test": rgb(swatch(images[te], random_labels)), "y_test": y[te],
            "clean": rgb(images[tr]), "clean_test": rgb(images[te])}


def decoy_reviews(seed: int, n_train: int = 400, n_test: int = 300) -> dict[str, torch.Tensor]:
    """Token ids (N, MAX_LEN) of the benchmark's decoy reviews, their spurious-token masks, clean twins."""
    from benchmarks.xil.data import decoy_text

    problem = decoy_text(seed, n_train=n_train, n_test=n_test)

    def encode(split: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, masks = [], []
        for task, spans in zip(split.tasks, split.confounders):
            tokens = tokenize(task["data"]["text"])[:MAX_LEN]
            ids.append(encode_tokens(tokens, MAX_LEN, BUCKETS))
            mask = torch.zeros(MAX_LEN, dtype=torch.bool)
            for i, token in enumerate(tokens):
                mask[i] = any(token.start < end and start < token.end for start, end in spans or [])
            masks.append(mask)
        return torch.stack(ids), torch.as_tensor(np.asarray(split.labels)).long(), torch.stack(masks)

    x, y, mask = encode(problem.train)
    x_test, y_test, _ = encode(problem.test)
    clean, _, _ = encode(problem.clean_train)
    return {"x": x, "y": y, "mask": mask, "x_test": x_test, "y_test": y_test, "clean": clean}


def new_model(kind: str, modality: str, n_classes: int, settings: ProjectSettings) -> ModelKind:
    cls = kind_for(modality, kind)
    config = cls.default_config(n_classes, settings)
    if modality == "image":
        config.update(in_channels=3, width=8)
    if modality == "text":
        config.update(n_buckets=BUCKETS, max_len=MAX_LEN, embed_dim=32, channels=32)
    return cls.create(config)


def train(model: ModelKind, x: torch.Tensor, y: torch.Tensor, settings: ProjectSettings, epochs: int,
          seed: int, irrelevant: Optional[torch.Tensor] = None) -> None:
    """Fit in place with ``settings``' strategies; ``irrelevant`` marks per example (None: none)."""
    shape = x.shape[1:] if x.dtype == torch.long else x.shape[2:]
    irrelevant = torch.zeros(len(y), *shape, dtype=torch.bool) if irrelevant is None else irrelevant
    data = TrainingSet(x, y, irrelevant, torch.zeros_like(irrelevant))
    strategies = strategies_for(settings)
    for strategy in strategies:
        data = strategy.augment(data, model, seed)
    torch.manual_seed(seed)
    config = FitConfig.from_settings(dataclasses.replace(settings, epochs=epochs), seed)
    fit(model, data, config, strategies, device=torch.device("cpu"))


def test_accuracy(model: ModelKind, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(accuracy(model, x, y))


test_accuracy.__test__ = False  # a helper, not a test
