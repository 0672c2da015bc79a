"""One Label Studio task -> model input (Label Studio's format stops here), and an annotation's
marks onto that input."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.frame import Frame
from ml_backend.data.images import load_image
from ml_backend.data.text import Token
from ml_backend.labelstudio.schema import TaskSchema


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class PreparedTask:
    """One task turned into model input, with what evidence needs to land at original coordinates."""

    index: int
    tensor: torch.Tensor
    image_size: Optional[tuple[int, int]] = None  # (height, width) of the original image
    image: Optional[np.ndarray] = None  # kept only when SLIC snapping needs it
    text: Optional[str] = None
    tokens: Optional[list[Token]] = None  # in the order of the model's token masks
    frame: Optional[Frame] = None  # where the input's pixels come from; None: the whole image stretched


def prepare_task(schema: TaskSchema, model: Any, task: Any, fetcher: Fetcher, index: int = 0,
                 keep_image: bool = False) -> PreparedTask:
    """Read one task's data into ``model``'s input (its kind encodes it); DataError says why not."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise DataError("task has no data object")
    value = task["data"].get(schema.data_key)
    if value is None:
        raise DataError(f"task data has no field {schema.data_key!r}")
    if schema.object_type == "image":
        if not isinstance(value, str):
            raise DataError(f"{schema.data_key!r} must be an image URL")
        image = load_image(fetcher.fetch(value, task_id=task.get("id")), fetcher.max_pixels)
        tensor, frame = model.encode_image(image)
        return PreparedTask(index, tensor, image_size=(image.height, image.width),
                            image=np.asarray(image) if keep_image else None, frame=frame)
    if not isinstance(value, str):
        raise DataError(f"{schema.data_key!r} must be text")
    if not value.strip():
        raise DataError(f"{schema.data_key!r} is empty: no text to classify")
    value = _LONE_SURROGATE.sub("\ufffd", value)  # unencodable; one character each, so offsets hold
    tensor, tokens = model.encode_text(value)
    return PreparedTask(index, tensor, text=value, tokens=tokens)


def marks_on_input(feedback: Any, prepared: PreparedTask) -> Any:
    """Feedback whose image masks were read at the original size, moved onto the model's input."""
    if prepared.frame is None:
        return feedback
    moved = {name: None if getattr(feedback, name) is None else prepared.frame.to_input(getattr(feedback, name))
             for name in ("irrelevant", "relevant")}
    return replace(feedback, **moved)
