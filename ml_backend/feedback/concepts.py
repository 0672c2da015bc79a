"""Image corrections generalise by what was marked, not only where (ProtoPDebug's idea, for any kind).

An Irrelevant mark defines a concept. Six rules carry a concept from the corrected tasks to every
labelled task:

- ``position``: pixels marked on at least half of the corrected tasks (a tag printed at the same
  place on every scan).
- ``place``: content (pixels away from the image's border colour) in the places, each marked
  region's bounding box or its mirror image, where marks recur on at least two corrected tasks: a
  tag printed in one of a few slots (a corner, an edge), whatever its shape, so one class's tag
  carries to every class's.
- ``background``: a marked region larger than a quarter of the image is matched as "pixels close
  to the image's own border colour", the husky's snow in every image whatever its shade.
- ``flat``: flat patches of content (every 3x3 neighbourhood within ``FLAT_TOLERANCE``, grown by
  a pixel, away from the border colour; the tolerance scales with the image's own spread, so a
  backbone's normalised input reads as the image does) whose area is within a factor of two of the marked
  regions': a sticker, a swatch or a redaction box of any shade, shape and place. Strokes, photos and
  textures are never that flat.
- ``template``: each marked region, cut out with a one-pixel margin, is matched anywhere in every
  image by normalised cross-correlation. NCC ignores gain and offset, so a swatch, stripe or stamp
  whose shade follows the class still matches in every class, wherever it sits.
- ``feature``: the concept in the model's own feature space (``ModelKind.region_features``): a
  place counts as marked where its representation is nearer the marked regions' than anything the
  annotators left unmarked, at any place and scale: a texture or a pattern by what it is to the
  model, not by its pixels.

A rule is used only if it predicts the annotators' own marks: each corrected task is predicted from
the others' marks (leave one out), and a rule whose predicted pixels are not mostly marked ones
(``min_precision``), or that marks more than ``MAX_SPILL`` of what the annotators left unmarked, is
dropped. A rule that would spread marks onto the object, and so teach the model to ignore it,
never runs. Rules are tried simplest first, and one joins only if it finds marks the ones before it
miss: a few corrected tasks cannot show every look-alike of a template, so a template is not
trusted where a position already explains the marks (and once the rules taken find all but
``MIN_GAIN`` of the marks, the rest are not tried: the feature rule is the costly one). A rule
matches every labelled task only once it has joined. With fewer than two corrected tasks nothing
generalises. A task's Relevant pixels are never marked Irrelevant.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ml_backend.data.frame import LARGE_REGION

# simplest first; a rule joins only if it finds more
RULES = ("position", "place", "background", "template", "flat", "feature")
MAX_SPILL = 0.15  # share of the unmarked pixels of the corrected tasks a rule may mark (leave one out)
MIN_GAIN = 0.05  # share of the marked pixels a rule must add to those the rules before it find
WORK_SIDE = 64  # matching runs on images at most this big: marks are coarse, NCC is quadratic in size
MAX_TEMPLATES = 48
FLAT_TOLERANCE = 0.1  # flat rule: largest spread of a 3x3 neighbourhood, in units of the image's own deviation
THRESHOLDS = (0.8, 0.85, 0.9, 0.95)  # NCC; each template takes the loosest that validates
PROTOTYPES = 12  # feature rule: cluster centres of each corrected task's marked cells, and of its unmarked ones
MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3)  # feature rule: how much nearer a marked centre than an unmarked one
FEATURE_BATCH = 128
STATISTICS_TASKS = 64  # feature rule: tasks drawn at random for the channels' mean and spread

# task indices -> the model's representation of every place of those tasks, (n, D, h, w) (``ModelKind.region_features``)
RegionFeatures = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Generalised:
    """Marks after generalisation; ``added`` (N,) flags tasks that had no Irrelevant mark of their own."""

    irrelevant: torch.Tensor
    added: torch.Tensor
    rules: dict[str, float] = field(default_factory=dict)  # rule -> leave-one-out precision, for rules used
    rejected: dict[str, float] = field(default_factory=dict)  # rule -> precision, for rules dropped
    pixels: int = 0  # pixels marked beyond the annotators' own marks


@dataclass
class _Template:
    weight: torch.Tensor  # (C, h, w) zero-mean, unit-norm
    mask: torch.Tensor  # (h, w) bool: the marked pixels inside the window
    source: int  # corrected task it came from


def generalise_marks(x: torch.Tensor, irrelevant: torch.Tensor, relevant: torch.Tensor, *,
                     min_precision: float = 0.85, features: Optional[RegionFeatures] = None,
                     rules: Sequence[str] = RULES) -> Generalised:
    """Own Irrelevant marks plus the concept matches that pass leave-one-out validation.

    ``x`` (N, C, H, W) float images at the masks' resolution; masks (N, H, W) bool. ``features``
    gives the model's representation of the tasks (the ``feature`` rule; without it, pixels only).
    """
    if x.dim() != 4 or irrelevant.shape != (x.shape[0], *x.shape[2:]) or relevant.shape != irrelevant.shape:
        raise ValueError(f"x must be (N, C, H, W) with masks (N, H, W); got {tuple(x.shape)}, "
                         f"{tuple(irrelevant.shape)}, {tuple(relevant.shape)}")
    own = irrelevant.flatten(1).any(dim=1)
    corrected = torch.nonzero(own).flatten()
    out = Generalised(irrelevant, torch.zeros_like(own))
    if len(corrected) < 2:
        return out
    work, factor = _working(x.float())
    marks = _shrink(irrelevant, factor)
    truth = marks[corrected]
    held = torch.zeros_like(truth)  # what the rules taken so far predict on the corrected tasks
    matched = torch.zeros((x.shape[0], *work.shape[2:]), dtype=torch.bool)
    for rule in rules:
        if 1 - _recall(held, truth) < MIN_GAIN:
            break  # the rules so far explain the marks: no later rule could join
        if rule == "feature":
            if features is None:
                continue
            everywhere, predicted = _feature_rule(features, work, marks, corrected, min_precision)
        else:
            everywhere, predicted = _RULES[rule](work, marks, corrected, min_precision)
        precision = _precision(predicted, truth)
        if precision is None:
            continue
        if precision < min_precision or _spill(predicted, truth) > MAX_SPILL:
            out.rejected[rule] = precision
            continue
        merged = held | predicted
        if _recall(merged, truth) - _recall(held, truth) < MIN_GAIN:
            continue  # the simpler rules before it already explain these marks
        held = merged
        out.rules[rule] = precision
        matched |= everywhere()  # only now: matching every labelled task is a rule's costly part
    if not out.rules:
        return out
    spread = _grow(matched, factor, irrelevant.shape[1:]) & ~relevant
    marks_out = irrelevant | spread
    out.irrelevant = marks_out
    out.added = marks_out.flatten(1).any(dim=1) & ~own
    out.pixels = int((marks_out & ~irrelevant).sum())
    return out


# ----------------------------------------------------------------------------- rules
# Each rule: (work images, work marks, corrected task indices, min precision) -> (a call giving its
# marks on every task, predicted marks on each corrected task from the other corrected tasks alone).

Everywhere = Callable[[], torch.Tensor]

def _template_rule(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor, min_precision: float
                   ) -> tuple[Everywhere, torch.Tensor]:
    """Regions matching a marked region's template. Each template takes the threshold at which it
    finds the other corrected tasks' marks with ``min_precision`` (``_calibrate``); templates join
    the rule, most precise first, only while their union keeps that precision."""
    padded_sources = _pad(work[sources])
    truth = marks[sources]
    candidates = []
    for t in _templates(work, marks, sources):
        others = sources != t.source
        if not others.any():
            continue
        found = _calibrate(t, padded_sources, truth, others, min_precision)
        if found is not None:
            candidates.append((t, *found))
    union = torch.zeros_like(truth)
    chosen = []
    for t, threshold, _, predicted in sorted(candidates, key=lambda c: -c[2]):
        merged = union | predicted
        hit, total = int((merged & truth).sum()), int(merged.sum())
        if total and hit >= min_precision * total:
            union = merged
            chosen.append((t, threshold))

    def everywhere() -> torch.Tensor:
        out = torch.zeros((work.shape[0], *work.shape[2:]), dtype=torch.bool)
        if chosen:
            padded = _pad(work)
            for t, threshold in chosen:
                out |= _paint(padded, t, threshold)
        return out

    return everywhere, union


def _paint(padded: torch.Tensor, t: "_Template", threshold: float, reach: Optional[torch.Tensor] = None
           ) -> torch.Tensor:
    """(M, H, W) bool: the template's marked pixels wherever its window matches."""
    return (_reach(padded, t) if reach is None else reach) >= threshold


def _reach(padded: torch.Tensor, t: "_Template") -> torch.Tensor:
    """(M, H, W): per pixel, the best match of the template's windows whose marked pixels cover
    it; thresholding it paints the matches. A max over the mask's offsets: one pass serves every
    threshold, where painting each by transposed convolution cost 60-80 ms per threshold and 800 tasks."""
    ncc = _ncc(padded, t.weight.unsqueeze(0))[:, 0]  # (M, H', W') top-left corners
    rows, cols = ncc.shape[1:]
    out = torch.full((ncc.shape[0], rows + t.mask.shape[0] - 1, cols + t.mask.shape[1] - 1), -float("inf"),
                     dtype=ncc.dtype)
    for dy, dx in torch.nonzero(t.mask).tolist():
        window = out[:, dy:dy + rows, dx:dx + cols]
        torch.maximum(window, ncc, out=window)
    return out[:, 1:-1, 1:-1]  # without the one-pixel margin


def _calibrate(t: "_Template", padded: torch.Tensor, marks: torch.Tensor, others: torch.Tensor,
               min_precision: float) -> Optional[tuple[float, float, torch.Tensor]]:
    """(threshold, precision, predicted marks on the corrected tasks but its own) or None.

    Of the thresholds at which the template finds the other tasks' marks precisely, the strictest
    that keeps 80% of the loosest one's recall: a few validation tasks cannot show every look-alike,
    so the margin goes to precision."""
    reach = _reach(padded, t)
    valid = []
    for threshold in THRESHOLDS:
        predicted = _paint(padded, t, threshold, reach) & others[:, None, None]
        total, hit = int(predicted.sum()), int((predicted & marks).sum())
        if total and hit >= min_precision * total:
            valid.append((threshold, hit / total, predicted, hit))
    if not valid:
        return None
    best_recall = max(v[3] for v in valid)
    threshold, precision, predicted, _ = max((v for v in valid if v[3] >= 0.8 * best_recall), key=lambda v: v[0])
    return threshold, precision, predicted


def _feature_rule(features: RegionFeatures, work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor,
                  min_precision: float) -> tuple[Everywhere, torch.Tensor]:
    """Places whose representation in the model's own features is nearer a marked region's than
    anything the annotators left unmarked, at any place and scale: a texture, a stamp or a
    background by what it is to the model, not by its pixels.

    Each corrected task gives cluster centres of its marked cells and of its unmarked ones
    (features standardised over the corrected tasks, then unit length). A cell's score is its
    cosine to the nearest marked centre less that to the nearest unmarked one; the margin it must
    clear is calibrated leave one out, as the templates' thresholds are."""
    size = tuple(work.shape[2:])
    source_maps = _batched(features, sources)
    # channel statistics over tasks of every kind, not only the corrected ones: corrections from one
    # class would make that class's own channels look informative everywhere else
    sample = _stable_sample(work, sources, STATISTICS_TASKS)
    pooled = torch.cat([source_maps, _batched(features, sample)]) if len(sample) else source_maps
    mean = pooled.mean(dim=(0, 2, 3), keepdim=True)
    scale = pooled.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    units = _unit(source_maps, mean, scale)  # (k, D, h, w)
    grid = tuple(units.shape[2:])
    share = _on_grid(marks[sources].float(), grid)  # (k, h, w) marked share of each cell
    centres = [(_centres(u.flatten(1).T[(m >= 0.5).flatten()]), _centres(u.flatten(1).T[(m == 0).flatten()]))
               for u, m in zip(units, share)]
    truth = marks[sources]
    empty = torch.zeros((len(sources), *size), dtype=torch.bool)
    scores = []
    for k in range(len(sources)):  # each corrected task scored by the others' centres
        marked = torch.cat([c[0] for j, c in enumerate(centres) if j != k])
        unmarked = torch.cat([c[1] for j, c in enumerate(centres) if j != k])
        scores.append(_score(units[k:k + 1], marked, unmarked, size)[0] if len(marked) and len(unmarked)
                      else torch.full(size, -float("inf")))
    held_scores = torch.stack(scores)
    valid = []
    for margin in MARGINS:
        predicted = held_scores > margin
        total, hit = int(predicted.sum()), int((predicted & truth).sum())
        if total and hit >= min_precision * total and _spill(predicted, truth) <= MAX_SPILL:
            valid.append((margin, hit))
    if not valid:
        return lambda: torch.zeros((work.shape[0], *size), dtype=torch.bool), empty
    best = max(hit for _, hit in valid)
    margin = min(m for m, hit in valid if hit >= 0.8 * best)  # as in _calibrate: the margin goes to precision
    marked = torch.cat([c[0] for c in centres])
    unmarked = torch.cat([c[1] for c in centres])

    def everywhere() -> torch.Tensor:
        return torch.cat([_score(_unit(_batched(features, chunk), mean, scale), marked, unmarked, size) > margin
                          for chunk in torch.arange(work.shape[0]).split(FEATURE_BATCH)])

    return everywhere, held_scores > margin


def _stable_sample(work: torch.Tensor, exclude: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` task indices outside ``exclude``, those whose content hashes lowest: random-like,
    and the same as the project grows (a new task enters with probability n / N), so the next
    version's marks, and the counterexample copies the feature cache holds, stay the same."""
    others = np.setdiff1d(np.arange(work.shape[0]), exclude.numpy())
    if len(others) <= n:
        return torch.from_numpy(others)
    thumbs = F.adaptive_avg_pool2d(work[others].float(), 8).mul(1000).round().to(torch.int32).numpy()
    hashes = [hashlib.blake2b(t.tobytes(), digest_size=8).digest() for t in thumbs]
    return torch.from_numpy(others[sorted(range(len(others)), key=hashes.__getitem__)[:n]])


def _batched(features: RegionFeatures, indices: torch.Tensor) -> torch.Tensor:
    return torch.cat([features(chunk).float().cpu() for chunk in indices.split(FEATURE_BATCH)])


def _unit(maps: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.normalize((maps - mean) / scale, dim=1)


def _on_grid(masks: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(k, h, w) share of each grid cell's pixels that the (k, H, W) masks cover."""
    if masks.shape[1] >= grid[0] and masks.shape[2] >= grid[1]:
        return F.adaptive_avg_pool2d(masks.unsqueeze(1), grid)[:, 0]
    return F.interpolate(masks.unsqueeze(1), size=grid, mode="bilinear", align_corners=False)[:, 0]


def _centres(vectors: torch.Tensor, n: int = PROTOTYPES, iterations: int = 8) -> torch.Tensor:
    """Up to ``n`` unit cluster centres of unit ``vectors`` (spherical k-means from spread-out seeds)."""
    if len(vectors) <= n:
        return vectors
    centres = vectors[torch.linspace(0, len(vectors) - 1, n).long()]
    for _ in range(iterations):
        nearest = (vectors @ centres.T).argmax(dim=1)
        summed = torch.zeros_like(centres).index_add_(0, nearest, vectors)
        centres = torch.where(summed.norm(dim=1, keepdim=True) > 0, F.normalize(summed, dim=1), centres)
    return centres


def _score(units: torch.Tensor, marked: torch.Tensor, unmarked: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(n, H, W): nearest marked centre's cosine less nearest unmarked one's, at the masks' size."""
    cells = units.permute(0, 2, 3, 1)  # (n, h, w, D)
    score = (cells @ marked.T).amax(dim=-1) - (cells @ unmarked.T).amax(dim=-1)
    return F.interpolate(score.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def _background_marks(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """Pixels near their image's border colour, as near as the marked backgrounds are."""
    out = torch.zeros((len(targets), *work.shape[2:]), dtype=torch.bool)
    area = marks[0].numel()
    large = [int(i) for i in sources if marks[i].sum() > LARGE_REGION * area]
    if not large:
        return out
    # how far from its border colour a marked background pixel strays, over the corrected tasks
    distances = torch.cat([_border_distance(work[i:i + 1])[0][marks[i]] for i in large])
    tolerance = float(torch.quantile(distances, 0.95)) + 1e-3
    return _border_distance(work[targets]) <= tolerance


def _position_marks(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Pixels marked on at least half of the corrected tasks (backgrounds left out: they move with
    the object)."""
    area = marks[0].numel()
    small = [int(i) for i in sources if marks[i].sum() <= LARGE_REGION * area]
    count = marks[small].sum(dim=0) if small else torch.zeros_like(marks[0], dtype=torch.long)
    recurring = count >= max(1, int(np.ceil(0.5 * len(sources))))
    return recurring.unsqueeze(0).expand(len(targets), -1, -1).clone()


def _place_rule(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor, min_precision: float
                ) -> tuple[Everywhere, torch.Tensor]:
    """Pixels of content inside the places (marked regions' bounding boxes, one pixel wider, and
    their mirror images) that at least two corrected tasks share. Content: further from the image's
    border colour than half the marked pixels' median distance, so a slot's empty background stays
    unmarked. Each task's boxes are counted once and left out by subtraction: one-click
    corrections mark hundreds of tasks, and recounting per left-out task was quadratic."""
    area = marks[0].numel()
    small = [int(i) for i in sources if 0 < marks[i].sum() <= LARGE_REGION * area]
    boxes = {i: _boxes(marks[i]) for i in small}
    distances = {i: _border_distance(work[i:i + 1])[0][marks[i]] for i in small}
    total = sum(boxes.values(), torch.zeros(marks.shape[1:], dtype=torch.long))

    def predict(left_out: Optional[int], targets: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((len(targets), *work.shape[2:]), dtype=torch.bool)
        kept = [i for i in small if i != left_out]
        slots = (total - boxes[left_out] if left_out in boxes else total) >= 2
        if len(kept) < 2 or not slots.any():
            return out
        floor = 0.5 * float(torch.cat([distances[i] for i in kept]).median())
        if floor <= 0:
            return out
        return slots & (_border_distance(work[targets]) > floor)

    held = torch.stack([predict(int(k), sources[j:j + 1])[0] for j, k in enumerate(sources)])
    return lambda: predict(None, torch.arange(work.shape[0])), held


def _flat_rule(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor, min_precision: float
               ) -> tuple[Everywhere, torch.Tensor]:
    """Flat patches of content the size of the marked regions (module docstring). Each corrected
    task's region sizes are read once and a left-out task's dropped from the extremes: one-click
    corrections mark hundreds of tasks, and re-reading the others per left-out task is quadratic."""
    area = marks[0].numel()
    extremes = {}  # corrected task -> (smallest, largest) marked region, in pixels
    for i in sources.tolist():
        if 0 < int(marks[i].sum()) <= LARGE_REGION * area:
            counts = np.bincount(ndimage.label(marks[i].numpy())[0].ravel())[1:]
            extremes[i] = (int(counts.min()), int(counts.max()))
    by_low = sorted(extremes, key=lambda i: extremes[i][0])[:2]
    by_high = sorted(extremes, key=lambda i: -extremes[i][1])[:2]

    def bounds(left_out: Optional[int]) -> Optional[tuple[float, float]]:
        if len(extremes) - (left_out in extremes) < 2:
            return None
        low = extremes[next(i for i in by_low if i != left_out)][0]
        high = extremes[next(i for i in by_high if i != left_out)][1]
        return low / 2, 2 * high

    def predict(targets: torch.Tensor, size_bounds: Optional[tuple[float, float]]) -> torch.Tensor:
        out = torch.zeros((len(targets), *work.shape[2:]), dtype=torch.bool)
        if size_bounds is None:
            return out
        for j, patch in enumerate(_flat_patches(work[targets]).numpy()):
            if patch.any():
                labels, _ = ndimage.label(patch)
                counts = np.bincount(labels.ravel())
                keep = (counts >= size_bounds[0]) & (counts <= size_bounds[1])
                keep[0] = False
                out[j] = torch.from_numpy(keep[labels])
        return out

    held = torch.cat([predict(sources[k:k + 1], bounds(int(i))) for k, i in enumerate(sources.tolist())])
    chunks = torch.arange(work.shape[0]).split(FEATURE_BATCH)
    return lambda: torch.cat([predict(chunk, bounds(None)) for chunk in chunks]), held


def _flat_patches(images: torch.Tensor) -> torch.Tensor:
    """(M, H, W) bool: pixels of a flat 3x3 window that are content (not the border colour, any shade).
    2x2 windows found the smallest disks too, and 3-4% of the strokes."""
    spread = (F.max_pool2d(images, 3, 1, 1) + F.max_pool2d(-images, 3, 1, 1)).amax(dim=1)  # 3x3 max - min
    tolerance = FLAT_TOLERANCE * images.flatten(2).std(dim=2).mean(dim=1).clamp_min(1e-6)[:, None, None]
    content = _border_distance(images) > 2 * tolerance
    return (F.max_pool2d((spread <= tolerance).float().unsqueeze(1), 3, 1, 1)[:, 0] > 0) & content


def _boxes(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) long: 1 inside each connected region's bounding box grown by a pixel, and inside its
    mirror images: a tag in one corner, or a mark down one edge, has the same role in the others."""
    out = torch.zeros(mask.shape, dtype=torch.long)
    labels, _ = ndimage.label(mask.numpy())
    height, width = mask.shape
    for rows, cols in ndimage.find_objects(labels):
        out[max(rows.start - 1, 0):min(rows.stop + 1, height), max(cols.start - 1, 0):min(cols.stop + 1, width)] = 1
    return out | out.flip(0) | out.flip(1) | out.flip(0, 1)


def _left_out(marks_for):
    """A rule from a marker: validated by predicting each corrected task from the others."""
    def rule(work: torch.Tensor, marks: torch.Tensor, corrected: torch.Tensor, min_precision: float
             ) -> tuple[Everywhere, torch.Tensor]:
        held = torch.stack([marks_for(work, marks, torch.cat([corrected[:k], corrected[k + 1:]]),
                                      corrected[k:k + 1])[0] for k in range(len(corrected))])
        return lambda: marks_for(work, marks, corrected, torch.arange(work.shape[0])), held
    return rule


_RULES = {"template": _template_rule, "background": _left_out(_background_marks),
          "position": _left_out(_position_marks), "place": _place_rule, "flat": _flat_rule}


# ----------------------------------------------------------------------------- helpers

def _precision(predicted: torch.Tensor, truth: torch.Tensor) -> Optional[float]:
    total = int(predicted.sum())
    return None if total == 0 else int((predicted & truth).sum()) / total


def _spill(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the pixels the annotators left unmarked that ``predicted`` marks: where a marked
    background fills most of the image, precision alone would pass a rule that marks the object."""
    return int((predicted & ~truth).sum()) / max(int((~truth).sum()), 1)


def _recall(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return int((predicted & truth).sum()) / max(int(truth.sum()), 1)


def _working(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    factor = max(1, int(np.ceil(max(x.shape[2:]) / WORK_SIDE)))
    return (F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x), factor


def _shrink(mask: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return mask.clone()
    return F.avg_pool2d(mask.float().unsqueeze(1), factor, ceil_mode=True).squeeze(1) > 0.5


def _grow(mask: torch.Tensor, factor: int, shape: tuple[int, ...]) -> torch.Tensor:
    if factor == 1:
        return mask
    grown = mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return grown[:, :shape[0], :shape[1]]


def border_colour(images: torch.Tensor) -> torch.Tensor:
    """(M, C) per-channel median of each image's outermost pixels: its background colour."""
    top, bottom = images[:, :, 0, :], images[:, :, -1, :]
    left, right = images[:, :, :, 0], images[:, :, :, -1]
    return torch.cat([top, bottom, left, right], dim=2).median(dim=2).values


def _border_distance(images: torch.Tensor) -> torch.Tensor:
    """(M, H, W) largest per-channel distance of each pixel from its image's border colour."""
    return (images - border_colour(images)[:, :, None, None]).abs().amax(dim=1)


def _pad(images: torch.Tensor) -> torch.Tensor:
    """One pixel of the image's border colour around it: a region at the edge keeps its margin."""
    colour = border_colour(images)[:, :, None, None]
    padded = colour.expand(-1, -1, images.shape[2] + 2, images.shape[3] + 2).clone()
    padded[:, :, 1:-1, 1:-1] = images
    return padded


def _templates(work: torch.Tensor, marks: torch.Tensor, sources: torch.Tensor) -> list[_Template]:
    """Each marked region with a one-pixel margin, normalised; flat and duplicate ones dropped."""
    area = marks[0].numel()
    out: list[_Template] = []
    for i in sources.tolist():
        padded = _pad(work[i:i + 1])[0]
        labels, n = ndimage.label(marks[i].numpy())
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            region = torch.from_numpy(labels[box] == k)
            if region.sum() > LARGE_REGION * area:
                continue  # a background: the background rule's case
            r0, r1, c0, c1 = box[0].start, box[0].stop + 2, box[1].start, box[1].stop + 2
            window = padded[:, r0:r1, c0:c1]
            centred = window - window.mean()
            norm = centred.norm()
            if norm < 1e-3 * np.sqrt(window.numel()):
                continue  # flat: matches nothing in particular
            mask = torch.zeros(window.shape[1:], dtype=torch.bool)
            mask[1:-1, 1:-1] = region
            weight = centred / norm
            if any(t.mask.shape == mask.shape and float((t.weight * weight).sum()) > 0.98 for t in out):
                continue  # the same concept again (another shade of it, say)
            out.append(_Template(weight, mask, i))
            if len(out) >= MAX_TEMPLATES:
                return out
    return out


def _ncc(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(M, K, H', W') normalised cross-correlation of each window with each template."""
    _, c, h, w = weight.shape
    n = c * h * w
    dot = F.conv2d(images, weight)
    ones = torch.ones((1, c, h, w), dtype=images.dtype)
    total = F.conv2d(images, ones)
    total_sq = F.conv2d(images * images, ones)
    spread = (total_sq - total * total / n).clamp_min(0).sqrt()
    return torch.where(spread > 1e-3 * np.sqrt(n), dot / spread.clamp_min(1e-12), torch.zeros_like(dot))
