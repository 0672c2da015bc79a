"""Image corrections generalise by what was marked (feedback/concepts.py), never onto the object."""
import numpy as np
import pytest
import torch

from ml_backend.feedback.concepts import generalise_marks

SIZE = 28


def blob(rng: np.random.Generator) -> np.ndarray:
    """(S, S) a bright blurry blob near the centre on a dark image: the object."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(10, 18, 2)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2.5, 4) ** 2))


def scene(rng: np.random.Generator, n: int, swatch: str = "corner") -> tuple[torch.Tensor, torch.Tensor]:
    """Dark images with a bright blurry blob (the object) and a flat square of a random shade
    (the confounder) at a random corner or anywhere; returns images (N, 1, S, S) and truth masks."""
    x = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    truth = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        x[i, 0] = blob(rng)
        if swatch == "corner":
            r, c = [(0, 0), (0, SIZE - 4), (SIZE - 4, 0), (SIZE - 4, SIZE - 4)][rng.integers(4)]
        else:
            r, c = rng.integers(0, SIZE - 4, 2)
        x[i, 0, r:r + 4, c:c + 4] = rng.uniform(0.2, 1.0)
        truth[i, r:r + 4, c:c + 4] = True
    return torch.from_numpy(x), torch.from_numpy(truth)


def marked(truth: torch.Tensor, tasks: list[int]) -> torch.Tensor:
    out = torch.zeros_like(truth)
    out[tasks] = truth[tasks]
    return out


def precision_recall(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    hit = int((pred & truth).sum())
    return hit / max(int(pred.sum()), 1), hit / max(int(truth.sum()), 1)


# a swatch over the object is a different picture from one on the background: fewer are found
@pytest.mark.parametrize("where, min_recall", [("corner", 0.9), ("anywhere", 0.6)])
def test_a_marked_swatch_is_found_wherever_it_sits_and_whatever_its_shade(where, min_recall):
    x, truth = scene(np.random.default_rng(0), 60, where)
    irrelevant = marked(truth, [0, 1, 2, 3])
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant))
    assert "template" in out.rules
    precision, recall = precision_recall(out.irrelevant[4:], truth[4:])
    assert precision >= 0.9 and recall >= min_recall, (precision, recall)
    assert out.added[4:].float().mean() >= min_recall and not out.added[:4].any()
    # the swatch moves: "the same pixels" is not a rule the marks support
    assert "position" not in out.rules


def test_marks_that_name_no_recurring_concept_stay_where_they_are():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((40, 1, SIZE, SIZE)).astype(np.float32))  # texture everywhere
    irrelevant = torch.zeros(40, SIZE, SIZE, dtype=torch.bool)
    for i, (r, c) in enumerate([(2, 3), (15, 9), (8, 20)]):
        irrelevant[i, r:r + 4, c:c + 4] = True  # three unrelated places of unrelated noise
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant))
    assert torch.equal(out.irrelevant, irrelevant) and not out.added.any() and out.pixels == 0


def test_a_relevant_mark_is_never_overridden():
    x, truth = scene(np.random.default_rng(2), 30)
    irrelevant = marked(truth, [0, 1, 2])
    relevant = torch.zeros_like(irrelevant)
    relevant[10] = truth[10]  # this task's annotator says its swatch matters
    out = generalise_marks(x, irrelevant, relevant)
    assert not (out.irrelevant & relevant).any()
    assert (out.irrelevant[11:] & truth[11:]).any()


def test_a_background_shaded_by_class_is_found_in_every_image_but_not_the_object():
    rng = np.random.default_rng(3)
    x, _ = scene(rng, 40)
    obj = x[:, 0] > 0.5
    shades = torch.from_numpy(rng.uniform(0.05, 0.3, 40).astype(np.float32))
    background = ~obj
    images = torch.where(obj, x[:, 0], shades[:, None, None]).unsqueeze(1)
    irrelevant = marked(background, [0, 1, 2])
    out = generalise_marks(images, irrelevant, torch.zeros_like(irrelevant))
    assert "background" in out.rules
    precision, recall = precision_recall(out.irrelevant[3:], background[3:])
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    assert not (out.irrelevant[3:] & obj[3:]).any()


def test_one_correction_is_not_enough_to_generalise():
    x, truth = scene(np.random.default_rng(4), 10)
    irrelevant = marked(truth, [0])
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant))
    assert torch.equal(out.irrelevant, irrelevant) and not out.added.any()


def test_large_images_match_at_a_working_size_and_return_full_size_marks():
    x, truth = scene(np.random.default_rng(5), 20)
    big = torch.nn.functional.interpolate(x, scale_factor=6, mode="nearest")  # 168 px
    big_truth = truth.repeat_interleave(6, 1).repeat_interleave(6, 2)
    irrelevant = marked(big_truth, [0, 1, 2])
    out = generalise_marks(big, irrelevant, torch.zeros_like(irrelevant))
    assert out.irrelevant.shape == big_truth.shape
    precision, recall = precision_recall(out.irrelevant[3:], big_truth[3:])
    assert precision >= 0.85 and recall >= 0.85, (precision, recall)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        generalise_marks(torch.zeros(2, 1, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool),
                         torch.zeros(2, 4, 4, dtype=torch.bool))


def textured_scene(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat mid-gray disc (the object) on a high-contrast grating (the confounder) of random
    angle, period and phase: the background's pixels span the object's shade on both sides."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    x = np.zeros((n, 3, SIZE, SIZE), dtype=np.float32)
    truth = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        cy, cx = rng.uniform(10, 18, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4, 6.5) ** 2
        angle, period = rng.choice([0, np.pi / 2, np.pi / 4]), rng.choice([4, 7])
        grating = 0.5 + 0.4 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period
                                     + rng.uniform(0, 2 * np.pi))
        x[i] = np.where(disc, 0.5, grating)
        truth[i] = ~disc
    return torch.from_numpy(x), torch.from_numpy(truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_texture_the_pixel_rules_cannot_tell_from_the_object_is_found_in_the_models_features(seed):
    from ml_backend.models.cnn import CNNKind, ImageCNN

    x, truth = textured_scene(np.random.default_rng(seed), 80)
    torch.manual_seed(seed)
    kind = CNNKind(ImageCNN(n_classes=3, image_size=SIZE, in_channels=3))  # even untrained features tell textures apart
    irrelevant = marked(truth, [0, 1, 2])
    pixels = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant), rules=("position", "background", "template"))
    # the border-colour rule would mark the disc too (it is as gray as the grating's middle): refused
    assert not pixels.rules and torch.equal(pixels.irrelevant, irrelevant)
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant),
                           features=lambda rows: kind.region_features(x[rows]))
    assert list(out.rules) == ["feature"]
    precision, recall = precision_recall(out.irrelevant[3:], truth[3:])
    disc_marked = int((out.irrelevant[3:] & ~truth[3:]).sum()) / int((~truth[3:]).sum())
    # the disc's rim is where its cells see the grating too: at most a thin ring of it is marked
    assert precision >= 0.95 and recall >= 0.85 and disc_marked <= 0.35, (precision, recall, disc_marked)


def test_the_feature_rule_is_not_asked_where_a_position_already_explains_the_marks():
    """Matching every labelled task in the model's features is a backbone pass over each: a
    project whose marks a pixel rule explains must not pay for it in every training."""
    x, truth = scene(np.random.default_rng(3), 60)
    truth[:] = False
    truth[:, :4, :4] = True  # the same corner on every task
    asked = []
    out = generalise_marks(x, marked(truth, [0, 1, 2, 3]), torch.zeros_like(truth),
                           features=lambda rows: asked.append(len(rows)) or torch.randn(len(rows), 8, 7, 7))
    assert list(out.rules) == ["position"] and asked == []
    assert torch.equal(out.irrelevant, truth)


def test_a_new_task_leaves_the_other_tasks_feature_marks_as_they_were_unless_it_joins_the_statistics():
    """The next version's marks stay those of the last one where nothing about them changed: the
    counterexample copies made from them are then the same, and a frozen backbone's feature cache
    holds them. The channels' statistics come from a sample of the tasks that a new task enters
    only if its content hashes among the lowest (with probability STATISTICS_TASKS / N)."""
    from ml_backend.feedback.concepts import STATISTICS_TASKS, _stable_sample
    from ml_backend.models.cnn import CNNKind, ImageCNN

    unchanged = 0
    for seed in range(3):
        x, truth = textured_scene(np.random.default_rng(seed), 201)
        torch.manual_seed(seed)
        kind = CNNKind(ImageCNN(n_classes=3, image_size=SIZE, in_channels=3))
        irrelevant = marked(truth, [0, 1, 2])
        sources = torch.tensor([0, 1, 2])
        before, after = (set(_stable_sample(x[:n], sources, STATISTICS_TASKS).tolist()) for n in (200, 201))
        assert len(before) == len(after) == STATISTICS_TASKS and after - before <= {200}
        if after != before:
            continue
        outs = [generalise_marks(x[:n], irrelevant[:n], torch.zeros_like(irrelevant[:n]),
                                 features=lambda rows: kind.region_features(x[rows])) for n in (200, 201)]
        assert list(outs[0].rules) == ["feature"]
        assert torch.equal(outs[1].irrelevant[:200], outs[0].irrelevant)
        unchanged += 1
    assert unchanged >= 1


def tagged_scene(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A blob (the object) and a class's own glyph, all one gray, flush in a random corner;
    returns images, truth masks (the glyph's pixels) and classes."""
    glyphs = [np.array(g, dtype=bool) for g in (
        [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],
        [[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]],
        [[0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]],
    )]
    x, truth = scene(rng, n)
    x[:, 0][truth] = 0.0  # no swatch: a glyph instead
    truth[:] = False
    classes = rng.integers(0, len(glyphs), n)
    for i, cls in enumerate(classes):
        glyph = glyphs[cls]
        h, w = glyph.shape
        r, c = [(0, 0), (0, SIZE - w), (SIZE - h, 0), (SIZE - h, SIZE - w)][rng.integers(4)]
        x[i, 0, r:r + h, c:c + w][torch.from_numpy(glyph)] = 0.8
        truth[i, r:r + h, c:c + w] = torch.from_numpy(glyph)
    return x, truth, classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_classs_tags_carry_to_every_classs_tag_by_the_place_they_share(seed):
    """Corrections from one class show one glyph; the others share its slots (the corners), not
    its shape: a template of that glyph cannot find them, the places they recur in do."""
    x, truth, classes = tagged_scene(np.random.default_rng(seed), 90)
    corrected = np.flatnonzero(classes == 0)[:6].tolist()
    irrelevant = marked(truth, corrected)
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant))
    assert "place" in out.rules
    rest = np.setdiff1d(np.arange(90), corrected)
    for cls in (1, 2):  # classes no correction showed
        tasks = rest[classes[rest] == cls]
        precision, recall = precision_recall(out.irrelevant[tasks], truth[tasks])
        assert precision >= 0.9 and recall >= 0.9, (cls, precision, recall)
    pixel_rules_only = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant),
                                        rules=("position", "background", "template"))
    tasks = rest[classes[rest] != 0]
    assert precision_recall(pixel_rules_only.irrelevant[tasks], truth[tasks])[1] < 0.5


def _moving_marks(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A blurry object, and a flat square or disk of side 3..8 and a random shade anywhere."""
    x = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    truth = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        x[i, 0] = blob(rng)
        side = int(rng.integers(3, 9))
        r, c = rng.integers(0, SIZE - side, 2)
        py, px = np.mgrid[:side, :side] - (side - 1) / 2
        shape = (py ** 2 + px ** 2 <= (side / 2) ** 2) if rng.integers(2) else np.ones((side, side), dtype=bool)
        x[i, 0, r:r + side, c:c + side][shape] = rng.uniform(0.3, 1.0)
        truth[i, r:r + side, c:c + side] = shape
    return torch.from_numpy(x), torch.from_numpy(truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flat_mark_of_any_size_shape_and_place_is_found_by_being_flat(seed):
    """No template matches a square of another size or a disk, and no place recurs: the marks are
    flat patches, the object is not, and the flat rule finds the other tasks' marks without it."""
    x, truth = _moving_marks(np.random.default_rng(seed), 60)
    irrelevant = marked(truth, list(range(6)))
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant))
    assert "flat" in out.rules
    precision, recall = precision_recall(out.irrelevant[6:], truth[6:])
    assert precision >= 0.9 and recall >= 0.8, (precision, recall)
    without = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant),
                               rules=("position", "place", "background", "template"))
    assert precision_recall(without.irrelevant[6:], truth[6:])[1] < recall - 0.3


def test_the_flat_rule_does_not_mark_smooth_content_the_annotators_left_alone():
    """Marks on smooth, unflat content (a blurry object's shoulder) name no flat patch: the rule finds
    nothing it could validate and the marks stay where they are."""
    x, _ = scene(np.random.default_rng(3), 40)
    irrelevant = torch.zeros(40, SIZE, SIZE, dtype=torch.bool)
    for i in range(4):
        irrelevant[i, 12:16, 12:16] = True  # on the object, not flat
    out = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant), rules=("flat",))
    assert "flat" not in out.rules and not out.added.any()
