"""Attribution -> evidence: a binary mask (images) or character spans (texts).

This runs on every /predict, so the heavy steps (smoothing, thresholding, morphology,
superpixels) run on a small grid: the relevance map's own resolution (the model's input
size), block-averaged down to at most ``work_size`` pixels a side when it is larger; so do the
regions and their shares (``evidence_regions``). Only each finished region is upsampled to the
original image size Label Studio wants: bilinearly as a 0/1 map thresholded at 0.5 (within the
region's bounding box), which costs about as much as a nearest-neighbour upsampling and rounds
off its block staircase. Resizing the relevance first would make every step pay
for the original size (tens of ms at 512x512) for no visible gain.

The per-pixel filters skip library wrappers: at 64x64 scikit-image's checks and float64 copies
cost ten times the filtering itself, and even scipy.ndimage's calls cost several times what the
Gaussian as two cached matrix products, or the disk morphology as a few shifted slices, do.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import slic
from skimage.transform import resize

from ml_backend.data.text import Token

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def _nonnegative(relevance: np.ndarray) -> np.ndarray:
    rel = np.asarray(relevance, dtype=np.float32)
    return np.where(np.isfinite(rel) & (rel > 0), rel, np.float32(0))


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """ndimage.gaussian_filter(values, sigma, mode="nearest") as two products with cached matrices
    (four times faster on a 64x64 map)."""
    h, w = values.shape
    return _gaussian_matrix(h, sigma) @ values.astype(np.float32, copy=False) @ _gaussian_matrix(w, sigma).T


@lru_cache(maxsize=32)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    # row i: the weights ndimage's filter gives each input pixel for output pixel i
    matrix = ndi.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="nearest").astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def _top_mass(values: np.ndarray, keep_mass: float) -> np.ndarray:
    """The highest entries that together hold ``keep_mass`` of the total (ties included)."""
    flat = values.ravel()
    total = float(flat.sum(dtype=np.float64))
    if not total > 0:
        return np.zeros(values.shape, dtype=bool)
    ordered = np.sort(flat)[::-1]
    cumulative = np.cumsum(ordered, dtype=np.float64)
    k = min(int(np.searchsorted(cumulative, min(keep_mass, 1.0) * total)), flat.size - 1)
    return (values >= ordered[k]) & (values > 0)


def token_evidence(relevance: np.ndarray, keep_mass: float = 0.2) -> np.ndarray:
    """(L,) token relevance -> (L,) bool: the highest tokens holding ``keep_mass`` of its mass."""
    return _top_mass(_nonnegative(relevance), keep_mass)


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    h, w = values.shape
    padded = np.pad(values, ((0, -h % factor), (0, -w % factor)), mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))


def _resize_nearest(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if values.shape == tuple(shape):
        return values
    rows = np.arange(shape[0]) * values.shape[0] // shape[0]
    cols = np.arange(shape[1]) * values.shape[1] // shape[1]
    return values[rows][:, cols]


@lru_cache(maxsize=64)
def _bilinear_axis(n_from: int, n_to: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # pixel centres aligned (torch's align_corners=False), clamped at the edges
    pos = np.clip((np.arange(n_to) + 0.5) * n_from / n_to - 0.5, 0, n_from - 1)
    lo = pos.astype(np.intp)
    axis = lo, np.minimum(lo + 1, n_from - 1), (pos - lo).astype(np.float32)
    for a in axis:
        a.flags.writeable = False  # shared by every call (cached)
    return axis


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    out = np.zeros(shape, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    r0, r1, t = _bilinear_axis(mask.shape[0], shape[0])
    c0, c1, u = _bilinear_axis(mask.shape[1], shape[1])
    # only pixels with a marked neighbour can be on: interpolate the band around the mask's box
    ra, rb = np.searchsorted(r1, rows[0]), np.searchsorted(r0, rows[-1], side="right")
    ca, cb = np.searchsorted(c1, cols[0]), np.searchsorted(c0, cols[-1], side="right")
    if ra >= rb or ca >= cb:  # shrinking: no sample lands next to the mask
        return out
    top = r0[ra]
    m = mask[top:r1[rb - 1] + 1].astype(np.float32)
    u = u[ca:cb]
    band = m[:, c0[ca:cb]] * (1 - u) + m[:, c1[ca:cb]] * u
    t = t[ra:rb, None]
    out[ra:rb, ca:cb] = band[r0[ra:rb] - top] * (1 - t) + band[r1[ra:rb] - top] * t > 0.5
    return out


@lru_cache(maxsize=8)
def _disk_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) of a disk footprint's pixels other than its centre (the disk is symmetric)."""
    rows, cols = np.nonzero(disk(radius))
    return tuple((int(y) - radius, int(x) - radius) for y, x in zip(rows, cols) if (y, x) != (radius, radius))


def _morph(mask: np.ndarray, offsets: tuple[tuple[int, int], ...], erode: bool) -> np.ndarray:
    """Binary erosion (pixels beyond the edge count as set) or dilation (as unset) by the footprint
    of ``offsets`` and its centre: ndimage's with border_value=1 / 0, by shifted slices, which at
    this size cost a fraction of ndimage's call."""
    out = mask.copy()
    h, w = mask.shape
    for dy, dx in offsets:
        if abs(dy) >= h or abs(dx) >= w:
            continue  # the neighbour is beyond the edge for every pixel
        dst = out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        src = mask[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        if erode:
            dst &= src
        else:
            dst |= src
    return out


def _clean(mask: np.ndarray, radius: int, min_size: int) -> np.ndarray:
    """Opening then closing, then drop components smaller than ``min_size`` pixels.

    A step that would erase all the evidence is skipped: a thin but real explanation is
    better shown than replaced by nothing.
    """
    if radius > 0:
        footprint = _disk_offsets(radius)
        # erosion counts pixels beyond the edge as set: the edge must not erode evidence touching it
        opened = _morph(_morph(mask, footprint, erode=True), footprint, erode=False)
        mask = opened if opened.any() else mask
        mask = _morph(_morph(mask, footprint, erode=False), footprint, erode=True)
    labels, _ = ndi.label(mask, _EIGHT)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= min_size
    if not keep.any():
        keep = sizes == sizes.max()
    keep[0] = False
    return keep[labels]


def _snap(mask: np.ndarray, image: np.ndarray, n_segments: int) -> np.ndarray:
    """Keep each SLIC superpixel more than half inside ``mask`` (else the best-covered one)."""
    image = np.asarray(image)
    if image.shape[:2] != mask.shape:
        image = resize(image, mask.shape + image.shape[2:], order=1, anti_aliasing=True)
    channel_axis = -1 if image.ndim == 3 else None
    segments = slic(image, n_segments=n_segments, start_label=0, channel_axis=channel_axis)
    inside = np.bincount(segments.ravel(), weights=mask.ravel())
    share = inside / np.maximum(np.bincount(segments.ravel()), 1)
    keep = share > 0.5
    if not keep.any():
        keep = share == share.max()
    return keep[segments]


def evidence_mask(relevance: np.ndarray, keep_mass: float = 0.2, *,
                  out_shape: tuple[int, int] | None = None, sigma: float = 1.0,
                  min_size_frac: float = 0.002, slic_image: np.ndarray | None = None,
                  slic_segments: int = 0, morph_radius: int = 1, work_size: int = 128) -> np.ndarray:
    """Boolean evidence mask from an (h, w) relevance map.

    Smooth (``sigma``, 0 = off), keep the smallest set of highest pixels that holds
    ``keep_mass`` of the (smoothed) attribution mass, clean up with opening/closing
    (``morph_radius``, 0 = off) and drop components under ``min_size_frac`` of the area,
    optionally snap to ``slic_segments`` SLIC superpixels of ``slic_image`` (best given at
    the relevance's resolution: it is resized to the working grid), and upsample to
    ``out_shape`` (default: the relevance's shape). All of it runs on a grid of at most
    ``work_size`` a side. Clean-up can trim a little of the kept mass. Zero, negative-only
    or non-finite relevance gives an empty mask.
    """
    shape = tuple(out_shape) if out_shape is not None else np.shape(relevance)
    mask, _ = _work_mask(relevance, keep_mass, sigma, min_size_frac, slic_image, slic_segments,
                         morph_radius, work_size)
    return _upsample_mask(mask, shape)


def evidence_regions(relevance: np.ndarray, keep_mass: float = 0.2,
                     mode: Literal["merged", "components"] = "merged", *,
                     out_shape: tuple[int, int] | None = None, sigma: float = 1.0,
                     min_size_frac: float = 0.002, slic_image: np.ndarray | None = None,
                     slic_segments: int = 0, morph_radius: int = 1,
                     work_size: int = 128) -> list[tuple[np.ndarray, float]]:
    """``mask_regions(evidence_mask(relevance, ...), relevance, mode)`` as served: the regions and
    their shares are cut on the working grid (the shares from the relevance averaged onto it),
    and only each finished region is upsampled to ``out_shape``. The merged mask is the same as
    ``evidence_mask``'s; components are the same up to ones that touch only after upsampling."""
    shape = tuple(out_shape) if out_shape is not None else np.shape(relevance)
    mask, weights = _work_mask(relevance, keep_mass, sigma, min_size_frac, slic_image, slic_segments,
                               morph_radius, work_size)
    return [(_upsample_mask(region, shape), share) for region, share in _regions(mask, weights, mode)]


def _work_mask(relevance: np.ndarray, keep_mass: float, sigma: float, min_size_frac: float,
               slic_image: np.ndarray | None, slic_segments: int, morph_radius: int,
               work_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(evidence mask, non-negative relevance before smoothing), both on the working grid."""
    rel = _nonnegative(relevance)
    factor = -(-max(rel.shape) // work_size)
    if factor > 1:
        rel = _block_mean(rel, factor)
    smooth = _gaussian(rel, sigma) if sigma > 0 and rel.any() else rel
    mask = _top_mass(smooth, keep_mass)
    if not mask.any():
        return mask, rel
    mask = _clean(mask, morph_radius, max(1, int(np.ceil(min_size_frac * mask.size))))
    if slic_segments > 0 and slic_image is not None:
        mask = _snap(mask, slic_image, slic_segments)
    return mask, rel


def mask_regions(mask: np.ndarray, relevance: np.ndarray | None = None,
                 mode: Literal["merged", "components"] = "merged") -> list[tuple[np.ndarray, float]]:
    """Evidence regions with their share in [0, 1] of the attribution mass.

    ``merged`` gives the mask itself; ``components`` one mask per 8-connected component,
    highest share first. Without ``relevance`` the share is of the mask's area instead.
    """
    mask = np.asarray(mask, dtype=bool)
    weights = None if relevance is None else _resize_nearest(_nonnegative(relevance), mask.shape)
    return _regions(mask, weights, mode)


def _regions(mask: np.ndarray, weights: np.ndarray | None,
             mode: Literal["merged", "components"]) -> list[tuple[np.ndarray, float]]:
    if mode not in ("merged", "components"):
        raise ValueError(f"mode must be 'merged' or 'components', not {mode!r}")
    if not mask.any():
        return []
    if weights is None:
        weights = mask.astype(np.float32)
    total = float(weights.sum(dtype=np.float64))
    if mode == "merged":
        share = float(weights[mask].sum(dtype=np.float64)) / total if total > 0 else 0.0
        return [(mask, min(share, 1.0))]
    labels, n = ndi.label(mask, _EIGHT)
    mass = np.bincount(labels.ravel(), weights=weights.ravel(), minlength=n + 1)
    shares = mass / total if total > 0 else np.zeros_like(mass)
    order = sorted(range(1, n + 1), key=lambda i: -shares[i])
    return [(labels == i, float(min(shares[i], 1.0))) for i in order]


def token_spans(relevance: np.ndarray, tokens: Sequence[Token], keep_mass: float = 0.2,
                text: str | None = None) -> list[tuple[int, int, float]]:
    """(start, end, share) character spans of the tokens holding ``keep_mass`` of the mass.

    Selected tokens next to each other (only whitespace between them in ``text``; without
    ``text``, consecutive tokens of ``tokenize``, which are) merge into one span. Entries of
    ``relevance`` past the tokens (padding) are ignored, as are tokens past a truncation.
    """
    n = min(len(tokens), int(np.size(relevance)))
    rel = _nonnegative(np.ravel(relevance)[:n])
    total = float(rel.sum(dtype=np.float64))
    if n == 0 or not total > 0:
        return []
    chosen = np.flatnonzero(_top_mass(rel, keep_mass))
    spans: list[list[float]] = []
    previous = -2
    for i in chosen:
        tok = tokens[i]
        adjacent = i == previous + 1 and (text is None or not text[tokens[previous].end:tok.start].strip())
        if adjacent:
            spans[-1][1] = tok.end
            spans[-1][2] += float(rel[i])
        else:
            spans.append([tok.start, tok.end, float(rel[i])])
        previous = i
    return [(int(s), int(e), min(m / total, 1.0)) for s, e, m in spans]
