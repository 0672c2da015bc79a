"""Small generated data sets with a planted confounder (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import torch


def confounded_images(n: int, size: int = 24, seed: int = 0, confounded: bool = True, patch: int = 6,
                      noise: float = 0.25, bar: float = 0.9):
    """Two classes: a vertical (0) or horizontal (1) bar at a random place in the middle, plus noise.

    With ``confounded``, a bright ``patch`` square in the top-left corner is on exactly for class 1:
    a shortcut that predicts the label perfectly. Returns (x (N,3,S,S) in [0,1], y (N,), mask (S,S) bool)
    where mask marks the confounder's corner.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, noise, size=(n, size, size)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    lo, hi = patch + 2, size - 6
    for i in range(n):
        r, c = rng.integers(lo, hi, size=2)
        if y[i] == 0:
            x[i, r - 3:r + 4, c:c + 2] = bar
        else:
            x[i, r:r + 2, c - 3:c + 4] = bar
        if confounded and y[i] == 1:
            x[i, :patch, :patch] = 1.0
    mask = np.zeros((size, size), dtype=bool)
    mask[:patch, :patch] = True
    images = torch.from_numpy(x).unsqueeze(1).repeat(1, 3, 1, 1)
    return images, torch.from_numpy(y).long(), mask


def bars(n: int, generator: torch.Generator, size: int = 16, confound: bool = True):
    """Class 0: a horizontal bar, class 1: a vertical bar, on a (N, 1, S, S) noisy image; with
    ``confound`` the top-left 4x4 corner lights up exactly for class 1. Returns (x, y)."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.rand(n, 1, size, size, generator=generator) * 0.2
    pos = torch.randint(6, size - 1, (n,), generator=generator)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], 2:size - 1] = 1.0
        else:
            x[i, 0, 2:size - 1, pos[i]] = 1.0
    if confound:
        x[:, 0, :4, :4] = y.float().view(-1, 1, 1)
    return x, y
