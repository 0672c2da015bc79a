import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import slic

from ml_backend.data.text import Token, tokenize
from ml_backend.explain import regions
from ml_backend.explain.regions import evidence_mask, evidence_regions, mask_regions, token_spans
from ml_backend.models.cnn import CNNKind, ImageCNN

RAW = dict(sigma=0.0, morph_radius=0, min_size_frac=0.0)  # thresholding only


def blob(shape=(64, 64), centre=(20, 40), radius=8.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius**2)).astype(np.float32)


@pytest.mark.parametrize("keep_mass", [0.05, 0.2, 0.5, 0.9])
def test_keep_mass_is_the_smallest_top_set(keep_mass):
    rel = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    mask = evidence_mask(rel, keep_mass, **RAW)
    total, kept = rel.sum(), rel[mask].sum()
    assert kept >= keep_mass * total
    assert kept - rel[mask].min() < keep_mass * total  # one pixel fewer would not do
    assert rel[mask].min() >= rel[~mask].max()  # the highest pixels, not any pixels


def test_default_mask_is_compact_and_on_the_evidence():
    rel = blob()
    mask = evidence_mask(rel, 0.2)
    assert mask.dtype == bool and mask.shape == rel.shape
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - 20) < 1.5 and abs(xs.mean() - 40) < 1.5
    assert rel[mask].sum() >= 0.15 * rel.sum()
    assert mask.sum() < 0.1 * mask.size


def test_isolated_pixels_are_removed_by_opening():
    rel = blob() * 0.1
    rel[60, 5] = rel[5, 60] = 5.0  # the two brightest pixels, alone
    assert evidence_mask(rel, 0.6, **RAW)[60, 5]
    mask = evidence_mask(rel, 0.6, sigma=0.0)
    assert not mask[60, 5] and not mask[5, 60]
    assert mask[20, 40]


def test_small_components_are_removed_relative_to_area():
    rel = blob()
    rel[58:61, 3:6] = 1.0  # a 3x3 speck: survives opening, not the size filter
    kept = evidence_mask(rel, 0.3, sigma=0.0, min_size_frac=0.0)
    removed = evidence_mask(rel, 0.3, sigma=0.0, min_size_frac=0.01)  # 41 px at 64x64
    assert kept[59, 4] and not removed[59, 4]
    assert removed[20, 40]


def test_clean_up_never_erases_all_evidence():
    rel = np.zeros((64, 64), np.float32)
    rel[10, 10] = 1.0
    mask = evidence_mask(rel, 0.5, sigma=0.0)
    assert mask[10, 10]


@pytest.mark.parametrize("rel", [np.zeros((16, 16)), np.full((16, 16), np.nan), -np.ones((16, 16))])
def test_no_evidence_gives_an_empty_mask(rel):
    mask = evidence_mask(rel, 0.2, out_shape=(30, 20))
    assert mask.shape == (30, 20) and mask.dtype == bool and not mask.any()


def test_nan_and_inf_entries_are_ignored():
    rel = blob()
    rel[0, 0], rel[0, 1] = np.nan, np.inf
    mask = evidence_mask(rel, 0.2)
    assert mask[20, 40] and not mask[0, 0]


def test_out_shape_is_honoured_and_keeps_the_place():
    mask = evidence_mask(blob((64, 64), centre=(16, 48)), 0.2, out_shape=(300, 150))
    assert mask.shape == (300, 150)
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() / 300 - 16 / 64) < 0.03 and abs(xs.mean() / 150 - 48 / 64) < 0.03


def test_upsampled_mask_matches_its_own_resolution():
    small = evidence_mask(blob(), 0.3)
    big = evidence_mask(blob(), 0.3, out_shape=(512, 512))
    down = big[4::8, 4::8]  # the centre of each 8x8 block
    assert (down == small).mean() > 0.99


def test_large_relevance_maps_are_processed_on_a_small_grid():
    rel = blob((512, 512), centre=(160, 320), radius=64.0)
    mask = evidence_mask(rel, 0.2, sigma=0.0, morph_radius=0)
    assert mask.shape == (512, 512)
    assert 0.18 * rel.sum() <= rel[mask].sum() <= 0.25 * rel.sum()


def test_slic_snapping_gives_superpixel_aligned_masks():
    rng = np.random.default_rng(0)
    image = np.kron(rng.random((4, 4, 3)), np.ones((16, 16, 1)))  # 16 flat colour patches
    rel = blob(radius=6.0)
    plain = evidence_mask(rel, 0.3)
    snapped = evidence_mask(rel, 0.3, slic_image=image, slic_segments=16)
    segments = slic(image, n_segments=16, start_label=0, channel_axis=-1)
    assert snapped.any() and not np.array_equal(snapped, plain)
    for s in np.unique(segments):
        inside = snapped[segments == s]
        assert inside.all() or not inside.any()


def two_blobs():
    rel = blob(centre=(16, 16), radius=4.0) + 0.5 * blob(centre=(48, 48), radius=4.0)
    return rel, evidence_mask(rel, 0.9, sigma=0.0)


def test_components_split_a_mask_and_merged_keeps_it():
    rel, mask = two_blobs()
    merged = mask_regions(mask, rel, "merged")
    parts = mask_regions(mask, rel, "components")
    assert len(merged) == 1 and np.array_equal(merged[0][0], mask)
    assert len(parts) == 2
    (first, s1), (second, s2) = parts
    assert first[16, 16] and second[48, 48] and not (first & second).any()
    assert np.array_equal(first | second, mask)
    assert 1.0 >= s1 > s2 > 0
    assert s1 + s2 == pytest.approx(merged[0][1], abs=1e-6)
    assert merged[0][1] == pytest.approx(rel[mask].sum() / rel.sum(), rel=1e-5)


def test_region_scores_with_relevance_at_another_resolution():
    rel, mask = two_blobs()
    big = np.kron(mask, np.ones((4, 4), bool))
    score = mask_regions(big, rel, "merged")[0][1]
    assert score == pytest.approx(rel[mask].sum() / rel.sum(), rel=1e-5)


def test_region_edge_cases():
    assert mask_regions(np.zeros((8, 8), bool), np.ones((8, 8)), "components") == []
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    assert mask_regions(mask, None, "merged")[0][1] == 1.0
    assert mask_regions(mask, np.zeros((8, 8)), "merged")[0][1] == 0.0
    with pytest.raises(ValueError):
        mask_regions(mask, None, "polygons")


def _old_upsample(mask, shape):
    # the whole-grid bilinear upsampling served before
    r0, r1, t = regions._bilinear_axis(mask.shape[0], shape[0])
    c0, c1, u = regions._bilinear_axis(mask.shape[1], shape[1])
    m = mask.astype(np.float32)
    cols = m[:, c0] * (1 - u) + m[:, c1] * u
    return cols[r0] * (1 - t)[:, None] + cols[r1] * t[:, None] > 0.5


def _old_served_regions(rel, keep_mass, mode, out_shape):
    """The served path before regions were cut on the working grid: ndimage's filters, the mask
    upsampled to ``out_shape``, then regions and shares at that size."""
    rel = regions._nonnegative(rel)
    work = rel
    factor = -(-max(rel.shape) // 128)
    if factor > 1:
        work = regions._block_mean(work, factor)
    work = ndi.gaussian_filter(work, 1.0, mode="nearest")
    mask = regions._top_mass(work, keep_mass)
    footprint = disk(1).astype(bool)
    opened = ndi.binary_dilation(ndi.binary_erosion(mask, footprint, border_value=1), footprint)
    mask = opened if opened.any() else mask
    mask = ndi.binary_erosion(ndi.binary_dilation(mask, footprint), footprint, border_value=1)
    labels, _ = ndi.label(mask, np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= max(1, int(np.ceil(0.002 * mask.size)))
    keep[0] = False
    return mask_regions(_old_upsample(keep[labels], out_shape), rel, mode)


def _cnn_evidence(n_images: int, side: int = 224) -> np.ndarray:
    """The default CNN's served evidence (64 px) for a few images with a few coloured shapes."""
    torch.manual_seed(0)
    kind = CNNKind(ImageCNN(n_classes=2, image_size=64))
    kind.network.eval()
    gen = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    images = []
    for _ in range(n_images):
        image = np.full((side, side, 3), gen.random(3), np.float32)
        for _ in range(4):
            cy, cx, r = gen.integers(20, side - 20, 2).tolist() + [int(gen.integers(8, 40))]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = gen.random(3)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
    x = torch.nn.functional.interpolate(torch.stack(images), size=(64, 64), mode="bilinear", antialias=True)
    _, evidence = kind.predict_and_explain(x, "gradcam")
    return evidence.numpy()


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("mode", ["merged", "components"])
def test_served_regions_match_the_old_path_on_cnn_evidence(mode):
    for rel in _cnn_evidence(6):
        old = _old_served_regions(rel, 0.2, mode, (224, 224))
        new = evidence_regions(rel, 0.2, mode, out_shape=(224, 224))
        assert new and all(mask.shape == (224, 224) and mask.dtype == bool for mask, _ in new)
        union = np.logical_or.reduce([mask for mask, _ in new])
        assert _iou(union, np.logical_or.reduce([mask for mask, _ in old])) >= 0.9
        assert sum(share for _, share in new) == pytest.approx(sum(share for _, share in old), abs=0.05)
        if mode == "merged":
            assert np.array_equal(new[0][0], evidence_mask(rel, 0.2, out_shape=(224, 224)))


@pytest.mark.parametrize("shape, out_shape", [((64, 64), (300, 150)), ((224, 224), (224, 224)),
                                              ((200, 256), (480, 640)), ((64, 64), (40, 30))])
def test_served_regions_match_the_old_path_on_blobs(shape, out_shape):
    rel = (blob(shape, centre=(shape[0] // 4, shape[1] // 4), radius=shape[0] / 12)
           + 0.7 * blob(shape, centre=(3 * shape[0] // 4, 2 * shape[1] // 3), radius=shape[0] / 10))
    rel += 0.05 * np.random.default_rng(0).random(shape).astype(np.float32)
    for mode in ("merged", "components"):
        old = _old_served_regions(rel, 0.4, mode, out_shape)
        new = evidence_regions(rel, 0.4, mode, out_shape=out_shape)
        assert len(new) == len(old)
        for (a, sa), (b, sb) in zip(new, old):
            assert a.shape == tuple(out_shape) and _iou(a, b) >= 0.9 and sa == pytest.approx(sb, abs=0.05)
    assert evidence_regions(np.zeros(shape), 0.4, out_shape=out_shape) == []


def test_upsampling_the_mask_box_only_is_exact():
    gen = np.random.default_rng(0)
    for _ in range(300):
        h, w = gen.integers(1, 40, 2)
        out_shape = tuple(gen.integers(1, 160, 2))
        mask = np.zeros((h, w), bool)
        y, x = gen.integers(0, h), gen.integers(0, w)
        mask[y:y + gen.integers(1, 8), x:x + gen.integers(1, 8)] = gen.random() < 0.9
        mask |= gen.random((h, w)) < 0.02
        assert np.array_equal(regions._upsample_mask(mask, out_shape), _old_upsample(mask, out_shape))


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_morphology_and_smoothing_equal_ndimage(radius):
    gen = np.random.default_rng(radius)
    footprint = disk(radius).astype(bool)
    offsets = regions._disk_offsets(radius)
    for h, w in [(1, 1), (2, 5), (7, 3), (64, 64), (37, 50)]:
        mask = gen.random((h, w)) < 0.6
        assert np.array_equal(regions._morph(mask, offsets, erode=True),
                              ndi.binary_erosion(mask, footprint, border_value=1))
        assert np.array_equal(regions._morph(mask, offsets, erode=False), ndi.binary_dilation(mask, footprint))
        values = gen.random((h, w)).astype(np.float32)
        np.testing.assert_allclose(regions._gaussian(values, radius / 2),
                                   ndi.gaussian_filter(values, radius / 2, mode="nearest"), atol=1e-6)


TEXT = "The plot was absolutely terrible, but the  music was great."


def relevance_for(tokens, weights):
    rel = np.zeros(len(tokens) + 5, np.float32)  # trailing padding
    for i, tok in enumerate(tokens):
        rel[i] = weights.get(tok.text, 0.01)
    return rel


def test_token_spans_merge_neighbours_and_slice_the_text_exactly():
    tokens = tokenize(TEXT)
    rel = relevance_for(tokens, {"absolutely": 3.0, "terrible": 4.0, "great": 2.0})
    spans = token_spans(rel, tokens, 0.8, text=TEXT)
    assert [TEXT[s:e] for s, e, _ in spans] == ["absolutely terrible", "great"]
    total = rel.sum()
    assert spans[0][2] == pytest.approx(7.0 / total) and spans[1][2] == pytest.approx(2.0 / total)
    assert token_spans(rel, tokens, 0.5, text=TEXT) == [spans[0][:2] + (pytest.approx(7.0 / total),)]


def test_token_spans_across_double_spaces_and_without_text():
    tokens = tokenize(TEXT)
    rel = relevance_for(tokens, {"the": 5.0, "music": 5.0})
    with_text = token_spans(rel, tokens, 0.6, text=TEXT)
    assert [TEXT[s:e] for s, e, _ in with_text] == ["the  music"]
    assert token_spans(rel, tokens, 0.6) == with_text


def test_tokens_apart_in_the_text_stay_apart():
    text = "foo--bar"
    tokens = [Token("foo", 0, 3), Token("bar", 5, 8)]  # not from tokenize: a gap that is not space
    spans = token_spans(np.array([1.0, 1.0]), tokens, 1.0, text=text)
    assert [text[s:e] for s, e, _ in spans] == ["foo", "bar"]


def test_token_spans_empty_cases():
    tokens = tokenize(TEXT)
    assert token_spans(np.zeros(20), tokens) == []
    assert token_spans(np.full(20, np.nan), tokens) == []
    assert token_spans(np.ones(5), []) == []
    # relevance shorter than the tokens (a truncated text): only the scored tokens count
    spans = token_spans(np.array([0.0, 0.0, 1.0]), tokens, 0.5, text=TEXT)
    assert [TEXT[s:e] for s, e, _ in spans] == ["was"]
