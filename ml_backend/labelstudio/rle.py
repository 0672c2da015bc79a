"""Label Studio brush RLE: vectorised encoder and decoder.

The format is thi-ng ``rle-pack`` over the flattened RGBA uint8 array (length H*W*4):
a 32-bit value count, 5 bits word size - 1, four 4-bit RLE sizes - 1, then tokens
``flag(1) size_index(2) length-1(rle_sizes[size_index]) value(s)``; flag 1 is a run of one
repeated word, flag 0 a literal of ``length`` words. The stream is padded with zero bits.

``encode``/``encode_values`` reproduce ``label_studio_sdk.converter.brush.mask2rle`` byte for
byte (word size 8, RLE sizes [3, 4, 8, 16], single values as literals, runs longer than
65536 split into 65536-long chunks, and a whole zero byte of padding when the bit count is
already a multiple of 8). ``decode`` reads any word size up to 8 and any RLE sizes, so it
also reads the frontend's own encoding (which uses literals of several words).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

WORDSIZE = 8
RLE_SIZES = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 4 * 4
_MAX_CHUNK = 1 << 16


class RLEError(ValueError):
    """The RLE list is not a valid Label Studio brush mask of the expected size."""


def encode(mask: np.ndarray) -> list[int]:
    """Binary mask (any dtype, nonzero = on) -> LS RLE with on pixels at 255."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return _encode_pixels(mask if mask.dtype == bool else mask != 0, on_value=255)


def encode_values(values: np.ndarray) -> list[int]:
    """2-D array of values 0..255 -> LS RLE, each pixel repeated as RGBA (like SDK mask2rle)."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D, got shape {values.shape}")
    if values.dtype != np.uint8:
        if values.dtype.kind not in "iu":
            raise ValueError(f"values must be an integer array, got dtype {values.dtype}")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError("values must lie in 0..255")
        values = values.astype(np.uint8)
    return _encode_pixels(values)


def _encode_pixels(pixels: np.ndarray, on_value: int = 1) -> list[int]:
    """``pixels`` (uint8 values, or bool: on pixels ``on_value``) -> LS RLE."""
    flat = pixels.ravel()
    n = flat.size * 4
    if flat.size == 0:
        raise ValueError("cannot encode an empty mask")
    if n >= 1 << 32:
        raise ValueError("mask too large for the 32-bit RLE header")
    # Runs over pixels; repeating every pixel 4 times (RGBA) just multiplies run lengths by 4.
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size)).astype(np.int64) * 4
    codes, widths = _run_tokens(lengths, flat[starts].astype(np.uint64) * np.uint64(on_value))
    header_codes = np.array([n, WORDSIZE - 1, *(s - 1 for s in RLE_SIZES)], dtype=np.uint64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    return _pack(np.concatenate((header_codes, codes)), np.concatenate((header_widths, widths)))


def _run_tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes and bit widths for runs, following the SDK's encode_rle choices."""
    chunks = np.where(lengths > 256, (lengths - 1) // _MAX_CHUNK + 1, 1)
    run = np.repeat(np.arange(lengths.size), chunks)
    first = np.cumsum(chunks) - chunks
    within = np.arange(run.size) - first[run]
    last = within == chunks[run] - 1
    length = np.where(last, lengths[run] - (chunks[run] - 1) * _MAX_CHUNK, _MAX_CHUNK)
    long_run = lengths[run] > 256
    # Size index: 0 for <= 8 (and single values), 1 for <= 16, 2 for <= 256, 3 for longer runs
    # (every chunk of a long run uses 16 bits, even a short final chunk).
    index = np.where(long_run, 3, np.searchsorted(np.array([8, 16, 256]), length))
    nbits = np.array(RLE_SIZES, dtype=np.int64)[index]
    flag = (length > 1) | long_run
    codes = (
        (flag.astype(np.uint64) << (nbits + 10).astype(np.uint64))
        | (index.astype(np.uint64) << (nbits + 8).astype(np.uint64))
        | ((length - 1).astype(np.uint64) << np.uint64(8))
        | values[run]
    )
    return codes, nbits + 11


def _pack(codes: np.ndarray, widths: np.ndarray) -> list[int]:
    """Concatenate variable-width codes (<= 33 bits each) into bytes, SDK padding included."""
    offsets = np.cumsum(widths) - widths
    total = int(offsets[-1] + widths[-1])
    n_bytes = total // 8 + 1  # the SDK always appends 1..8 zero bits
    # Place each code in a 40-bit window starting at its first byte; windows of different
    # codes share no set bits, so summing the bytes equals OR-ing them.
    shift = (40 - (offsets % 8) - widths).astype(np.uint64)
    window = codes << shift
    first_byte = offsets // 8
    out = np.zeros(n_bytes + 5, dtype=np.float64)
    for k in range(5):
        part = ((window >> np.uint64(32 - 8 * k)) & np.uint64(0xFF)).astype(np.float64)
        out += np.bincount(first_byte + k, weights=part, minlength=out.size)
    return out[:n_bytes].astype(np.uint8).tolist()


def decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """LS RLE -> (height, width) uint8 alpha channel; RLEError for malformed input."""
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))) or height < 1 or width < 1:
        raise RLEError(f"height and width must be positive integers, got {height!r} x {width!r}")
    flat = decode_flat(rle, expected=int(height) * int(width) * 4)
    return np.ascontiguousarray(flat.reshape(int(height), int(width), 4)[:, :, 3])


def decode_flat(rle: Sequence[int], expected: Optional[int] = None) -> np.ndarray:
    """LS RLE -> the flat uint8 array it encodes (like SDK decode_rle).

    ``expected`` is checked against the header's count before anything is expanded, so a
    hostile count cannot make the decoder allocate gigabytes.
    """
    data = _as_bytes(rle)
    total_bits = len(data) * 8
    if total_bits < _HEADER_BITS:
        raise RLEError(f"RLE too short: {len(data)} bytes, the header alone needs 7")
    buf = data + bytes(5)  # lets every 5-byte window read past the end
    num = int.from_bytes(data[:4], "big")
    if expected is not None and num != expected:
        raise RLEError(
            f"RLE holds {num} values but the mask needs {expected} (height * width * 4): "
            "original_width/original_height do not match the mask"
        )
    header = int.from_bytes(data[4:7], "big") >> 3  # the 21 bits after the count
    wordsize = (header >> 16) + 1
    sizes = [((header >> (12 - 4 * k)) & 0xF) + 1 for k in range(4)]
    if wordsize > 8:
        raise RLEError(f"RLE word size {wordsize} is not supported (brush masks are 8-bit)")
    word_mask = (1 << wordsize) - 1

    run_lengths: list[int] = []
    run_values: list[int] = []
    literal_tokens: list[int] = []  # token index
    literal_bits: list[int] = []  # bit offset of the literal's first word
    pos, i = _HEADER_BITS, 0
    from_bytes = int.from_bytes
    while i < num:
        if pos + 3 > total_bits:
            raise RLEError(f"RLE truncated: decoded {i} of {num} values before the data ran out")
        window = (from_bytes(buf[pos >> 3 : (pos >> 3) + 5], "big") << (pos & 7)) & 0xFFFFFFFFFF
        n = sizes[(window >> 37) & 3]
        length = ((window >> (37 - n)) & ((1 << n) - 1)) + 1
        if window >> 39:
            end = pos + 3 + n + wordsize
            run_values.append((window >> (40 - (end - pos))) & word_mask)
        else:
            end = pos + 3 + n + wordsize * length
            literal_tokens.append(len(run_lengths))
            literal_bits.append(pos + 3 + n)
            run_values.append(0)
        if end > total_bits:
            raise RLEError(f"RLE truncated: decoded {i} of {num} values before the data ran out")
        run_lengths.append(length)
        i += length
        pos = end

    lengths = np.array(run_lengths, dtype=np.int64)
    if i > num:  # like the SDK and rle-pack, a final token running past the count is clipped
        lengths[-1] -= i - num
    out = np.repeat(np.array(run_values, dtype=np.uint8), lengths)
    if literal_tokens:
        tokens = np.array(literal_tokens, dtype=np.int64)
        counts = lengths[tokens]
        out_start = (np.cumsum(lengths) - lengths)[tokens]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        bit = np.repeat(np.array(literal_bits, dtype=np.int64), counts) + wordsize * within
        arr = np.frombuffer(buf, dtype=np.uint8).astype(np.uint32)
        two = (arr[bit >> 3] << 8) | arr[(bit >> 3) + 1]
        words = (two >> (16 - (bit & 7) - wordsize).astype(np.uint32)) & word_mask
        out[np.repeat(out_start, counts) + within] = words.astype(np.uint8)
    return out


def _as_bytes(rle: Sequence[int]) -> bytes:
    if isinstance(rle, (str, bytes, bytearray)) or not hasattr(rle, "__len__"):
        raise RLEError(f"RLE must be a list of integers 0..255, got {type(rle).__name__}")
    if len(rle) == 0:
        raise RLEError("RLE is empty")
    try:
        arr = np.asarray(rle)
    except (ValueError, TypeError) as exc:
        raise RLEError(f"RLE must be a flat list of integers 0..255: {exc}") from None
    if arr.ndim != 1:
        raise RLEError(f"RLE must be a flat list of integers 0..255, got shape {arr.shape}")
    # numpy quietly turns True into 1, and LS would not: reject bools explicitly
    if arr.dtype.kind not in "iu" or (not isinstance(rle, np.ndarray) and any(v is True or v is False for v in rle)):
        bad = next((v for v in rle if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))), rle[0])
        raise RLEError(f"RLE must hold integers 0..255, found {bad!r}")
    if arr.min() < 0 or arr.max() > 255:
        raise RLEError(f"RLE values must lie in 0..255, found {int(arr.min())}..{int(arr.max())}")
    return arr.astype(np.uint8).tobytes()
