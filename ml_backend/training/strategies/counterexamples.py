"""CAIPI counterexamples: copies of an example whose irrelevant part is replaced, label unchanged.

If the model still predicts the label when the marked region holds another task's pixels, noise
or a blur, it has learned not to rely on that region. Substituted pixels come from tasks of other
classes where there are any: a confounder is by definition correlated with the class, so
same-class donors would hand the copy the very shortcut it is meant to break.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.data.text import marked_spans, replace_marked_ids
from ml_backend.feedback.concepts import LARGE_REGION, border_colour
from ml_backend.models.base import ModelKind
from ml_backend.training.sets import TrainingSet
from ml_backend.training.strategies import Strategy

FILLS = ("randomize", "substitute", "blur")
DONOR_POOL = 1024  # examples a substitute fill draws its donors from
DONORS = 16  # an example's donors, of other classes where it can
# where a donor's background is read from where its object sits, as fractions of the side (y, x)
BACKGROUND_SHIFTS = ((0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5), (0.25, 0), (0, 0.25), (0.25, 0.25), (0.75, 0),
                     (0, 0.75), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25))
PATCH_MIN_CHANGE = 0.1  # a patch fill that moves the region by less (units of the image's deviation) erases it


def image_counterexamples(
    x: torch.Tensor,
    irrelevant: torch.Tensor,
    c: int,
    fill: str = "randomize",
    donors: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    donor_rows: Optional[torch.Tensor] = None,
    donor_masks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(c, C, H, W) copies of x (C, H, W) with the pixels under ``irrelevant`` (H, W) replaced.

    substitute: the pixels of a random donor (M, C, H, W), per copy (randomize when there is
    none); a region over a quarter of the image (a background) gets the donor's background colour
    instead (the median of its outermost pixels), since the donor's pixels there would paste the
    donor's object, of another class, into the copy; randomize: uniform values within each
    channel's range in x;
    blur: a heavy box blur of x (every copy the same). ``donor_rows``: draw from these rows of
    ``donors`` only (a whole set's images can be passed without copying a donor pool out of it).
    ``donor_masks`` (M, H, W): the donors' own Irrelevant marks; a background then gets the
    donor's background content (``background_content``: a pattern for a pattern), not its colour,
    and a small region the donor's marked content (``patch_fill``: a patch for a patch).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (C, H, W), got shape {tuple(x.shape)}")
    if irrelevant.shape != x.shape[1:]:
        raise ValueError(f"irrelevant mask must be {tuple(x.shape[1:])}, got {tuple(irrelevant.shape)}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    if c < 0:
        raise ValueError("c must be >= 0")
    if donors is not None and (donors.dim() != 4 or donors.shape[1:] != x.shape):
        raise ValueError(f"donors must be (M, {', '.join(map(str, x.shape))}), got {tuple(donors.shape)}")
    mask = irrelevant.to(device=x.device, dtype=torch.bool)
    copies = x.unsqueeze(0).repeat(c, 1, 1, 1)
    if c == 0 or not mask.any():
        return copies
    if donors is not None and donor_rows is None:
        donor_rows = torch.arange(donors.shape[0])
    if fill == "substitute" and donors is not None and len(donor_rows) > 0:
        picks = donor_rows[torch.randint(len(donor_rows), (c,), generator=generator,
                                         device=_gen_device(generator)).cpu()]
        replacement = donors[picks.to(donors.device)].to(device=x.device, dtype=x.dtype)
        if mask.float().mean() > LARGE_REGION:
            colour = border_colour(replacement.float())[:, :, None, None]
            content = None
            if donor_masks is not None:
                marks = donor_masks[picks.to(donor_masks.device)].to(device=x.device, dtype=torch.bool)
                content = torch.stack([background_content(d, m, c[:, 0, 0])
                                       for d, m, c in zip(replacement, marks, colour)])
            return background_fill(copies, mask, colour, content)
        if donor_masks is not None:
            marks = donor_masks[picks.to(donor_masks.device)].to(device=x.device, dtype=torch.bool)
            tolerance = PATCH_MIN_CHANGE * float(x.float().std())
            background = (x.float() - border_colour(x[None].float())[0][:, None, None]).abs().amax(dim=0) <= tolerance
            erased = torch.where(mask, replacement, copies)
            return torch.stack([patch_fill(x, mask, donor, mark, gone, background, tolerance)
                                for donor, mark, gone in zip(replacement, marks, erased)])
    elif fill == "blur":
        replacement = _box_blur(x).unsqueeze(0).expand_as(copies)
    else:
        replacement = _uniform_like(x, c, generator)
    return torch.where(mask, replacement, copies)


def text_counterexamples(
    ids: torch.Tensor,
    irrelevant: torch.Tensor,
    c: int,
    n_buckets: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(c, L) copies of ids (L,) with marked non-padding tokens replaced by other random ids in [1, n_buckets)."""
    if ids.dim() != 1 or irrelevant.shape != ids.shape:
        raise ValueError(f"ids and irrelevant must both be (L,), got {tuple(ids.shape)} and {tuple(irrelevant.shape)}")
    if n_buckets < 3:
        raise ValueError("n_buckets must be >= 3 so that a token has another id to become")
    return replace_marked_ids(ids, irrelevant, c, 1, n_buckets, generator)


def feather_width(height: int, width: int) -> int:
    """How many pixels a background blends into the object at its edge. Images reach a model
    resized, mostly up from a smaller source, and each source pixel's edge spreads over the
    upsampling factor; a side under 56 px is taken as not upsampled (no feather)."""
    return max(height, width) // 56


def background_content(donor: torch.Tensor, marks: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """(C, H, W): the donor's background over the whole frame. Its marked pixels where it has them;
    where its object sits, its marked pixels from shifted places (a texture goes on, a shade stays);
    ``colour`` (C,) where no shift reaches. A donor whose marks are no background gives its colour."""
    out = colour[:, None, None].expand_as(donor).clone()
    if marks.float().mean() <= LARGE_REGION:
        return out
    height, width = marks.shape
    have = torch.zeros_like(marks)
    for fy, fx in BACKGROUND_SHIFTS:
        shift = (int(fy * height), int(fx * width))
        take = torch.roll(marks, shift, (0, 1)) & ~have
        out = torch.where(take, torch.roll(donor, shift, (1, 2)), out)
        have |= take
        if bool(have.all()):
            break
    return out


def patch_fill(x: torch.Tensor, mask: torch.Tensor, donor: torch.Tensor, donor_mark: torch.Tensor,
               erased: torch.Tensor, background: torch.Tensor, tolerance: float) -> torch.Tensor:
    """x (C, H, W) with its small marked region turned into the donor's mark: "a patch for a patch".

    The donor's marked box is scaled onto the box of ``mask``. Where the scaled donor mark falls on
    the mask, or on ``background`` around it inside the box (pixels within ``tolerance`` of the
    border colour), the pixel
    takes the donor's; the rest of the mask is erased (``erased``: x with the mask taken from the
    donor's same place). So a mark in one class's shade becomes one in another's, and a glyph
    becomes another class's glyph, in place and at its own size.

    A copy whose mark is only erased teaches "no mark: read the object", and the model still reads
    the class from every mark it meets; another class's mark, label unchanged, teaches that the
    mark says nothing. ``erased`` is the answer where the donor has no small mark, or where its
    mark would move the region by no more than ``tolerance``."""
    area = donor_mark.sum()
    if area == 0 or area > LARGE_REGION * donor_mark.numel():
        return erased
    (y0, y1), (x0, x1) = _box(mask)
    (v0, v1), (u0, u1) = _box(donor_mark)
    rows = v0 + ((torch.arange(y1 - y0 + 1, device=x.device) + 0.5) * (v1 - v0 + 1) / (y1 - y0 + 1)).long()
    cols = u0 + ((torch.arange(x1 - x0 + 1, device=x.device) + 0.5) * (u1 - u0 + 1) / (x1 - x0 + 1)).long()
    rows, cols = rows.clamp(max=v1), cols.clamp(max=u1)
    box = (slice(None), slice(y0, y1 + 1), slice(x0, x1 + 1))
    region = mask[box[1:]] | background[box[1:]]
    theirs = donor_mark[rows][:, cols] & region
    patch = torch.where(theirs, donor[:, rows][:, :, cols], erased[box])
    if (patch.float() - x[box].float()).abs().amax(dim=0)[region].mean() <= tolerance:
        return erased
    out = x.clone()
    out[box] = patch
    return out


def _box(mask: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a non-empty (H, W) mask, inclusive."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return (int(ys.min()), int(ys.max())), (int(xs.min()), int(xs.max()))


def background_fill(copies: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor,
                    content: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(c, C, H, W) copies with the background under ``mask`` (H, W) turned to ``content`` (c, C, H, W;
    another background), or to ``colour`` (c, C, 1, 1) if none.

    Inside the mask the fill replaces the pixels (a patterned background's content goes too).
    Around it, where the resize blended the old background into the object's edge, the pixels move
    by the colour change in proportion to the feathered mask: a hard edge would leave a rim of the
    old background's shade around every object, and that rim still follows the class (on a
    frozen ResNet at 112 px it cost 8 points of the background's 0.6 gap)."""
    colour = colour.to(copies.dtype) if copies.is_floating_point() else colour
    fill = colour.expand_as(copies) if content is None else content.to(copies.dtype)
    radius = feather_width(*mask.shape[-2:])
    if radius == 0 or not copies.is_floating_point():
        return torch.where(mask, fill.to(copies.dtype), copies)
    soft = mask.float()[None, None]
    grow = (radius + 1) // 2
    soft = F.max_pool2d(soft, 2 * grow + 1, stride=1, padding=grow)
    soft = F.avg_pool2d(soft, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)[0]
    own = border_colour(copies[:1].float())[:, :, None, None]
    moved = copies + (colour - own) * soft.to(copies.dtype)
    return torch.where(mask, fill, moved)


def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform_like(x: torch.Tensor, c: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    pixels = x.reshape(x.shape[0], -1)
    low = pixels.min(dim=1).values.view(1, -1, 1, 1)
    high = pixels.max(dim=1).values.view(1, -1, 1, 1)
    u = torch.rand((c, *x.shape), generator=generator, device=_gen_device(generator))
    u = u.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    out = low + u * (high - low)
    return out if x.is_floating_point() else out.round().to(x.dtype)


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    """Box blur with a kernel a quarter of the image's side: fine detail is gone, colour stays."""
    size = max(3, (max(x.shape[1:]) // 4) | 1)
    xf = x.to(torch.float32).unsqueeze(0)
    # reflect padding needs the pad smaller than the side; replicate has no such limit
    padded = F.pad(xf, (size // 2,) * 4, mode="replicate")
    blurred = F.avg_pool2d(padded, kernel_size=size, stride=1).squeeze(0)
    return blurred.to(x.dtype) if x.is_floating_point() else blurred.round().to(x.dtype)


class Counterexamples(Strategy):
    """CAIPI: c copies of each corrected example with its irrelevant part changed, same label.

    Examples whose marks were only propagated from other tasks get one copy each: enough to break
    the shortcut across the whole set without multiplying its size by c. Where such a mark covers
    over a quarter of an image (a background), the copy replaces the original: an added copy
    would leave the class's background in half the set, and the mark cannot hold the object
    (the background rule never marks it). Smaller propagated marks may cover strokes, so their
    originals stay.
    """

    name = "counterexamples"

    def __init__(self, copies: int = 3, fill: str = "substitute") -> None:
        self.copies, self.fill = copies, fill

    @classmethod
    def from_settings(cls, settings: Any) -> "Counterexamples":
        return cls(settings.counterexamples, settings.counterexample_fill)

    def augment(self, data: TrainingSet, model: ModelKind, seed: int) -> TrainingSet:
        idx = torch.nonzero(data.has_irrelevant).flatten()
        if self.copies <= 0 or len(idx) == 0:
            return data
        copies = torch.full((len(data),), self.copies, dtype=torch.long)
        copies[data.propagated] = 1
        words = self.word_pool(data, model) if data.x.dtype == torch.long else None
        keys = example_keys(data.x)
        candidates = donor_pool(keys)
        keep = torch.arange(len(data))
        if data.x.dtype != torch.long:
            background = data.propagated & (data.irrelevant.flatten(1).float().mean(dim=1) > LARGE_REGION)
            keep = torch.nonzero(~background).flatten()
        out = data.grown(keep, int(copies[idx].sum()), made_from=idx.repeat_interleave(copies[idx]))
        out.y[len(keep):] = data.y[idx].repeat_interleave(copies[idx], dim=0)  # class indices or multi-hot rows
        row = len(keep)
        for i in idx.tolist():
            k = int(copies[i])
            # each example's copies are drawn from its own content and mark: the same correction
            # gives the same copies in every version, so a frozen backbone's feature cache holds them
            generator = torch.Generator().manual_seed(draw_seed(keys[i], data.irrelevant[i]))
            if data.x.dtype == torch.long:
                out.x[row:row + k] = model.replace_tokens(data.x[i], data.irrelevant[i], k, generator, words)
            else:
                rows = other_classes(donor_rows(i, keys, candidates, k=2 * DONORS), data.y, i)
                out.x[row:row + k] = image_counterexamples(data.x[i], data.irrelevant[i], k, fill=self.fill,
                                                           donors=None if rows is None else data.x,
                                                           generator=generator, donor_rows=rows,
                                                           donor_masks=data.irrelevant)
            row += k
        return out


    def word_pool(self, data: TrainingSet, model: ModelKind) -> Optional[list[tuple[int, ...]]]:
        """Substitute fill for text: the spans marked Irrelevant anywhere (a word, its pieces, or
        a phrase), so a review's spurious phrase becomes another class's whole phrase."""
        if self.fill != "substitute":
            return None
        return marked_spans(model.mask_ids(data.x), data.irrelevant) or None


def example_keys(x: torch.Tensor) -> np.ndarray:
    """A 64-bit identity per example, from its content (images: an 8 x 8 thumbnail, enough to tell
    tasks apart and cheap at any resolution)."""
    rows = x.detach().cpu()
    if rows.is_floating_point() and rows.dim() == 4:
        rows = F.adaptive_avg_pool2d(rows.float(), 8).mul(1000).round().to(torch.int32)
    return np.array([int.from_bytes(hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=8).digest(),
                                    "little") for row in rows], dtype=np.uint64)


def draw_seed(key: np.uint64, mark: torch.Tensor) -> int:
    """The seed of one example's copies: its content and its mark (not the fit's seed, which is
    the version: the same correction gives the same copies in every version)."""
    h = hashlib.blake2b(np.packbits(mark.cpu().numpy().astype(bool)).tobytes(), digest_size=8)
    h.update(int(key).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") & (2 ** 63 - 1)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def donor_pool(keys: np.ndarray, size: int = DONOR_POOL) -> np.ndarray:
    """The examples donors are drawn from: the ``size`` whose hashed keys are smallest, a random-like
    sample that a new task enters with probability size / N. Drawing from it keeps every
    example's draw O(size): with propagation every example gets a copy, and a draw over all
    examples would make the set's copies O(N^2)."""
    if len(keys) <= size:
        return np.arange(len(keys))
    return np.argpartition(_mix(keys), size - 1)[:size]


def donor_rows(i: int, keys: np.ndarray, pool: Optional[np.ndarray] = None, k: int = DONORS) -> Optional[torch.Tensor]:
    """The rows of up to k other examples of the ``pool`` (``donor_pool``; all by default) to
    substitute from, chosen by rendezvous hashing of the examples' content: random-like, and stable
    as the project grows (a new task displaces one of an example's donors with probability k / N),
    which keeps its copies the same across versions."""
    candidates = np.arange(len(keys)) if pool is None else pool
    candidates = candidates[candidates != i]
    if len(candidates) == 0:
        return None
    scores = _mix(keys[candidates] ^ keys[i])
    n = min(k, len(candidates))
    picks = np.argpartition(scores, n - 1)[:n]
    return torch.as_tensor(candidates[picks[np.argsort(scores[picks], kind="stable")]])



def other_classes(rows: Optional[torch.Tensor], y: torch.Tensor, i: int) -> Optional[torch.Tensor]:
    """The donors whose class differs from example ``i``'s (a donor of its own class would hand the
    copy its class's version of the shortcut); all of them if none does."""
    if rows is None or y.dim() != 1:
        return rows
    other = rows[y[rows] != y[i]]
    return (other if len(other) else rows)[:DONORS]
