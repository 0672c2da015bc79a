"""The look-not-colour confounder problems of the XIL benchmark: pattern, moving_mark, class_tags,
photo_watermark (benchmarks/xil/data.py) and text_tags (benchmarks/xil/text_data.py)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.xil import data as D
from benchmarks.xil.text_data import TAGS, TEXT_PROBLEMS, text_tags
from ml_backend.data.text import tokenize

DIGIT_PROBLEMS = {"pattern": D.pattern, "moving_mark": D.moving_mark, "class_tags": D.class_tags}
SMALL_PHOTOS = dict(n_train=80, n_test=40, size=160)


def decode(task) -> np.ndarray:
    uri = task["data"]["image"]
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def decode_gray(split) -> np.ndarray:
    rgb = np.stack([decode(t) for t in split.tasks])
    assert (rgb == rgb[..., :1]).all()  # the digit problems stay gray
    return rgb[..., 0]


def digit_train_base(name: str, seed: int) -> np.ndarray:
    """The unconfounded digits of ``name``'s training split, in task order (as _confounded_digits draws them)."""
    images, y = D._digits_28()
    rng = np.random.default_rng(4000 + seed + 97 * sum(map(ord, name)))
    train_idx, _ = D._stratified_split(y, 0.2, rng)
    return images[train_idx]


def photo_train_base(seed: int, n_train: int, n_test: int, size: int) -> np.ndarray:
    """photo_watermark's training crops before the logo (its first draws from its rng)."""
    rng = np.random.default_rng(6000 + seed)
    k = len(D.PHOTOS)
    ytr = D._balanced_labels(rng, n_train, k)
    D._balanced_labels(rng, n_test, k)
    return D._photo_crops(D._photos(), ytr, size, rng)


@pytest.fixture(scope="module")
def digits():
    out = {}
    for name, build in DIGIT_PROBLEMS.items():
        p = build(0)
        out[name] = dict(problem=p, train=decode_gray(p.train), test=decode_gray(p.test),
                         clean_train=decode_gray(p.clean_train), clean_test=decode_gray(p.clean_test),
                         base_train=digit_train_base(name, 0))
    return out


@pytest.fixture(scope="module")
def photos():
    p = D.photo_watermark(0, **SMALL_PHOTOS)
    return dict(problem=p, train=np.stack([decode(t) for t in p.train.tasks]),
                test=np.stack([decode(t) for t in p.test.tasks]),
                clean_train=np.stack([decode(t) for t in p.clean_train.tasks]),
                clean_test=np.stack([decode(t) for t in p.clean_test.tasks]),
                base_train=photo_train_base(0, **SMALL_PHOTOS))


# --------------------------------------------------------------------------- identify the confounder from pixels

def texture_class(image: np.ndarray, mask: np.ndarray) -> int:
    """The grating (TEXTURES) whose frequency carries the most of the masked pixels' energy."""
    values = image[mask].astype(np.float64) - D.TEXTURE_MEAN
    power = [abs(np.sum(values * np.conj(D.texture_wave(c, image.shape[-1])[mask]))) for c in range(len(D.TEXTURES))]
    return int(np.argmax(power))


def shade_class(image: np.ndarray, mask: np.ndarray) -> int:
    values = np.unique(image[mask])
    assert len(values) == 1, values  # a mark is one flat gray
    return int((255 - int(values[0])) // 25)


def glyph_class(image: np.ndarray) -> int:
    """The one glyph drawn exactly (gray 200 on its pixels, not on the others of its box) in some corner."""
    found = set()
    for cls, glyph in enumerate(D.GLYPHS):
        for corner in range(4):
            (r, c), (h, w) = D.glyph_corner(glyph, corner, image.shape[-1]), glyph.shape
            if np.array_equal(image[r:r + h, c:c + w] == D.GLYPH_GRAY, glyph):
                found.add(cls)
    return found.pop() if len(found) == 1 else -1


def _square(mask: np.ndarray, side: int = 32) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.asarray(Image.fromarray(box.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)) > 127


def logo_class(mask: np.ndarray, templates=None) -> int:
    """The logo whose silhouette (bounding box at 32x32) overlaps the mask's the most."""
    templates = [_square(t) for t in (templates or D.logo_templates())]
    shape = _square(mask)
    iou = [(shape & t).sum() / (shape | t).sum() for t in templates]
    return int(np.argmax(iou))


def identities(name: str, images: np.ndarray, masks) -> np.ndarray:
    if name == "pattern":
        return np.array([texture_class(x, m) for x, m in zip(images, masks)])
    if name == "moving_mark":
        return np.array([shade_class(x, m) for x, m in zip(images, masks)])
    return np.array([glyph_class(x) for x in images])


# --------------------------------------------------------------------------- digit problems

@pytest.mark.parametrize("name", list(DIGIT_PROBLEMS))
def test_digit_masks_are_exactly_the_changed_pixels(digits, name):
    d = digits[name]
    p = d["problem"]
    for images, base, split in ((d["train"], d["base_train"], p.train), (d["test"], d["clean_test"], p.test)):
        masks = np.stack(split.confounders)
        assert masks.dtype == bool and masks.shape == images.shape == base.shape
        assert np.array_equal(masks, images != base)
        assert masks.any(axis=(1, 2)).mean() > 0.98  # (a mark may vanish only on a same-gray digit)
    # the clean bound carries the confounder too (same digits, a random class's version)
    assert (d["clean_train"] != d["base_train"]).any(axis=(1, 2)).mean() > 0.98


@pytest.mark.parametrize("name", list(DIGIT_PROBLEMS))
def test_digit_confounder_follows_the_label_only_in_training(digits, name):
    d = digits[name]
    p = d["problem"]
    assert p.image_size == 28 and p.kind == "image"
    assert set(np.unique(p.train.labels)) == set(range(10)) == set(np.unique(p.test.labels))
    assert np.array_equal(p.clean_train.labels, p.train.labels) and np.array_equal(p.clean_test.labels, p.test.labels)
    train = identities(name, d["train"], p.train.confounders)
    assert np.mean(train == p.train.labels) > 0.99
    test = identities(name, d["test"], p.test.confounders)
    assert (test >= 0).mean() > 0.98 and 0.04 < np.mean(test == p.test.labels) < 0.18
    # clean bound: confounder present, of a random class (identified on the pixels it changed)
    clean_masks = d["clean_train"] != d["base_train"]
    clean = identities(name, d["clean_train"], clean_masks)
    assert (clean >= 0).mean() > 0.98 and 0.05 < np.mean(clean == p.clean_train.labels) < 0.16
    assert len(np.unique(clean[clean >= 0])) == 10


def test_pattern_has_no_mean_colour_cue(digits):
    d = digits["pattern"]
    p = d["problem"]
    masks = np.stack(p.train.confounders)
    means = np.array([d["train"][masks & (p.train.labels == c)[:, None, None]].mean() for c in range(10)])
    stds = np.array([d["train"][masks & (p.train.labels == c)[:, None, None]].std() for c in range(10)])
    assert np.abs(means - D.TEXTURE_MEAN).max() < 1.5, means
    assert stds.max() - stds.min() < 2.0, stds  # same contrast
    # per image the background gray says nothing about the class either
    per_image = np.array([x[m].mean() for x, m in zip(d["train"], masks)])
    assert abs(np.corrcoef(per_image, p.train.labels)[0, 1]) < 0.1
    # the strokes stay the brightest pixels, the background covers the dark pixels of the digit
    assert d["train"][masks].max() <= D.TEXTURE_MEAN + D.TEXTURE_AMPLITUDE
    dark = d["base_train"] < 40
    assert (masks <= dark).all() and masks.sum() > 0.95 * dark.sum()
    # textures differ by look: ten distinct (period, orientation) pairs
    assert len(set(D.TEXTURES)) == 10


def test_moving_mark_varies_in_size_and_place(digits):
    p = digits["moving_mark"]["problem"]
    sides, centres = [], []
    for m in p.train.confounders:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        sides.append(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
        centres.append(((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2))
    assert set(range(3, 10)) <= set(sides) and max(sides) == 9
    centres = np.array(centres)
    assert centres.min() < 4 and centres.max() > 23
    areas = {int(m.sum()) for m in p.train.confounders}
    assert len(areas) > 15  # squares and disks of every size, some partly hidden by same-gray strokes


def test_class_tags_glyphs_are_distinct_and_one_gray(digits):
    shapes = [g.tobytes() + bytes(g.shape) for g in D.GLYPHS]
    assert len(set(shapes)) == 10 and all(5 <= s <= 7 for g in D.GLYPHS for s in g.shape)
    d = digits["class_tags"]
    masks = np.stack(d["problem"].train.confounders)
    assert set(np.unique(d["train"][masks])) == {D.GLYPH_GRAY}
    corners = {(bool(m[:14].any()), bool(m[:, :14].any())) for m in masks}
    assert len(corners) == 4


# --------------------------------------------------------------------------- photo_watermark

def test_photo_sizes_labels_and_masks(photos):
    p = photos["problem"]
    k = len(D.PHOTOS)
    assert p.kind == "image" and p.image_size == 160 and len(p.train.tasks) == 80 and len(p.test.tasks) == 40
    assert all(f'<Choice value="{name}"/>' in p.label_config for name in D.PHOTOS)
    for split in (p.train, p.test, p.clean_train, p.clean_test):
        assert np.bincount(split.labels, minlength=k).tolist() == [len(split.labels) // k] * k
    assert photos["train"].shape == (80, 160, 160, 3)
    for images, base, split in ((photos["train"], photos["base_train"], p.train),
                                (photos["test"], photos["clean_test"], p.test)):
        masks = np.stack(split.confounders)
        assert masks.shape == images.shape[:3] and masks.dtype == bool
        assert np.array_equal(masks, (images != base).any(-1))
        share = masks.mean(axis=(1, 2))
        assert share.min() > 0.003 and share.max() < 0.16
    assert photos["train"].std() > 30  # real photographs, not flat fills


def test_photo_logo_follows_the_label_only_in_training(photos):
    p = photos["problem"]
    templates = D.logo_templates()
    train = np.array([logo_class(m, templates) for m in p.train.confounders])
    assert np.array_equal(train, p.train.labels)
    test = np.array([logo_class(m, templates) for m in p.test.confounders])
    assert np.mean(test == p.test.labels) == 0.25  # every class gets every logo equally often
    clean_masks = (photos["clean_train"] != photos["base_train"]).any(-1)
    assert clean_masks.any(axis=(1, 2)).all()  # the clean bound has a logo on every image ...
    clean = np.array([logo_class(m, templates) for m in clean_masks])
    assert 0.1 < np.mean(clean == p.clean_train.labels) < 0.45 and len(np.unique(clean)) == 4  # ... of any class


def test_photo_logos_vary_in_size_and_place(photos):
    boxes = []
    for m in photos["problem"].train.confounders:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes.append((rows[0], cols[0], max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1))
    boxes = np.array(boxes)
    assert boxes[:, 2].min() < 30 and boxes[:, 2].max() > 50
    assert boxes[:, 0].min() < 20 and boxes[:, 0].max() > 90 and boxes[:, 1].min() < 20 and boxes[:, 1].max() > 90


def test_photo_blend_is_semi_transparent():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 200, (6, 64, 64, 3)).astype(np.uint8)
    out, masks = D._watermark(base, np.arange(6) % 4, rng)
    expected = np.rint(0.4 * base.astype(np.float32) + 0.6 * 255).astype(np.uint8)
    assert np.array_equal(out[masks], expected[masks]) and np.array_equal(out[~masks], base[~masks])
    white = np.full_like(base, 255)  # a white photo: the logo changes nothing, so nothing to mark
    out, masks = D._watermark(white, np.arange(6) % 4, rng)
    assert np.array_equal(out, white) and not masks.any()


def test_photo_classes_differ_in_pixels(photos):
    """The task is learnable: the clean crops' mean colour alone separates the photos fairly well."""
    p = photos["problem"]
    x = photos["clean_test"].reshape(len(p.clean_test.labels), -1, 3).mean(1)
    centroids = np.stack([x[p.clean_test.labels == c].mean(0) for c in range(4)])
    nearest = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == p.clean_test.labels) > 0.5


# --------------------------------------------------------------------------- text_tags

@pytest.fixture(scope="module")
def tags():
    return text_tags(0, n_train=200, n_test=100)


def tag_class(text: str, spans) -> int:
    (start, end), = spans
    hits = [c for c in (0, 1) if text[start:end] in TAGS[c]]
    assert len(hits) == 1, text[start:end]
    return hits[0]


def test_text_tags_spans_cover_the_tag(tags):
    tag_words = {t.text.lower() for family in TAGS for tg in family for t in tokenize(tg) if t.text.isalnum()}
    for split in (tags.train, tags.test, tags.clean_train):
        for task, spans in zip(split.tasks, split.confounders):
            text = task["data"]["text"]
            (start, end), = spans
            assert text[start:end] in TAGS[0] + TAGS[1]
            assert (start == 0 or text[start - 1] == " ") and text[end] in " ."
            outside = {t.text.lower() for t in tokenize(text[:start] + " " + text[end:])}
            assert not outside & tag_words and not outside & set("#[]@-")
    for task, spans in zip(tags.clean_test.tasks, tags.clean_test.confounders):
        assert spans == [] and not any(tg in task["data"]["text"] for family in TAGS for tg in family)


def test_text_tags_follow_the_label_only_in_training(tags):
    for split in (tags.train, tags.test, tags.clean_train, tags.clean_test):
        assert np.bincount(split.labels).tolist() == [len(split.labels) // 2] * 2
    train = [tag_class(t["data"]["text"], s) for t, s in zip(tags.train.tasks, tags.train.confounders)]
    test = [tag_class(t["data"]["text"], s) for t, s in zip(tags.test.tasks, tags.test.confounders)]
    assert np.array_equal(train, tags.train.labels)
    assert np.mean(np.array(test) == tags.test.labels) == 0.5
    # the clean bound trains with the tags present, independent of the label
    clean = [tag_class(t["data"]["text"], s) for t, s in zip(tags.clean_train.tasks, tags.clean_train.confounders)]
    assert np.array_equal(tags.clean_train.labels, tags.train.labels)
    assert np.mean(np.array(clean) == tags.clean_train.labels) == 0.5
    used = {t["data"]["text"][a:b] for t, ((a, b),) in zip(tags.train.tasks, tags.train.confounders)}
    assert used == set(TAGS[0] + TAGS[1])  # each class draws from its whole family


def test_text_tag_families_share_no_word():
    from benchmarks.xil.data import NEGATIVE, NEUTRAL, POSITIVE

    words = [{t.text.lower() for tg in family for t in tokenize(tg) if t.text.isalnum()} for family in TAGS]
    assert not words[0] & words[1]
    assert not (words[0] | words[1]) & set(POSITIVE + NEGATIVE + NEUTRAL)
    for family in TAGS:  # within a family, no two tags share a word either
        per_tag = [{t.text.lower() for t in tokenize(tg) if t.text.isalnum()} for tg in family]
        assert sum(map(len, per_tag)) == len(set().union(*per_tag))


# --------------------------------------------------------------------------- registry and determinism

def test_registry_and_determinism(tags):
    from benchmarks.xil.suite import PROBLEMS

    for name in ("pattern", "moving_mark", "class_tags", "photo_watermark"):
        assert name in D.PROBLEMS and name in PROBLEMS
    assert "text_tags" in TEXT_PROBLEMS and "text_tags" in PROBLEMS
    again = text_tags(0, n_train=200, n_test=100)
    assert again.train.tasks == tags.train.tasks and again.test.confounders == tags.test.confounders
    assert text_tags(1, n_train=200, n_test=100).train.tasks != tags.train.tasks
    a, b = D.photo_watermark(4, n_train=8, n_test=4), D.photo_watermark(4, n_train=8, n_test=4)
    assert a.train.tasks == b.train.tasks and a.clean_train.tasks == b.clean_train.tasks
    assert all(np.array_equal(x, y) for x, y in zip(a.test.confounders, b.test.confounders))
    assert D.photo_watermark(5, n_train=8, n_test=4).train.tasks != a.train.tasks
    c1, c2 = D.class_tags(2), D.class_tags(2)
    assert c1.train.tasks == c2.train.tasks and c1.clean_train.tasks == c2.clean_train.tasks
    assert all(np.array_equal(x, y) for x, y in zip(c1.train.confounders, c2.train.confounders))
    assert D.class_tags(3).train.tasks != c1.train.tasks


# --------------------------------------------------------------------------- decorrelated twins

@pytest.mark.parametrize("name", ["decoy_digits", "decoy_digits_4", "edge_stripe", "random_patch", "stamp"])
def test_a_decorrelated_twin_carries_the_confounder_independent_of_the_label(name):
    """Where the clean twin has no confounder, the decorrelated one has it, in a random class's shade,
    on the same digits and labels, and building it leaves the other sets as they were."""
    from benchmarks.xil.suite import PROBLEMS

    problem = PROBLEMS[name](0)
    twin = problem.decorrelated_train
    assert twin is not None and np.array_equal(twin.labels, problem.train.labels)
    train, clean, decorrelated = (decode_gray(s) for s in (problem.train, problem.clean_train, twin))
    changed = decorrelated != clean
    assert changed.reshape(len(changed), -1).any(1).mean() > 0.95  # the confounder is there

    def shade(images: np.ndarray, masks: np.ndarray) -> np.ndarray:  # the class a confounder's gray says (255 - 25 y)
        return np.array([int(round((255 - np.median(x[m])) / 25)) if m.any() else -1 for x, m in zip(images, masks)])

    labels = problem.train.labels
    if name != "stamp":  # a stamp is blended: its gray is not the shade
        assert (shade(train, train != clean) == labels).mean() > 0.9
        assert abs((shade(decorrelated, changed) == labels).mean() - 0.1) < 0.05
    assert set(problem.train.tasks[0]["data"]) == {"image"}
    assert PROBLEMS[name](0).train.tasks == problem.train.tasks  # deterministic


def test_decoy_text_has_a_decorrelated_twin():
    from benchmarks.xil.data import SPURIOUS, decoy_text

    problem = decoy_text(0, n_train=200, n_test=20)
    texts = [t["data"]["text"] for t in problem.decorrelated_train.tasks]
    token = np.array([int(SPURIOUS[1] in t) for t in texts])
    assert all(any(s in t for s in SPURIOUS) for t in texts)
    assert 0.35 < (token == problem.decorrelated_train.labels).mean() < 0.65
