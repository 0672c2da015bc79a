"""Our brush RLE against label_studio_sdk.converter.brush (the format's reference)."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from ml_backend.labelstudio import rle
from ml_backend.labelstudio.rle import RLEError

SIZES = [(1, 1), (7, 13), (64, 64), (224, 224)]


def _structured(h: int, w: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    single = np.zeros((h, w), dtype=bool)
    single[h // 2, w // 3] = True
    return {
        "zeros": np.zeros((h, w), dtype=bool),
        "ones": np.ones((h, w), dtype=bool),
        "row_stripes": (yy % 2) == 0,
        "col_stripes": (xx // 3) % 2 == 0,
        "checkerboard": (yy + xx) % 2 == 0,
        "single": single,
        "disc": (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2,
    }


def _sdk(mask: np.ndarray) -> list[int]:
    return brush.mask2rle((mask != 0).astype(np.uint8) * 255)


@pytest.mark.parametrize("h,w", SIZES)
def test_structured_masks_match_sdk_and_round_trip(h, w):
    for name, mask in _structured(h, w).items():
        ours = rle.encode(mask)
        assert ours == _sdk(mask), f"{name} {h}x{w}"
        assert np.array_equal(rle.decode(ours, h, w), mask.astype(np.uint8) * 255), f"{name} {h}x{w}"


@pytest.mark.parametrize("h,w", [(1, 1), (7, 13), (64, 64), (96, 80)])
@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.9])
def test_random_masks_match_sdk(h, w, density):
    rng = np.random.default_rng(hash((h, w, density)) % 2**32)
    mask = rng.random((h, w)) < density
    ours = rle.encode(mask)
    assert ours == _sdk(mask)
    assert all(type(v) is int and 0 <= v <= 255 for v in ours)
    assert np.array_equal(rle.decode(ours, h, w), mask.astype(np.uint8) * 255)


def test_runs_longer_than_65536_are_chunked_like_sdk():
    # 1 x 20000 pixels: runs of up to 80000 RGBA values, so 16-bit chunks and a short tail
    mask = np.zeros((1, 20000), dtype=bool)
    mask[0, 16384:16390] = True  # 65536 values of 0, then a short run, then a long tail
    for m in (mask, ~mask, np.zeros_like(mask)):
        assert rle.encode(m) == _sdk(m)
        assert np.array_equal(rle.decode(rle.encode(m), 1, 20000), m.astype(np.uint8) * 255)


def test_bool_and_int_dtypes_binarise_the_same():
    rng = np.random.default_rng(1)
    mask = rng.random((9, 11)) < 0.4
    expected = _sdk(mask)
    assert rle.encode(mask) == expected
    assert rle.encode(mask.astype(np.int64) * 3) == expected
    assert rle.encode(mask.astype(np.uint8)) == expected
    assert rle.encode(mask.astype(np.float32) * 0.5) == expected


def test_encode_values_matches_sdk_including_single_value_literals():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 256, size=(13, 17)).astype(np.uint8)
    values[3:6] = 200  # long runs next to single values
    values[8, 2:15] = 1
    assert rle.encode_values(values) == brush.mask2rle(values)
    assert rle.encode_values(values.astype(np.int64)) == brush.mask2rle(values)
    assert np.array_equal(rle.decode(rle.encode_values(values), 13, 17), values)
    # flat decode returns all four channels
    assert np.array_equal(rle.decode_flat(rle.encode_values(values)), np.repeat(values.ravel(), 4))


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError):
        rle.encode(np.zeros(5))
    with pytest.raises(ValueError):
        rle.encode(np.zeros((0, 4)))
    with pytest.raises(ValueError):
        rle.encode_values(np.full((2, 2), 256))
    with pytest.raises(ValueError):
        rle.encode_values(np.full((2, 2), 1.5))


@pytest.mark.parametrize("h,w", [(1, 1), (7, 13), (64, 64)])
def test_decode_of_sdk_encoding_matches_sdk_decoder(h, w):
    rng = np.random.default_rng(h * w)
    values = (rng.random((h, w)) < 0.3).astype(np.uint8) * 255
    values[: h // 2] = rng.integers(0, 256, size=(h // 2, w))
    encoded = brush.mask2rle(values)
    ours = rle.decode(encoded, h, w)
    assert np.array_equal(ours, values)
    assert np.array_equal(ours, brush.decode_rle(encoded).reshape(h, w, 4)[:, :, 3])


def _pack_bits(bits: str) -> list[int]:
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decode_reads_multi_word_literals_and_other_rle_sizes():
    # What the frontend's rle-pack emits: literals of several words, custom sizes.
    h, w = 1, 2
    words = [10, 20, 30, 40, 50, 60, 70, 80]
    header = f"{8:032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (2, 5, 8, 16))
    literal = "0" + "01" + f"{len(words) - 1:05b}" + "".join(f"{v:08b}" for v in words)
    stream = _pack_bits(header + literal)
    assert np.array_equal(rle.decode_flat(stream), np.array(words, dtype=np.uint8))
    assert np.array_equal(brush.decode_rle(stream), np.array(words, dtype=np.uint8))
    assert rle.decode(stream, h, w).tolist() == [[40, 80]]


def test_decode_clips_a_final_run_past_the_count_like_sdk():
    header = f"{8:032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    stream = _pack_bits(header + "1" + "01" + f"{11:04b}" + f"{255:08b}")  # run of 12 > 8
    assert rle.decode_flat(stream).tolist() == [255] * 8
    assert brush.decode_rle(stream).tolist() == [255] * 8


@pytest.mark.parametrize(
    "bad,match",
    [
        ([], "empty"),
        ("abc", "list of integers"),
        ([0, 0, 0, 16, 1.5, 0, 0, 0], "integers"),
        ([0, 0, 0, 16, "7", 0, 0, 0], "integers"),
        ([0, 0, 0, 16, True, 0, 0, 0], "integers"),
        ([0, 0, 0, 16, 300, 0, 0, 0], "0..255"),
        ([0, 0, 0, 16, -1, 0, 0, 0], "0..255"),
        ([[0, 1], [2, 3]], "flat"),
        ([0, 0, 0], "too short"),
    ],
)
def test_decode_rejects_malformed_lists(bad, match):
    with pytest.raises(RLEError, match=match):
        rle.decode(bad, 2, 2)


def test_decode_rejects_truncated_stream():
    mask = np.random.default_rng(3).random((16, 16)) < 0.5
    encoded = rle.encode(mask)
    for cut in (len(encoded) // 2, len(encoded) - 3, 8):
        with pytest.raises(RLEError, match="truncated"):
            rle.decode(encoded[:cut], 16, 16)


def test_decode_rejects_size_mismatch_and_bad_dimensions():
    encoded = rle.encode(np.ones((4, 6), dtype=bool))
    with pytest.raises(RLEError, match="the mask needs 144"):
        rle.decode(encoded, 6, 6)
    assert rle.decode(encoded, 4, 6).shape == (4, 6)
    with pytest.raises(RLEError):
        rle.decode(encoded, 0, 24)
    with pytest.raises(RLEError):
        rle.decode(encoded, 4.0, 6)


def test_rle_error_is_a_value_error():
    assert issubclass(RLEError, ValueError)


def test_encode_is_fast_on_512x512():
    import time

    yy, xx = np.mgrid[:512, :512]
    disc = (yy - 256) ** 2 + (xx - 200) ** 2 < 100**2
    noisy = np.random.default_rng(4).random((512, 512)) < 0.05
    for mask in (disc, noisy):
        start = time.perf_counter()
        encoded = rle.encode(mask)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.25, f"encode took {elapsed:.3f} s"  # generous: shared CI cores
        assert np.array_equal(rle.decode(encoded, 512, 512) > 0, mask)
