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

Every problem keeps the confounder of each task as character spans (text) or a boolean mask at
the image's own size (images): the simulated annotator paints exactly that region "Irrelevant".
A clean twin of the training set (no confounder, same labels) trains the upper-bound model.
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


def image_label_config(classes: list[str]) -> str:
    """The repository's image config with its Choices replaced by ``classes``."""
    xml = IMAGE_CONFIG.read_text()
    start = xml.index("<Choices")
    end = xml.index("</Choices>") + len("</Choices>")
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in classes)
    block = f'<Choices name="label" toName="image" choice="single" showInLine="true">\n{choices}\n  </Choices>'
    return xml[:start] + block + xml[end:]


def png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_tasks(images: np.ndarray, first_id: int) -> list[dict[str, Any]]:
    """(N, H, W) gray or (N, H, W, 3) RGB uint8 -> tasks with PNG data URIs."""
    tasks = []
    for i, img in enumerate(images):
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        tasks.append({"id": first_id + i, "data": {"image": png_data_uri(rgb)}})
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
    title = ("Decoy digits, four corners (thesis variant)" if four_corners
             else "Decoy digits, one random corner (Ross et al.)")
    return Problem(
        name=name, title=title, kind="image", label_config=image_label_config(classes), image_size=28,
        train=Split(_image_tasks(xtr, 1), ytr, list(mtr)),
        test=Split(_image_tasks(xte, 100_000), yte, list(mte)),
        clean_train=Split(_image_tasks(images[train_idx], 200_000), ytr, [None] * n_tr),
        clean_test=Split(_image_tasks(images[test_idx], 300_000), yte, [None] * len(yte)),
        notes=[f"{n_tr} training / {len(yte)} test images (80/20 stratified split of scikit-learn's 1797 digits)"],
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
    return Problem(
        name=name, title=title, kind="image", label_config=image_label_config([str(d) for d in range(10)]),
        image_size=28,
        train=Split(_image_tasks(xtr, 1), ytr, list(mtr)),
        test=Split(_image_tasks(xte, 100_000), yte, list(mte)),
        clean_train=Split(_image_tasks(clean, 200_000), ytr, [None] * len(ytr)),
        clean_test=Split(_image_tasks(images[test_idx], 300_000), yte, [None] * len(yte)),
        notes=[f"{len(ytr)} training / {len(yte)} test images; {note}"],
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

    def tasks(items: list, first: int) -> list[dict[str, Any]]:
        return [{"id": first + i, "data": {"text": t}} for i, (t, _) in enumerate(items)]

    return Problem(
        name="decoy_text", title="Decoy text: generated reviews with a spurious token", kind="text",
        label_config=TEXT_CONFIG.read_text(), image_size=0,
        train=Split(tasks(train, 1), ytr, [s for _, s in train]),
        test=Split(tasks(test, 100_000), yte, [s for _, s in test]),
        clean_train=Split(tasks(clean, 200_000), ytr, [[] for _ in clean]),
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
}
