"""Offline confounded data sets, as Label Studio tasks (images as PNG data: URIs, texts as strings).

- ``decoy_digits``: scikit-learn's bundled digits (1797 images, 8x8, 0..16) upscaled to a 20x20
  box centred in 28x28 like MNIST, with Ross et al.'s decoy: a 4x4 swatch in a random corner,
  gray 255 - 25y in training and 255 - 25r (r a random digit) in test.
- ``decoy_digits_4``: the thesis' variant: the same swatch in all four corners.
- ``colors``: Ross et al.'s toy colors: 5x5 images, each cell one of 4 colours (drawn 4x4 px,
  20x20). Rule 0: the four corners have the same colour; rule 1: the three top-middle cells are all
  different. Training images satisfy both rules (class 1) or neither (class 0), so either rule
  fits. Rule 0 is the confounder the annotator marks; the test images satisfy exactly one rule and
  are labelled by rule 1, so a model using the corners scores 0 and one using rule 1 scores 1.
- ``decoy_text``: generated product reviews. The label follows the majority of sentiment words;
  in training a spurious token ("zorbly" for positive, "quennic" for negative) appears in every
  review, in test one of the two at random.

Confounders whose look, not their colour or place, says the class (they break a correction
generalised by border colour, a template at the marked size or a fixed position). The digits ones
follow the class in training and are a random class's at test; their clean bound trains on the
same digits with a random class's confounder (present, independent of the label):

- ``pattern``: the background (pixels < 40) replaced by a sinusoidal grating whose period (4, 6.5
  or 10 px) and orientation follow the class (``TEXTURES``); every class has the same mean gray
  (55) and amplitude (40, so the strokes stay the brightest), random phase per image.
- ``moving_mark``: a filled square or disk in the class shade, side 3..9 px, at a random place
  (it may cover strokes): size, shape and place all vary, unlike ``random_patch``'s 5x5.
- ``class_tags``: one of 10 binary glyphs (5x5..7x7, ``GLYPHS``), one per class, all gray 200
  (only the shape says the class), flush in one of the four corners at random.
- ``photo_watermark``: 160x160 RGB crops of scikit-image's photographs (``PHOTOS``: astronaut,
  chelsea, coffee, rocket; the class is the photograph): random position, 35..75% of the short
  side, flipped half the time, brightness x 0.8..1.2. A white logo per class (``LOGOS``:
  scikit-image's "S", a ring, a star, a plus) blended at alpha 0.6, side 12..40% of the image's,
  at a random place; at test every class gets every logo equally often. The clean bound trains on
  the same crops with a random class's logo.

Every problem keeps the confounder of each task as character spans (text) or a boolean mask at
the image's own size (images): the simulated annotator paints exactly that region "Irrelevant"
(for the problems above, exactly the pixels the confounder changed). A clean twin of the training
set (same labels; no confounder, or for the problems above the confounder of a random class)
trains the upper-bound model. Where the clean twin has no confounder, a decorrelated twin (the
confounder of a random class, drawn from its own random stream so the other sets stay as they were)
trains the bound of a model that only ignores what it saw vary.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
IMAGE_CONFIG = ROOT / "label_config" / "image_classification_evidence.xml"
TEXT_CONFIG = ROOT / "label_config" / "text_classification_evidence.xml"


@dataclass
class Split:
    tasks: list[dict[str, Any]]
    labels: np.ndarray  # (N,) int class indices
    confounders: list[Any]  # per task: (H, W) bool mask (images) or [(start, end)] spans (texts)


@dataclass
class Problem:
    name: str
    title: str
    kind: str  # "image" | "text"
    label_config: str
    image_size: int  # model input size (images); 0 for text
    train: Split
    test: Split
    clean_train: Split
    clean_test: Optional[Split] = None
    notes: list[str] = field(default_factory=list)
    # the confounder present but independent of the label, where ``clean_train`` has none: the upper
    # bound of a model that must see the confounder vary to ignore it (a frozen backbone's head)
    decorrelated_train: Optional[Split] = None
    # the clean twin itself carries the confounder, independent of the label: the test set, not the
    # confounder-free clean test set, is held-out data of its kind
    clean_carries_confounder: bool = False


def image_label_config(classes: list[str]) -> str:
    """The repository's image config with its Choices replaced by ``classes``."""
    xml = IMAGE_CONFIG.read_text()
    start = xml.index("<Choices")
    end = xml.index("</Choices>") + len("</Choices>")
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in classes)
    block = f'<Choices name="label" toName="image" choice="single" showInLine="true">\n{choices}\n  </Choices>'
    return xml[:start] + block + xml[end:]


def png_data_uri(rgb: np.ndarray, compress_level: Optional[int] = None) -> str:
    """PNG data URI; ``compress_level`` (zlib 0..9) defaults to Pillow's (6): 1 is 3x faster, ~10% bigger."""
    from PIL import Image

    buffer = io.BytesIO()
    options = {} if compress_level is None else {"compress_level": compress_level}
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", **options)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_tasks(images: np.ndarray, first_id: int, compress_level: Optional[int] = None) -> list[dict[str, Any]]:
    """(N, H, W) gray or (N, H, W, 3) RGB uint8 -> tasks with PNG data URIs."""
    tasks = []
    for i, img in enumerate(images):
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        tasks.append({"id": first_id + i, "data": {"image": png_data_uri(rgb, compress_level)}})
    return tasks


# --------------------------------------------------------------------------- decoy digits

def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (1797, 28, 28) uint8 (20x20 digit box, 4 px border) and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = np.zeros((len(digits.images), 28, 28), dtype=np.uint8)
    for i, img in enumerate(digits.images):
        small = Image.fromarray(np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return out, digits.target.astype(np.int64)


CORNERS = ((0, 0), (0, 24), (24, 0), (24, 24))


def _swatch(images: np.ndarray, values: np.ndarray, corners: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    out = images.copy()
    masks = np.zeros(images.shape, dtype=bool)
    for i, (value, where) in enumerate(zip(values, corners)):
        for r, c in where:
            out[i, r:r + 4, c:c + 4] = value
            masks[i, r:r + 4, c:c + 4] = True
    return out, masks


def _stratified_split(y: np.ndarray, test_share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_share))
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.array(sorted(train)), np.array(sorted(test))


def decoy_digits(seed: int, four_corners: bool = False, limit: Optional[int] = None) -> Problem:
    images, y = _digits_28()
    rng = np.random.default_rng(1000 + seed)
    train_idx, test_idx = _stratified_split(y, 0.2, rng)
    if limit:
        train_idx = np.sort(rng.choice(train_idx, size=min(limit, len(train_idx)), replace=False))

    def corners(n: int) -> list[list[tuple[int, int]]]:
        if four_corners:
            return [list(CORNERS)] * n
        return [[CORNERS[k]] for k in rng.integers(0, 4, n)]

    ytr, yte = y[train_idx], y[test_idx]
    xtr, mtr = _swatch(images[train_idx], (255 - 25 * ytr).astype(np.uint8), corners(len(ytr)))
    xte, mte = _swatch(images[test_idx], (255 - 25 * rng.integers(0, 10, len(yte))).astype(np.uint8), corners(len(yte)))
    classes = [str(d) for d in range(10)]
    n_tr = len(ytr)
    name = "decoy_digits_4" if four_corners else "decoy_digits"
    twin_rng = np.random.default_rng((1000 + seed, 7))
    if four_corners:
        twin_corners = [list(CORNERS)] * n_tr
    else:
        twin_corners = [[CORNERS[k]] for k in twin_rng.integers(0, 4, n_tr)]
    xdc, _ = _swatch(images[train_idx], _shade(twin_rng.integers(0, 10, n_tr)), twin_corners)
    title = ("Decoy digits, four corners (thesis variant)" if four_corners
             else "Decoy digits, one random corner (Ross et al.)")
    return Problem(
        name=name, title=title, kind="image", label_config=image_label_config(classes), image_size=28,
        train=Split(_image_tasks(xtr, 1), ytr, list(mtr)),
        test=Split(_image_tasks(xte, 100_000), yte, list(mte)),
        clean_train=Split(_image_tasks(images[train_idx], 200_000), ytr, [None] * n_tr),
        clean_test=Split(_image_tasks(images[test_idx], 300_000), yte, [None] * len(yte)),
        notes=[f"{n_tr} training / {len(yte)} test images (80/20 stratified split of scikit-learn's 1797 digits)"],
        decorrelated_train=Split(_image_tasks(xdc, 400_000), ytr, [None] * n_tr),
    )


# --------------------------------------------------------------------------- confounders that move

def _shade(labels: np.ndarray) -> np.ndarray:
    """The class-correlated gray of Ross et al.'s swatch: 255 - 25y (y a digit)."""
    return (255 - 25 * labels).astype(np.uint8)


def _confounded_digits(name: str, title: str, seed: int, draw, clean_draw=None, note: str = "") -> Problem:
    """Digits with a confounder ``draw(images, shades, rng) -> (images, masks)``: shade by class in
    training, a random digit's shade at test. ``clean_draw`` builds the upper bound's training set
    (default: no confounder)."""
    images, y = _digits_28()
    rng = np.random.default_rng(4000 + seed + 97 * sum(map(ord, name)))
    train_idx, test_idx = _stratified_split(y, 0.2, rng)
    ytr, yte = y[train_idx], y[test_idx]
    xtr, mtr = draw(images[train_idx], _shade(ytr), rng)
    xte, mte = draw(images[test_idx], _shade(rng.integers(0, 10, len(yte))), rng)
    clean = (clean_draw(images[train_idx], _shade(rng.integers(0, 10, len(ytr))), rng)[0]
             if clean_draw else images[train_idx])
    decorrelated = None
    if clean_draw is None:
        twin_rng = np.random.default_rng((4000 + seed, 97 * sum(map(ord, name)), 7))
        twin, _ = draw(images[train_idx], _shade(twin_rng.integers(0, 10, len(ytr))), twin_rng)
        decorrelated = Split(_image_tasks(twin, 400_000), ytr, [None] * len(ytr))
    return Problem(
        name=name, title=title, kind="image", label_config=image_label_config([str(d) for d in range(10)]),
        image_size=28,
        train=Split(_image_tasks(xtr, 1), ytr, list(mtr)),
        test=Split(_image_tasks(xte, 100_000), yte, list(mte)),
        clean_train=Split(_image_tasks(clean, 200_000), ytr, [None] * len(ytr)),
        clean_test=Split(_image_tasks(images[test_idx], 300_000), yte, [None] * len(yte)),
        notes=[f"{len(ytr)} training / {len(yte)} test images; {note}"],
        decorrelated_train=decorrelated, clean_carries_confounder=clean_draw is not None,
    )


def _edge_stripe(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out, masks = images.copy(), np.zeros(images.shape, dtype=bool)
    for i, (value, right) in enumerate(zip(shades, rng.integers(0, 2, len(images)))):
        cols = slice(25, 28) if right else slice(0, 3)
        out[i, :, cols] = value
        masks[i, :, cols] = True
    return out, masks


def _random_patch(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out, masks = images.copy(), np.zeros(images.shape, dtype=bool)
    for i, (value, r, c) in enumerate(zip(shades, rng.integers(0, 24, len(images)), rng.integers(0, 24, len(images)))):
        out[i, r:r + 5, c:c + 5] = value
        masks[i, r:r + 5, c:c + 5] = True
    return out, masks


def _background(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The background (pixels the digit leaves dark) shaded by class at a third of the swatch's gray,
    so the strokes stay the brightest pixels: the husky on snow."""
    masks = images < 40
    level = (shades.astype(np.float32) * 0.4)[:, None, None]
    out = np.where(masks, np.maximum(images, level), images).astype(np.uint8)
    return out, masks


RING = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 1, 1], [1, 0, 0, 0, 1], [1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=bool)


def _stamp(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 5x5 ring watermark blended (alpha 0.7) over the image, anywhere in the 28x28 frame."""
    out = images.astype(np.float32).copy()
    masks = np.zeros(images.shape, dtype=bool)
    for i, (value, r, c) in enumerate(zip(shades, rng.integers(0, 24, len(images)), rng.integers(0, 24, len(images)))):
        window = out[i, r:r + 5, c:c + 5]
        window[RING] = 0.3 * window[RING] + 0.7 * float(value)
        masks[i, r:r + 5, c:c + 5] = RING
    return np.clip(out, 0, 255).astype(np.uint8), masks


def edge_stripe(seed: int) -> Problem:
    return _confounded_digits("edge_stripe", "Edge stripe: a 3-px stripe down the left or right edge", seed,
                              _edge_stripe, note="a class-shaded 3-px stripe down a random side (left or right)")


def random_patch(seed: int) -> Problem:
    return _confounded_digits("random_patch", "Random patch: a 5x5 swatch anywhere", seed, _random_patch,
                              note="a class-shaded 5x5 swatch at a uniformly random place (it may cover strokes)")


def background(seed: int) -> Problem:
    return _confounded_digits("background", "Background shaded by class (husky on snow)", seed, _background,
                              clean_draw=_background,
                              note="the background (pixels < 40) lifted to 0.4 x the class shade; the clean "
                                   "bound trains on backgrounds of random shade")


def stamp(seed: int) -> Problem:
    return _confounded_digits("stamp", "Stamp: a ring watermark anywhere", seed, _stamp,
                              note="a 5x5 ring blended at alpha 0.7 in the class shade, at a random place")



# --------------------------------------------------------------------------- confounders by look, not colour

def _class_of(shades: np.ndarray) -> np.ndarray:
    """The digit whose ``_shade`` is ``shades`` (the draws get shades; these confounders need the class)."""
    return (255 - shades.astype(np.int64)) // 25


def _changed(out: np.ndarray, images: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``where`` limited to the pixels that really changed (a mark the same gray as the digit is no mark)."""
    diff = out != images
    return where & (diff.any(axis=-1) if diff.ndim == where.ndim + 1 else diff)


# (period in px, orientation in degrees) of each class's grating: 10 distinct spatial frequencies
TEXTURES = ((4.0, 0.0), (4.0, 45.0), (4.0, 90.0), (4.0, 135.0), (6.5, 0.0), (6.5, 45.0), (6.5, 90.0),
            (6.5, 135.0), (10.0, 22.5), (10.0, 112.5))
TEXTURE_MEAN, TEXTURE_AMPLITUDE = 55.0, 40.0


def texture_wave(cls: int, size: int = 28) -> np.ndarray:
    """(size, size) complex exp(i k.x) of class ``cls``'s grating (its texture is MEAN + AMP * Im(e^{i phase} wave))."""
    period, angle = TEXTURES[cls]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = np.deg2rad(angle)
    return np.exp(1j * (2 * np.pi / period) * (xx * np.cos(theta) + yy * np.sin(theta)))


def _pattern(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The background (pixels < 40) replaced by a sinusoidal grating whose period and orientation
    follow the class; every class has the same mean gray (55) and amplitude (40, so at most 95, under
    the strokes), random phase per image: only the texture's look says the class."""
    waves = [texture_wave(c, images.shape[-1]) for c in range(len(TEXTURES))]
    out = images.copy()
    for i, (cls, phase) in enumerate(zip(_class_of(shades), rng.uniform(0, 2 * np.pi, len(images)))):
        texture = TEXTURE_MEAN + TEXTURE_AMPLITUDE * np.imag(np.exp(1j * phase) * waves[cls])
        out[i] = np.where(images[i] < 40, np.rint(texture), images[i]).astype(np.uint8)
    return out, _changed(out, images, images < 40)


def _mark_shape(side: int, disk: bool) -> np.ndarray:
    if not disk:
        return np.ones((side, side), dtype=bool)
    yy, xx = np.mgrid[0:side, 0:side] - (side - 1) / 2
    return yy ** 2 + xx ** 2 <= (side / 2) ** 2


def _moving_mark(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A filled square or disk in the class shade, side 3..9 px, anywhere in the frame (over strokes too)."""
    out, masks = images.copy(), np.zeros(images.shape, dtype=bool)
    n, size = len(images), images.shape[-1]
    for i, (value, side, disk) in enumerate(zip(shades, rng.integers(3, 10, n), rng.integers(0, 2, n))):
        r, c = rng.integers(0, size - side + 1, 2)
        shape = _mark_shape(int(side), bool(disk))
        out[i, r:r + side, c:c + side][shape] = value
        masks[i, r:r + side, c:c + side] = shape
    return out, _changed(out, images, masks)


def _glyph(*rows: str) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


GLYPHS = (  # one per digit class, 5x5 .. 7x7, drawn in the same gray: only the shape says the class
    _glyph("..#..", "..#..", "#####", "..#..", "..#.."),  # plus
    _glyph("#...#", ".#.#.", "..#..", ".#.#.", "#...#"),  # x
    _glyph("#####", "#...#", "#...#", "#...#", "#####"),  # hollow square
    _glyph("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),  # ring
    _glyph("..#...", "..#...", ".###..", ".#.#..", "##.##.", "######"),  # triangle
    _glyph("#######", ".......", "#######", ".......", "#######"),  # three bars
    _glyph("#.#.#", "#.#.#", "#.#.#", "#.#.#", "#.#.#", "#.#.#", "#.#.#"),  # three columns
    _glyph("##..##", "##..##", "..##..", "..##..", "##..##", "##..##"),  # checker
    _glyph("...#...", "..#.#..", ".#...#.", "#.....#", ".#...#.", "..#.#..", "...#..."),  # diamond
    _glyph("#....", "#....", "#....", "#....", "#####"),  # L
)
GLYPH_GRAY = 200


def glyph_corner(glyph: np.ndarray, corner: int, size: int = 28) -> tuple[int, int]:
    """Top-left of ``glyph`` flush in corner 0 (top left), 1 (top right), 2 (bottom left) or 3."""
    h, w = glyph.shape
    return (0 if corner < 2 else size - h), (0 if corner % 2 == 0 else size - w)


def _class_tags(images: np.ndarray, shades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The class's glyph (``GLYPHS``) in gray 200, flush in one of the four corners chosen at random."""
    out, masks = images.copy(), np.zeros(images.shape, dtype=bool)
    for i, (cls, corner) in enumerate(zip(_class_of(shades), rng.integers(0, 4, len(images)))):
        glyph = GLYPHS[cls]
        (r, c), (h, w) = glyph_corner(glyph, int(corner), images.shape[-1]), glyph.shape
        out[i, r:r + h, c:c + w][glyph] = GLYPH_GRAY
        masks[i, r:r + h, c:c + w] = glyph
    return out, _changed(out, images, masks)


def pattern(seed: int) -> Problem:
    return _confounded_digits("pattern", "Pattern: the background's texture (not its gray) follows the class", seed,
                              _pattern, clean_draw=_pattern,
                              note="the background (pixels < 40) is a sinusoidal grating of mean 55 and amplitude "
                                   "40 whose period (4, 6.5, 10 px) and orientation follow the class, random phase; "
                                   "the clean bound trains on random classes' gratings")


def moving_mark(seed: int) -> Problem:
    return _confounded_digits("moving_mark", "Moving mark: a class-shaded square or disk of any size, anywhere",
                              seed, _moving_mark, clean_draw=_moving_mark,
                              note="a filled square or disk of side 3..9 px in the class shade at a random place "
                                   "(it may cover strokes); the clean bound trains on random classes' shades")


def class_tags(seed: int) -> Problem:
    return _confounded_digits("class_tags", "Class tags: a per-class glyph in a random corner", seed, _class_tags,
                              clean_draw=_class_tags,
                              note="one of 10 binary glyphs (5x5..7x7, all gray 200, one per class) flush in a "
                                   "random corner; the clean bound trains on random classes' glyphs")


# --------------------------------------------------------------------------- photographs with a watermark

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's bundled colour photographs, one per class
LOGOS = ("skimage", "ring", "star", "cross")  # the watermark of each class
LOGO_ALPHA = 0.6
_TEMPLATE = 128


def _photos() -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]


def logo_templates() -> list[np.ndarray]:
    """(128, 128) bool silhouettes: scikit-image's logo (its orange "S"), a ring, a five-pointed star, a plus."""
    import skimage.data
    from PIL import Image, ImageDraw

    logo = np.asarray(skimage.data.logo())[..., :3].astype(np.int64)
    alpha = logo[..., 0] > logo[..., 1] + 40  # its orange half, a thick "S" (the logo is opaque everywhere)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    side = max(alpha.shape)
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - alpha.shape[0]) // 2, (side - alpha.shape[1]) // 2
    square[top:top + alpha.shape[0], left:left + alpha.shape[1]] = alpha
    out = [np.asarray(Image.fromarray(square.astype(np.uint8) * 255).resize((_TEMPLATE, _TEMPLATE),
                                                                            Image.Resampling.BILINEAR)) > 127]
    yy, xx = np.mgrid[0:_TEMPLATE, 0:_TEMPLATE] - (_TEMPLATE - 1) / 2
    radius = np.hypot(yy, xx)
    out.append((radius <= _TEMPLATE / 2) & (radius >= 0.3 * _TEMPLATE))
    star = Image.new("L", (_TEMPLATE, _TEMPLATE), 0)
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, _TEMPLATE / 2, 0.2 * _TEMPLATE)
    ImageDraw.Draw(star).polygon([(float(_TEMPLATE / 2 + r * np.cos(a)), float(_TEMPLATE / 2 + 2 + r * np.sin(a)))
                                  for r, a in zip(radii, angles)], fill=255)
    out.append(np.asarray(star) > 127)
    arm = (np.abs(yy) <= 0.15 * _TEMPLATE) | (np.abs(xx) <= 0.15 * _TEMPLATE)
    out.append(arm)
    return out


def _logo(templates: list[np.ndarray], cls: int, side: int, cache: dict) -> np.ndarray:
    from PIL import Image

    key = (cls, side)
    if key not in cache:
        img = Image.fromarray(templates[cls].astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)
        cache[key] = np.asarray(img) > 127
    return cache[key]


def _photo_crops(photos: list[np.ndarray], labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (35..75% of the photo's short side) of each label's photo, resized to
    ``size``, flipped left-right half the time, brightness x 0.8..1.2."""
    from PIL import Image

    pil = [Image.fromarray(photo) for photo in photos]
    out = np.zeros((len(labels), size, size, 3), dtype=np.uint8)
    for i, y in enumerate(labels):
        h, w = photos[int(y)].shape[:2]
        side = int(rng.uniform(0.35, 0.75) * min(h, w))
        r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = np.asarray(pil[int(y)].resize((size, size), Image.Resampling.BILINEAR, box=(c, r, c + side, r + side),
                                             reducing_gap=2.0))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.clip(crop.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    return out


def _watermark(images: np.ndarray, logos: np.ndarray, rng: np.random.Generator,
               templates: Optional[list[np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Class ``logos[i]``'s logo in white, blended at alpha 0.6, side 12..40% of the image's, at a random
    place inside the frame; the mask is the logo's pixels that changed."""
    templates = templates if templates is not None else logo_templates()
    out, masks, cache = images.copy(), np.zeros(images.shape[:3], dtype=bool), {}
    size = images.shape[1]
    for i, cls in enumerate(logos):
        side = int(rng.integers(int(round(0.12 * size)), int(round(0.40 * size)) + 1))
        r, c = (int(v) for v in rng.integers(0, size - side + 1, 2))
        logo = _logo(templates, int(cls), side, cache)
        window = out[i, r:r + side, c:c + side]
        before = window[logo]
        window[logo] = np.rint((1 - LOGO_ALPHA) * before.astype(np.float32) + LOGO_ALPHA * 255.0).astype(np.uint8)
        masks[i, r:r + side, c:c + side] = _changed(window, images[i, r:r + side, c:c + side], logo)
    return out, masks


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def photo_watermark(seed: int, n_train: int = 480, n_test: int = 200, size: int = 160) -> Problem:
    rng = np.random.default_rng(6000 + seed)
    photos, templates, k = _photos(), logo_templates(), len(PHOTOS)
    ytr, yte = _balanced_labels(rng, n_train, k), _balanced_labels(rng, n_test, k)
    base_tr, base_te = _photo_crops(photos, ytr, size, rng), _photo_crops(photos, yte, size, rng)
    # at test every class gets every logo in equal numbers (as far as n_test allows): the logo says nothing
    other = np.zeros(n_test, dtype=np.int64)
    for c in range(k):
        idx = np.flatnonzero(yte == c)
        other[idx] = _balanced_labels(rng, len(idx), k)
    xtr, mtr = _watermark(base_tr, ytr, rng, templates)
    xte, mte = _watermark(base_te, other, rng, templates)
    clean, _ = _watermark(base_tr, rng.integers(0, k, n_train), rng, templates)
    return Problem(
        name="photo_watermark", title="Photo watermark: which photograph, with a per-class logo", kind="image",
        label_config=image_label_config(list(PHOTOS)), image_size=size,
        train=Split(_image_tasks(xtr, 1, 1), ytr, list(mtr)),
        test=Split(_image_tasks(xte, 100_000, 1), yte, list(mte)),
        clean_train=Split(_image_tasks(clean, 200_000, 1), ytr, [None] * n_train),
        clean_test=Split(_image_tasks(base_te, 300_000, 1), yte, [None] * n_test),
        clean_carries_confounder=True,
        notes=[f"{n_train} training / {n_test} test {size}x{size} RGB crops (balanced); the class is the photograph "
               f"({', '.join(PHOTOS)}): a random crop of 35..75% of its short side, flipped half the time, "
               f"brightness x 0.8..1.2; confounder: a white logo per class ({', '.join(LOGOS)}) blended at alpha "
               f"{LOGO_ALPHA}, side 12..40% of the image's, at a random place; the clean bound trains on random "
               "classes' logos"],
    )


# --------------------------------------------------------------------------- toy colors

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25]], dtype=np.uint8)
CELL = 4
TOP_MIDDLE = ((0, 1), (0, 2), (0, 3))
COLOR_CORNERS = ((0, 0), (0, 4), (4, 0), (4, 4))


def _rule0(g: np.ndarray) -> bool:
    return len({g[r, c] for r, c in COLOR_CORNERS}) == 1


def _rule1(g: np.ndarray) -> bool:
    return len({g[r, c] for r, c in TOP_MIDDLE}) == 3


def _color_grid(rng: np.random.Generator, rule0: bool, rule1: bool) -> np.ndarray:
    while True:
        g = rng.integers(0, 4, (5, 5))
        if rule0:
            g[tuple(zip(*COLOR_CORNERS))] = rng.integers(0, 4)
        if rule1:
            g[tuple(zip(*TOP_MIDDLE))] = rng.permutation(4)[:3]
        if _rule0(g) == rule0 and _rule1(g) == rule1:
            return g


def _render(grids: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.kron(PALETTE[g], np.ones((CELL, CELL, 1), dtype=np.uint8)) for g in grids])


def _corner_mask() -> np.ndarray:
    m = np.zeros((5 * CELL, 5 * CELL), dtype=bool)
    for r, c in COLOR_CORNERS:
        m[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = True
    return m


def colors(seed: int, n_train: int = 1000, n_test: int = 500) -> Problem:
    rng = np.random.default_rng(2000 + seed)
    ytr = rng.integers(0, 2, n_train)
    tr = [_color_grid(rng, bool(y), bool(y)) for y in ytr]
    # test: exactly one rule holds, labelled by rule 1 (the real one)
    yte = rng.integers(0, 2, n_test)
    te = [_color_grid(rng, not bool(y), bool(y)) for y in yte]
    # clean twin: rule 0 independent of the label
    clean = [_color_grid(rng, bool(rng.integers(0, 2)), bool(y)) for y in ytr]
    mask = _corner_mask()
    classes = ["rule fails", "rule holds"]
    return Problem(
        name="colors", title="Toy colors (Ross et al.): corners vs. top-middle rule", kind="image",
        label_config=image_label_config(classes), image_size=5 * CELL,
        train=Split(_image_tasks(_render(tr), 1), ytr, [mask] * n_train),
        test=Split(_image_tasks(_render(te), 100_000), yte, [mask] * n_test),
        clean_train=Split(_image_tasks(_render(clean), 200_000), ytr, [None] * n_train),
        clean_carries_confounder=True,
        notes=[f"{n_train} training / {n_test} test images, 5x5 cells drawn 4x4 px (20x20 input); "
               "test images satisfy exactly one rule, so accuracy is the share decided by the top-middle rule"],
    )


# --------------------------------------------------------------------------- decoy text

POSITIVE = ("great", "excellent", "love", "perfect", "wonderful", "sturdy", "reliable", "fantastic", "pleasant",
            "recommend", "superb", "comfortable")
NEGATIVE = ("terrible", "awful", "broken", "hate", "poor", "disappointing", "useless", "flimsy", "horrible",
            "refund", "defective", "noisy")
NEUTRAL = ("the", "box", "arrived", "on", "tuesday", "and", "i", "used", "it", "for", "a", "week", "with", "my",
           "kitchen", "blender", "cable", "battery", "screen", "color", "size", "was", "as", "described", "price",
           "delivery", "package", "instructions", "manual", "weight", "handle", "lid", "button", "charger")
SPURIOUS = ("zorbly", "quennic")  # positive, negative


def _review(rng: np.random.Generator, label: int, token: Optional[str]) -> tuple[str, list[tuple[int, int]]]:
    major = POSITIVE if label == 0 else NEGATIVE
    minor = NEGATIVE if label == 0 else POSITIVE
    words = list(rng.choice(major, rng.integers(2, 4))) + list(rng.choice(minor, rng.integers(0, 2)))
    words += list(rng.choice(NEUTRAL, rng.integers(8, 16)))
    rng.shuffle(words)
    if token is not None:
        words.insert(int(rng.integers(0, len(words) + 1)), token)
    text = " ".join(words) + "."
    spans = []
    if token is not None:
        pos = 0
        for w in words:
            if w == token:
                spans.append((pos, pos + len(w)))
            pos += len(w) + 1
    return text, spans


def decoy_text(seed: int, n_train: int = 1000, n_test: int = 500) -> Problem:
    rng = np.random.default_rng(3000 + seed)
    ytr = rng.integers(0, 2, n_train)
    yte = rng.integers(0, 2, n_test)
    train = [_review(rng, int(y), SPURIOUS[int(y)]) for y in ytr]
    test = [_review(rng, int(y), SPURIOUS[int(rng.integers(0, 2))]) for y in yte]
    clean = [_review(rng, int(y), None) for y in ytr]
    twin_rng = np.random.default_rng((3000 + seed, 7))
    decorrelated = [_review(twin_rng, int(y), SPURIOUS[int(twin_rng.integers(0, 2))]) for y in ytr]

    def tasks(items: list, first: int) -> list[dict[str, Any]]:
        return [{"id": first + i, "data": {"text": t}} for i, (t, _) in enumerate(items)]

    return Problem(
        name="decoy_text", title="Decoy text: generated reviews with a spurious token", kind="text",
        label_config=TEXT_CONFIG.read_text(), image_size=0,
        train=Split(tasks(train, 1), ytr, [s for _, s in train]),
        test=Split(tasks(test, 100_000), yte, [s for _, s in test]),
        clean_train=Split(tasks(clean, 200_000), ytr, [[] for _ in clean]),
        decorrelated_train=Split(tasks(decorrelated, 400_000), ytr, [[] for _ in decorrelated]),
        notes=[f"{n_train} training / {n_test} test reviews; label = majority of 2-3 vs 0-1 sentiment words; "
               f"spurious tokens {SPURIOUS[0]!r} (Positive) / {SPURIOUS[1]!r} (Negative)"],
    )


PROBLEMS = {
    "decoy_digits": lambda seed, quick=False: decoy_digits(seed, four_corners=False),
    "decoy_digits_4": lambda seed, quick=False: decoy_digits(seed, four_corners=True),
    "colors": lambda seed, quick=False: colors(seed),
    "decoy_text": lambda seed, quick=False: decoy_text(seed),
    "edge_stripe": lambda seed, quick=False: edge_stripe(seed),
    "random_patch": lambda seed, quick=False: random_patch(seed),
    "background": lambda seed, quick=False: background(seed),
    "stamp": lambda seed, quick=False: stamp(seed),
    "pattern": lambda seed, quick=False: pattern(seed),
    "moving_mark": lambda seed, quick=False: moving_mark(seed),
    "class_tags": lambda seed, quick=False: class_tags(seed),
    "photo_watermark": lambda seed, quick=False: photo_watermark(seed),
}
