"""Label Studio result dicts: Choices, BrushLabels and Labels regions."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ml_backend.labelstudio import rle
from ml_backend.labelstudio.schema import TaskSchema


def choices_result(schema: TaskSchema, label: str | Sequence[str], score: float) -> dict[str, Any]:
    """The predicted class, or (multi-label Choices) every predicted class."""
    return {
        "from_name": schema.choices_name,
        "to_name": schema.object_name,
        "type": "choices",
        "value": {"choices": [label] if isinstance(label, str) else list(label)},
        "score": float(score),
    }


def for_class(region: dict[str, Any], label: str, index: int) -> dict[str, Any]:
    """An evidence region of one class among several (multi-label): the class index in its id,
    the class in the region's meta text, which the labeling UI shows with the region."""
    return {**region, "id": f"{region['id']}-c{index}", "meta": {"text": [f"evidence for {label}"]}}


def brush_result(schema: TaskSchema, mask: np.ndarray, score: float, region_id: str) -> dict[str, Any]:
    """A BrushLabels region at the image's original size; mask is (H, W) bool."""
    height, width = mask.shape
    return {
        "id": region_id,
        "from_name": schema.evidence_name,
        "to_name": schema.object_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [schema.evidence_label]},
        "score": float(score),
    }


def span_result(schema: TaskSchema, text: str, start: int, end: int, score: float, region_id: str) -> dict[str, Any]:
    """A Labels span with exact character offsets (end exclusive)."""
    return {
        "id": region_id,
        "from_name": schema.evidence_name,
        "to_name": schema.object_name,
        "type": "labels",
        "value": {"start": int(start), "end": int(end), "text": text[start:end], "labels": [schema.evidence_label]},
        "score": float(score),
    }
