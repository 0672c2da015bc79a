"""CAIPI counterexamples: only the marked region changes, each fill does what it says."""

from __future__ import annotations

import pytest
import torch

from ml_backend.training.strategies.counterexamples import image_counterexamples, text_counterexamples


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, 16, 20), generator=g) * 2 - 0.5  # a normalised-looking range


def _mask() -> torch.Tensor:
    mask = torch.zeros((16, 20), dtype=torch.bool)
    mask[2:9, 5:15] = True
    return mask


@pytest.mark.parametrize("fill", ["randomize", "substitute", "blur"])
def test_outside_unchanged_inside_changed(fill):
    x, mask = _image(), _mask()
    donors = torch.stack([_image(s) for s in (1, 2, 3)])
    out = image_counterexamples(x, mask, 4, fill=fill, donors=donors, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 20) and out.dtype == x.dtype
    assert torch.equal(out[:, :, ~mask], x[:, ~mask].expand(4, -1, -1))
    inside = out[:, :, mask]
    assert (inside != x[:, mask]).float().mean() > 0.95


def test_randomize_stays_in_each_channels_range_and_copies_differ():
    x = _image()
    x[1] = x[1] * 0.1 + 5.0  # channel 1 lives in a very different range
    mask = _mask()
    out = image_counterexamples(x, mask, 3, generator=torch.Generator().manual_seed(1))
    for ch in range(3):
        vals = out[:, ch][:, mask]
        assert vals.min() >= x[ch].min() and vals.max() <= x[ch].max()
    assert not torch.equal(out[0], out[1])


def test_seeded_generator_is_deterministic():
    x, mask = _image(), _mask()
    donors = torch.stack([_image(s) for s in range(1, 6)])
    for fill in ("randomize", "substitute"):
        a = image_counterexamples(x, mask, 5, fill=fill, donors=donors, generator=torch.Generator().manual_seed(7))
        b = image_counterexamples(x, mask, 5, fill=fill, donors=donors, generator=torch.Generator().manual_seed(7))
        c = image_counterexamples(x, mask, 5, fill=fill, donors=donors, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
    ids = torch.arange(1, 13)
    marked = ids % 2 == 0
    t1 = text_counterexamples(ids, marked, 4, 1000, generator=torch.Generator().manual_seed(3))
    t2 = text_counterexamples(ids, marked, 4, 1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)


def test_substitute_takes_pixels_from_one_donor_per_copy():
    x, mask = _image(), _mask()
    donors = torch.stack([torch.full((3, 16, 20), float(v)) for v in (10, 20, 30)])
    out = image_counterexamples(
        x, mask, 12, fill="substitute", donors=donors, generator=torch.Generator().manual_seed(0)
    )
    used = set()
    for copy in out:
        inside = copy[:, mask]
        assert inside.unique().numel() == 1  # one donor fills the whole region
        used.add(inside[0, 0].item())
    assert used <= {10.0, 20.0, 30.0} and len(used) > 1


def test_substitute_without_donors_randomizes():
    x, mask = _image(), _mask()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for donors in (None, torch.empty((0, 3, 16, 20))):
        sub = image_counterexamples(x, mask, 2, fill="substitute", donors=donors, generator=g())
        rnd = image_counterexamples(x, mask, 2, fill="randomize", generator=g())
        assert torch.equal(sub, rnd)


def test_blur_fills_with_a_local_mean():
    x = torch.zeros((1, 32, 32))
    x[:, :, 16:] = 1.0  # left half dark, right half bright; fine checker detail on the right
    x[:, ::2, 16::2] = 0.0
    mask = torch.zeros((32, 32), dtype=torch.bool)
    mask[8:24, 20:28] = True
    out = image_counterexamples(x, mask, 2, fill="blur")
    region = out[0, 0][mask]
    assert torch.equal(out[0], out[1])
    assert region.std() < 0.1  # the checker pattern is gone
    assert 0.5 < region.mean() < 0.85  # but the region keeps its local brightness (~0.75)


def test_integer_images_keep_their_dtype():
    x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros((8, 8), dtype=torch.bool)
    mask[:4] = True
    for fill in ("randomize", "blur"):
        out = image_counterexamples(x, mask, 2, fill=fill, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.uint8
        assert torch.equal(out[:, :, 4:], x[:, 4:].expand(2, -1, -1, -1))


def test_empty_mask_and_zero_copies():
    x = _image()
    out = image_counterexamples(x, torch.zeros((16, 20), dtype=torch.bool), 3)
    assert torch.equal(out, x.expand(3, -1, -1, -1))
    assert image_counterexamples(x, _mask(), 0).shape == (0, 3, 16, 20)


def test_image_argument_errors():
    x = _image()
    with pytest.raises(ValueError, match="irrelevant mask"):
        image_counterexamples(x, torch.ones((16, 16), dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="fill"):
        image_counterexamples(x, _mask(), 2, fill="noise")
    with pytest.raises(ValueError, match="donors"):
        image_counterexamples(x, _mask(), 2, fill="substitute", donors=torch.zeros((2, 1, 16, 20)))
    with pytest.raises(ValueError, match="x must be"):
        image_counterexamples(x[0], _mask(), 2)


def test_text_replaces_marked_non_pad_tokens_only():
    ids = torch.tensor([5, 9, 12, 7, 3, 0, 0, 0])
    marked = torch.tensor([False, True, True, False, True, False, True, False])  # one marked pad position
    out = text_counterexamples(ids, marked, 50, n_buckets=16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (50, 8) and out.dtype == ids.dtype
    keep = ~marked | (ids == 0)
    assert torch.equal(out[:, keep], ids[keep].expand(50, -1))
    changed = out[:, marked & (ids != 0)]
    assert (changed != ids[marked & (ids != 0)]).all()  # always a different id
    assert changed.min() >= 1 and changed.max() < 16
    assert changed.unique().numel() > 5  # spread over the vocabulary, not one fixed id


def test_text_argument_errors():
    with pytest.raises(ValueError):
        text_counterexamples(torch.tensor([1, 2]), torch.tensor([True]), 2, 100)
    with pytest.raises(ValueError):
        text_counterexamples(torch.tensor([1, 2]), torch.tensor([True, False]), 2, 2)


def test_a_marked_word_becomes_another_marked_word_never_itself():
    from ml_backend.data.text import substitute_marked_ids

    ids = torch.tensor([5, 7, 9, 7])
    marked = torch.tensor([False, True, False, True])
    pool = torch.tensor([7, 11, 13])
    out = substitute_marked_ids(ids, marked, 50, pool, torch.Generator().manual_seed(0))
    assert out.shape == (50, 4)
    assert torch.equal(out[:, [0, 2]], ids[[0, 2]].expand(50, 2))
    assert set(out[:, [1, 3]].flatten().tolist()) == {11, 13}
    with pytest.raises(ValueError):
        substitute_marked_ids(ids, marked, 1, torch.tensor([7]))


def test_a_marked_phrase_becomes_another_whole_marked_phrase_and_the_rest_shifts():
    from ml_backend.data.text import marked_spans, substitute_marked_spans

    rows = torch.tensor([[5, 21, 22, 23, 6, 0, 0, 0], [31, 32, 8, 9, 0, 0, 0, 0]])
    marks = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    spans = marked_spans(rows, marks)
    assert spans == [(21, 22, 23), (31, 32)]
    out = substitute_marked_spans(rows[0], marks[0], 20, spans + [(41,)], torch.Generator().manual_seed(0))
    assert out.shape == (20, 8) and out.dtype == rows.dtype
    seen = {tuple(r.tolist()) for r in out}
    # the phrase is never itself; the words around it stay, in order, and the row is re-padded
    assert seen == {(5, 31, 32, 6, 0, 0, 0, 0), (5, 41, 6, 0, 0, 0, 0, 0)}
    longer = substitute_marked_spans(rows[1], marks[1], 3, [(1, 2, 3, 4, 5, 6, 7)], torch.Generator())
    assert longer.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]] * 3  # cut to the row's length
    # a run with no other span to become: the caller falls back to word-level substitution
    assert substitute_marked_spans(rows[1], marks[1], 3, [(31, 32)]) is None


def test_text_counterexamples_of_the_strategy_swap_whole_phrases_between_classes():
    from ml_backend.models import adapt
    from ml_backend.models.text import TextCNN
    from ml_backend.training.sets import TrainingSet
    from ml_backend.training.strategies.counterexamples import Counterexamples

    model = adapt(TextCNN(2, n_buckets=64, embed_dim=8, channels=8, dropout=0.0))
    x = torch.tensor([[5, 21, 22, 23, 6, 0, 0, 0], [7, 31, 32, 33, 8, 0, 0, 0], [9, 10, 11, 0, 0, 0, 0, 0]])
    irrelevant = torch.zeros_like(x, dtype=torch.bool)
    irrelevant[0, 1:4] = irrelevant[1, 1:4] = True
    data = TrainingSet(x, torch.tensor([0, 1, 0]), irrelevant, torch.zeros_like(irrelevant))
    out = Counterexamples(copies=2).augment(data, model, seed=0)
    added = out.x[len(data):].tolist()
    assert added == [[5, 31, 32, 33, 6, 0, 0, 0]] * 2 + [[7, 21, 22, 23, 8, 0, 0, 0]] * 2
    assert out.y[len(data):].tolist() == [0, 0, 1, 1]


def test_a_propagated_background_mark_replaces_its_original_and_a_small_one_keeps_it():
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.training.sets import TrainingSet
    from ml_backend.training.strategies.counterexamples import Counterexamples

    x = torch.rand(4, 1, 8, 8)
    irrelevant = torch.zeros(4, 8, 8, dtype=torch.bool)
    irrelevant[0, :4] = True  # corrected by the annotator: a background, original kept
    irrelevant[1, :4] = True  # the same background, propagated: replaced by its copy
    irrelevant[2, :1, :2] = True  # a small propagated mark: original kept
    propagated = torch.tensor([False, True, True, False])
    data = TrainingSet(x, torch.tensor([0, 1, 0, 1]), irrelevant, torch.zeros_like(irrelevant), propagated)
    out = Counterexamples(copies=2).augment(data, adapt(ImageCNN(2, 1, 8)), seed=0)
    originals = [i for i in range(4) if any(torch.equal(x[i], row) for row in out.x)]
    assert originals == [0, 2, 3]
    assert len(out) == 3 + 2 + 1 + 1  # three originals; copies: 2 (corrected), 1 and 1 (propagated)
    assert out.y.tolist() == [0, 0, 1, 0, 0, 1, 0]
    # each copy names its original's row (the frozen head ties their logits); a replaced one has none
    assert out.source.tolist() == [-1, -1, -1, 0, 0, -1, 1]
    assert torch.equal(out.x[6][:, ~irrelevant[2]], x[2][:, ~irrelevant[2]])
    # rows dropped later take their copies' link with them; the rest follow their rows
    assert out.grown(torch.arange(1, 7), 0).source.tolist() == [-1, -1, -1, -1, -1, 0]


def test_a_corrections_copies_are_the_same_in_every_version_as_the_project_grows():
    """Copies depend on the example and its mark, not on the fit's seed (the version) or on the
    tasks added since: a frozen backbone's feature cache holds them from one version to the next."""
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.training.sets import TrainingSet
    from ml_backend.training.strategies.counterexamples import Counterexamples

    g = torch.Generator().manual_seed(0)
    x = torch.rand(201, 3, 16, 16, generator=g)
    y = torch.arange(201) % 2
    irrelevant = torch.zeros(201, 16, 16, dtype=torch.bool)
    irrelevant[:40, :4, :4] = True
    model = adapt(ImageCNN(2, 3, 16))

    def copies(n: int, seed: int) -> torch.Tensor:
        data = TrainingSet(x[:n], y[:n], irrelevant[:n], torch.zeros_like(irrelevant[:n]))
        return Counterexamples(copies=3).augment(data, model, seed=seed).x[n:]

    before, after = copies(200, seed=7), copies(201, seed=8)  # the next version, one task more
    assert before.shape == after.shape == (120, 3, 16, 16)
    same = sum(bool(torch.equal(a, b)) for a, b in zip(before, after))
    assert same >= 0.8 * len(before), same  # a new task displaces one of 16 donors now and then
    assert not torch.equal(before[0], before[1])  # the copies of one example still differ
    assert not torch.equal(before[:, :, :4, :4], x[:40].repeat_interleave(3, 0)[:, :, :4, :4])


def _digit_on(background: float) -> torch.Tensor:
    """A 28 px object (a bright bar) on a flat background, upsampled to 112 px as a processor does:
    the object's edge blends into the background over a few pixels."""
    small = torch.full((1, 3, 28, 28), background)
    small[:, :, 6:22, 11:17] = 1.0
    return torch.nn.functional.interpolate(small, size=112, mode="bilinear", align_corners=False)[0]


def test_a_background_fill_moves_the_blended_rim_with_the_background():
    """The copy of an upsampled image with its background recoloured looks like the same object
    upsampled on the new background: no rim of the old shade is left around the object."""
    old, new = 0.4, 0.05
    x, truth = _digit_on(old), _digit_on(new)
    mask = (x - old).abs().amax(dim=0) < 0.02  # the background as a colour rule finds it: not the rim
    assert mask.float().mean() > 0.25
    donor = torch.full((1, 3, 112, 112), new)
    copy = image_counterexamples(x, mask, 1, fill="substitute", donors=donor)[0]
    rim = ~mask & ((x - truth).abs().amax(dim=0) > 0.05)  # where the old shade is blended into the object
    assert rim.sum() > 50
    hard = torch.where(mask, torch.tensor(new), x)
    assert (hard - truth)[:, rim].abs().mean() > 0.1  # a hard fill leaves the old shade there
    assert (copy - truth)[:, rim].abs().mean() < 0.5 * (hard - truth)[:, rim].abs().mean()
    assert torch.allclose(copy[:, mask], torch.tensor(new))
    inner = ~mask & ~torch.nn.functional.max_pool2d(mask.float()[None], 9, stride=1, padding=4)[0].bool()
    assert inner.any()
    assert torch.equal(copy[:, inner], x[:, inner])  # the object's inside is untouched


def test_a_small_image_keeps_a_hard_background_fill():
    x = torch.rand(3, 28, 28)
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[:14] = True
    donor = torch.full((1, 3, 28, 28), 0.5)
    copy = image_counterexamples(x, mask, 1, fill="substitute", donors=donor)[0]
    assert torch.equal(copy[:, ~mask], x[:, ~mask]) and torch.allclose(copy[:, mask], torch.tensor(0.5))


def test_a_marked_background_is_refilled_with_another_tasks_background_content_not_its_colour():
    """Pattern for pattern: a counterexample of a task whose background (a grating here) follows
    its class gets a donor's grating, read from around the donor's own object, and no object pixel."""
    from ml_backend.training.strategies.counterexamples import background_content

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def task(period: float, cy: int, cx: int) -> tuple[torch.Tensor, torch.Tensor]:
        obj = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 36
        grating = 0.3 + 0.2 * torch.sin(2 * torch.pi * xx / period)
        return torch.where(obj, torch.ones(()), grating).expand(3, -1, -1).clone(), ~obj

    x, mask = task(4.0, 16, 16)
    donor, donor_mask = task(8.0, 10, 22)
    filled = background_content(donor, donor_mask, torch.full((3,), 0.3))
    assert float(filled.max()) <= 0.5 + 1e-6  # none of the donor's object came along
    row = filled[0, 16]  # the donor's period (8 px), also where its object was
    assert torch.allclose(row, 0.3 + 0.2 * torch.sin(2 * torch.pi * torch.arange(32.0) / 8.0), atol=1e-5)

    out = image_counterexamples(x, mask, 2, fill="substitute", donors=donor[None], donor_masks=donor_mask[None],
                                generator=torch.Generator().manual_seed(0))
    for copy in out:
        assert torch.equal(copy[:, ~mask], x[:, ~mask])  # the object is kept
        assert torch.allclose(copy[:, mask], filled[:, mask])
    # without the donor's marks, the donor's background colour as before
    flat = image_counterexamples(x, mask, 1, fill="substitute", donors=donor[None],
                                 generator=torch.Generator().manual_seed(0))
    assert flat[0, :, mask].std() < 1e-6


def _marked(side: int, top: int, left: int, shade: float, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark image with a digit-like bar and a ``shade`` square of ``side`` px at (top, left)."""
    x = torch.zeros((1, size, size))
    x[0, 8:20, 12:15] = 1.0
    mark = torch.zeros((size, size), dtype=torch.bool)
    mark[top:top + side, left:left + side] = True
    x[0][mark] = shade
    return x, mark


def test_a_small_mark_becomes_the_donors_mark_of_another_shade_at_its_own_place():
    """A patch for a patch: a 4-px mark in shade 0.5 gets a donor's 8-px mark's shade (0.8),
    scaled onto its own box; nothing outside the mark moves."""
    x, mask = _marked(4, 2, 3, 0.5)
    donor, donor_mask = _marked(8, 18, 18, 0.8)
    out = image_counterexamples(x, mask, 2, fill="substitute", donors=donor[None], donor_masks=donor_mask[None],
                                generator=torch.Generator().manual_seed(0))
    for copy in out:
        assert torch.equal(copy[:, ~mask], x[:, ~mask])
        assert torch.allclose(copy[:, mask], torch.full_like(copy[:, mask], 0.8))
    # without the donor's marks: the donor's pixels at the same place (its dark background)
    erased = image_counterexamples(x, mask, 1, fill="substitute", donors=donor[None],
                                   generator=torch.Generator().manual_seed(0))
    assert float(erased[0, :, mask].abs().max()) == 0.0


def test_a_patch_that_would_leave_the_mark_as_it_was_erases_it():
    """Marks that differ by shape only (one-gray glyphs): the patch would change nothing under the
    mark, so the copy erases it with the donor's pixels at the same place instead."""
    x, mask = _marked(5, 0, 0, 0.8)
    donor, donor_mask = _marked(5, 23, 23, 0.8)
    out = image_counterexamples(x, mask, 1, fill="substitute", donors=donor[None], donor_masks=donor_mask[None],
                                generator=torch.Generator().manual_seed(0))
    assert float(out[0, :, mask].abs().max()) == 0.0
    assert torch.equal(out[0, :, ~mask], x[:, ~mask])


def test_a_glyph_becomes_the_donors_glyph_in_its_own_corner():
    """Marks that differ by shape: the donor's glyph is drawn in the task's corner, over the
    background around the task's own glyph, whose other pixels are erased."""
    x = torch.zeros((1, 28, 28))
    x[0, 8:20, 12:15] = 1.0
    plus = torch.zeros((28, 28), dtype=torch.bool)
    plus[2, 0:5] = plus[0:5, 2] = True
    x[0][plus] = 0.8
    donor = torch.zeros((1, 28, 28))
    cross = torch.zeros((28, 28), dtype=torch.bool)
    for i in range(5):
        cross[23 + i, 23 + i] = cross[23 + i, 27 - i] = True
    donor[0][cross] = 0.8
    out = image_counterexamples(x, plus, 1, fill="substitute", donors=donor[None], donor_masks=cross[None],
                                generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(out[0, :5, :5] > 0, cross[23:, 23:])
    assert torch.equal(out[:, 5:, :], x[:, 5:, :]) and torch.equal(out[:, :, 5:], x[:, :, 5:])
