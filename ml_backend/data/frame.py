"""Where a model's input pixels come from in the original image, and the maps both ways.

An image processor resizes (keeping the aspect or not), crops and pads: an axis-aligned affine
map. ``Frame`` holds it, so evidence computed on the model's input lands at the task's original
coordinates, and an annotator's marks at original coordinates land on the model's input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

WORK_SIDE = 256  # evidence is placed on a grid of at most this side before regions are cut
LARGE_REGION = 0.25  # share of the image above which a region is a background, not an object


def blend_reaches(mask: np.ndarray) -> bool:
    """Whether a mark also covers the rim a resize blends it into. An object's mark does: its rim
    carries its colour into the background around it. A background's (over ``LARGE_REGION`` of the
    image) does not: its rim is the object's edge, which the counterexamples' fill shifts in colour
    (``background_fill``) rather than erases (marked, a frozen ResNet's background fell 0.951 -> 0.903)."""
    return bool(mask.any()) and float(mask.mean()) <= LARGE_REGION


@dataclass(frozen=True)
class Frame:
    """Input pixel (row, col) covers original [oy + row * sy, oy + (row + 1) * sy) (same for x)."""

    input_shape: tuple[int, int]  # (H', W') of the model input
    original_shape: tuple[int, int]  # (H, W) of the image as the annotator sees it
    scale: tuple[float, float]  # (sy, sx): original pixels per input pixel
    offset: tuple[float, float]  # (oy, ox): original coordinate of the input's top-left corner
    # (ry, rx): an input pixel takes value from the original pixels whose centres lie within this
    # distance of its own centre (the resize filter's support; None: only those it covers)
    reach: Optional[tuple[float, float]] = None

    @classmethod
    def stretch(cls, input_shape: tuple[int, int], original_shape: tuple[int, int]) -> "Frame":
        """The whole image resized to the input (the aspect not kept)."""
        (h, w), (H, W) = input_shape, original_shape
        return cls((h, w), (H, W), (H / h, W / w), (0.0, 0.0))

    def _sample(self, values: np.ndarray, rows: np.ndarray, cols: np.ndarray, fill: float) -> np.ndarray:
        inside = (rows >= 0) & (rows < values.shape[0]) & (cols >= 0) & (cols < values.shape[1])
        out = np.full(np.broadcast(rows, cols).shape, fill, dtype=values.dtype)
        r, c = np.broadcast_arrays(rows, cols)
        out[inside] = values[r[inside], c[inside]]
        return out

    def to_original(self, relevance: np.ndarray) -> np.ndarray:
        """(H', W') relevance -> the original image's frame, on a grid of at most WORK_SIDE a side
        (zero where the model saw nothing); callers upsample it to the original size."""
        H, W = self.original_shape
        factor = max(1.0, max(H, W) / WORK_SIDE)
        h, w = max(1, round(H / factor)), max(1, round(W / factor))
        y = (np.arange(h) + 0.5) * (H / h)
        x = (np.arange(w) + 0.5) * (W / w)
        rows = np.floor((y - self.offset[0]) / self.scale[0]).astype(np.int64)
        cols = np.floor((x - self.offset[1]) / self.scale[1]).astype(np.int64)
        return self._sample(np.asarray(relevance), rows[:, None], cols[None, :], 0)

    def to_input(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask over the whole original image, at any resolution -> (H', W') on the model's
        input: an input pixel is marked when any of 3x3 points sampled inside it is, or when the
        resize blends a marked pixel into it (``reach``): a mark's blended rim still carries it."""
        mh, mw = mask.shape
        H, W = self.original_shape
        out = np.zeros(self.input_shape, dtype=bool)
        for fy in (1 / 6, 0.5, 5 / 6):
            for fx in (1 / 6, 0.5, 5 / 6):
                y = self.offset[0] + (np.arange(self.input_shape[0]) + fy) * self.scale[0]
                x = self.offset[1] + (np.arange(self.input_shape[1]) + fx) * self.scale[1]
                rows = np.floor(y * mh / H).astype(np.int64)
                cols = np.floor(x * mw / W).astype(np.int64)
                out |= self._sample(mask.astype(bool), rows[:, None], cols[None, :], False)
        if self.reach is not None and blend_reaches(mask):
            out |= self._reached(mask.astype(bool))
        return out

    def _reached(self, mask: np.ndarray) -> np.ndarray:
        """Input pixels with a marked original pixel's centre within ``reach`` of their centre."""
        counts = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        spans = []
        for axis in (0, 1):
            n_mask, extent = mask.shape[axis], self.original_shape[axis]
            centre = self.offset[axis] + (np.arange(self.input_shape[axis]) + 0.5) * self.scale[axis]
            per = n_mask / extent  # mask pixels per original pixel
            # mask pixel i's centre (i + 0.5) / per lies in [centre - reach, centre + reach]
            lo = np.ceil((centre - self.reach[axis]) * per - 0.5 - 1e-9).astype(np.int64).clip(0, n_mask)
            hi = (np.floor((centre + self.reach[axis]) * per - 0.5 + 1e-9).astype(np.int64) + 1).clip(0, n_mask)
            spans.append((lo, np.maximum(hi, lo)))
        (r0, r1), (c0, c1) = spans
        inside = (counts[r1][:, c1] - counts[r0][:, c1] - counts[r1][:, c0] + counts[r0][:, c0])
        return inside > 0
