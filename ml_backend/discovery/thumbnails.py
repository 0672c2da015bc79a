"""Small pictures of a task's served evidence, stored with a version's clusters so the dashboard
shows what each cluster looks at without reading task data: an image as a PNG data URI (the
model's input, at most ``SIDE`` px a side, the evidence in translucent red with a red outline),
a text as a window of tokens around its evidence."""
from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ml_backend.explain.regions import evidence_mask, token_evidence

SIDE = 64
TEXT_WINDOW = 40
FILL_ALPHA = 0.4
RED = np.array([220, 38, 38], dtype=np.float32)


def _displayable(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) model input -> (H, W, 3) uint8, each image stretched to [0, 255] on its own
    (backbone inputs are normalised, so their values mean nothing on screen)."""
    pixels = x.detach().cpu().float().numpy()
    if pixels.ndim == 2:
        pixels = pixels[None]
    pixels = pixels[:3] if pixels.shape[0] >= 3 else np.repeat(pixels[:1], 3, axis=0)
    pixels = np.where(np.isfinite(pixels), pixels, 0.0)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return np.ascontiguousarray(scaled.transpose(1, 2, 0)).round().astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it (image edges count as inside)."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def image_thumbnail(x: torch.Tensor, relevance: np.ndarray, keep_mass: float, side: int = SIDE) -> str:
    """A PNG data URI of input ``x`` (C, H, W) at most ``side`` px a side, with the served evidence
    (the top ``keep_mass`` of ``relevance``, as ``evidence_mask`` cuts it for /predict) drawn over it."""
    rgb = _displayable(x)
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    mask = evidence_mask(np.asarray(relevance, dtype=np.float32), keep_mass, out_shape=(size[1], size[0]))
    shown = rgb.astype(np.float32)
    shown[mask] = (1 - FILL_ALPHA) * shown[mask] + FILL_ALPHA * RED
    shown[_outline(mask)] = RED
    buffer = io.BytesIO()
    Image.fromarray(shown.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def token_window(tokens: Sequence[Any], relevance: np.ndarray, keep_mass: float, window: int = TEXT_WINDOW
                 ) -> dict[str, Any]:
    """At most ``window`` tokens, where the served evidence (``token_evidence``) is densest:
    {"tokens": [[text, highlighted], ...], "before": tokens left out before, "after": after}."""
    n = min(len(tokens), len(relevance))
    marked = token_evidence(np.asarray(relevance, dtype=np.float32)[:n], keep_mass) if n else np.zeros(0, bool)
    start = 0
    if n > window and marked.any():
        counts = np.convolve(marked.astype(np.int32), np.ones(window, dtype=np.int32), mode="valid")
        best = int(np.argmax(counts))  # the first window holding the most evidence tokens
        first = best + int(np.argmax(marked[best:best + window]))
        start = max(0, min(first - window // 4, n - window))  # a little context before it
    end = min(n, start + window)
    return {"tokens": [[str(getattr(tokens[i], "text", tokens[i])), bool(marked[i])] for i in range(start, end)],
            "before": start, "after": len(tokens) - end}


def thumbnail(task_id: int, x: torch.Tensor, relevance: np.ndarray, keep_mass: float,
              tokens: Optional[Sequence[Any]] = None) -> dict[str, Any]:
    """One task's thumbnail entry: {"task", "image"} for an image input, {"task", "tokens", ...}
    for a text (``relevance`` (H, W) or (L,))."""
    if np.ndim(relevance) == 2:
        return {"task": int(task_id), "image": image_thumbnail(x, relevance, keep_mass)}
    return {"task": int(task_id), **token_window(tokens or [], relevance, keep_mass)}
