"""One Label Studio task -> model input (Label Studio's format stops here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.images import image_to_tensor, load_image
from ml_backend.data.text import Token, encode_tokens, tokenize
from ml_backend.labelstudio.schema import TaskSchema
from ml_backend.models.base import InputSpec


@dataclass
class PreparedTask:
    """One task turned into model input, with what evidence needs to land at original coordinates."""

    index: int
    tensor: torch.Tensor
    image_size: Optional[tuple[int, int]] = None  # (height, width) of the original image
    image: Optional[np.ndarray] = None  # kept only when SLIC snapping needs it
    text: Optional[str] = None
    tokens: Optional[list[Token]] = None


def prepare_task(schema: TaskSchema, spec: InputSpec, task: Any, fetcher: Fetcher, index: int = 0,
                 keep_image: bool = False) -> PreparedTask:
    """Read one task's data into model input; DataError says why it cannot be read."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise DataError("task has no data object")
    value = task["data"].get(schema.data_key)
    if value is None:
        raise DataError(f"task data has no field {schema.data_key!r}")
    if schema.object_type == "image":
        if not isinstance(value, str):
            raise DataError(f"{schema.data_key!r} must be an image URL")
        image = load_image(fetcher.fetch(value, task_id=task.get("id")))
        return PreparedTask(index, image_to_tensor(image, spec.image_size), image_size=(image.height, image.width),
                            image=np.asarray(image) if keep_image else None)
    if not isinstance(value, str):
        raise DataError(f"{schema.data_key!r} must be text")
    tokens = tokenize(value)
    return PreparedTask(index, encode_tokens(tokens, spec.max_len, spec.n_buckets), text=value, tokens=tokens)
