"""Label Studio annotation -> training signal (label + irrelevant/relevant masks at model resolution).

CAIPI's three outcomes map to ``Feedback.kind``:
- right for the right reasons: the label agrees and the model's evidence region is kept -> "accepted";
- wrong label: only a label, or the model's evidence kept but the label changed -> "label_only";
- right for the wrong reasons: regions marked Irrelevant (or Relevant) -> "irrelevant" / "relevant" /
  "irrelevant+relevant".

A cancelled (skipped) annotation carries no training signal: ``parse_annotation`` raises
``CancelledAnnotation`` (a ``FeedbackError``) so callers can skip it on purpose while still
logging real errors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from ml_backend.data.frame import blend_reaches
from ml_backend.data.text import Token, tokenize
from ml_backend.labelstudio import rle
from ml_backend.labelstudio.schema import TaskSchema

KINDS = ("accepted", "label_only", "irrelevant", "relevant", "irrelevant+relevant")


class FeedbackError(ValueError):
    """The annotation cannot be turned into training signal; the message says why."""


class CancelledAnnotation(FeedbackError):
    """The annotator skipped the task (``was_cancelled``): no label, nothing to learn."""


@dataclass(frozen=True)
class LabelSet:
    """A multi-label Choices answer (``choice="multiple"``): the chosen classes' indices."""

    indices: tuple[int, ...]
    n_classes: int

    def multi_hot(self) -> np.ndarray:
        """(K,) float32, 1 for each chosen class."""
        out = np.zeros(self.n_classes, dtype=np.float32)
        out[list(self.indices)] = 1.0
        return out


@dataclass
class Feedback:
    task_id: int
    annotation_id: int
    # class index from the Choices result (a LabelSet for multi-label Choices), None if no choice
    label: Optional[int | LabelSet]
    irrelevant: Optional[np.ndarray]  # bool, (S, S) for images, (L,) for text; None if nothing marked
    relevant: Optional[np.ndarray]
    kind: str


def parse_annotation(
    annotation: dict,
    task: dict,
    schema: TaskSchema,
    *,
    image_size: Optional[int] = None,
    max_len: Optional[int] = None,
    text: Optional[str] = None,
    tokens: Optional[list[Token]] = None,
) -> Feedback:
    """Turn one LS annotation into Feedback.

    Images: brush regions are decoded at their original size and resized to ``image_size`` x
    ``image_size`` as the image is, every pixel the mark reaches marked (kept at original size when
    ``image_size`` is None).
    Text: spans mark every token whose characters overlap them; the mask has length
    ``max_len`` (padding positions False) or the token count when ``max_len`` is None.
    ``text`` defaults to ``task["data"][schema.data_key]``; ``tokens`` (the model's own, in mask
    order) default to ``data.text.tokenize(text)``.
    """
    if not isinstance(annotation, dict):
        raise FeedbackError(f"annotation must be a JSON object, got {type(annotation).__name__}")
    annotation_id = _int_field(annotation, "id", "annotation")
    task_id = _task_id(annotation, task)
    if annotation.get("was_cancelled"):
        raise CancelledAnnotation(f"annotation {annotation_id} on task {task_id} was cancelled (skipped)")
    results = annotation.get("result")
    if results is None:
        results = []
    if not isinstance(results, list):
        raise FeedbackError(f"annotation {annotation_id}: 'result' must be a list, got {type(results).__name__}")

    bad = next((r for r in results if not isinstance(r, dict)), None)
    if bad is not None:
        raise FeedbackError(f"annotation {annotation_id}: each result must be an object, got {bad!r}")
    label = _label(results, schema, annotation_id)
    irrelevant: list[dict] = []
    relevant: list[dict] = []
    evidence_kept = False
    for result in _evidence_results(results, schema, annotation_id):
        names = _region_labels(result, schema, annotation_id)
        if schema.irrelevant_label is not None and schema.irrelevant_label in names:
            target = irrelevant
        elif schema.relevant_label is not None and schema.relevant_label in names:
            target = relevant
        else:
            evidence_kept = evidence_kept or schema.evidence_label in names
            continue
        target.append(result)

    if schema.object_type == "image":
        irr_mask = _image_mask(irrelevant, image_size, annotation_id)
        rel_mask = _image_mask(relevant, image_size, annotation_id)
    else:
        if text is None and (irrelevant or relevant):
            text = _task_text(task, schema, annotation_id)
        irr_mask = _text_mask(irrelevant, text or "", max_len, annotation_id, tokens)
        rel_mask = _text_mask(relevant, text or "", max_len, annotation_id, tokens)

    if irr_mask is not None and rel_mask is not None:
        kind = "irrelevant+relevant"
    elif irr_mask is not None:
        kind = "irrelevant"
    elif rel_mask is not None:
        kind = "relevant"
    elif evidence_kept and label is not None and _predicted_label(annotation, schema) in (None, label):
        # Kept evidence endorses the model unless the label was changed from the prediction's
        # (when LS sends no prediction, a kept region is taken as an endorsement).
        kind = "accepted"
    else:
        kind = "label_only"
    return Feedback(task_id, annotation_id, label, irr_mask, rel_mask, kind)


def feedback_counts(items: Iterable[Feedback]) -> dict[str, int]:
    """How many feedback items of each kind (every kind present, zeros included)."""
    counts = Counter(item.kind for item in items)
    return {kind: counts.get(kind, 0) for kind in KINDS}


def _int_field(obj: dict, key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FeedbackError(f"{what} needs an integer '{key}', got {value!r}")
    return value


def _task_id(annotation: dict, task: dict) -> int:
    if isinstance(task, dict) and task.get("id") is not None:
        return _int_field(task, "id", "task")
    if annotation.get("task") is not None:
        return _int_field(annotation, "task", "annotation")
    raise FeedbackError("no task id: neither task['id'] nor annotation['task'] is set")


def _label(results: list, schema: TaskSchema, annotation_id: int) -> Optional[int | LabelSet]:
    for result in results:
        if not isinstance(result, dict):
            continue
        if result.get("from_name") != schema.choices_name or result.get("type", "choices") != "choices":
            continue
        choices = (result.get("value") or {}).get("choices")
        if not isinstance(choices, list):
            raise FeedbackError(f"annotation {annotation_id}: choices result without a 'value.choices' list")
        if not choices:
            return None
        if len(choices) > 1 and not schema.multi_label:
            raise FeedbackError(f"annotation {annotation_id}: expected one choice, got {choices}")
        unknown = [c for c in choices if c not in schema.classes]
        if unknown:
            raise FeedbackError(
                f"annotation {annotation_id}: label {unknown[0]!r} is not one of the config's classes {list(schema.classes)}"
            )
        if schema.multi_label:
            return LabelSet(tuple(sorted({schema.classes.index(c) for c in choices})), schema.n_classes)
        return schema.classes.index(choices[0])
    return None


def _predicted_label(annotation: dict, schema: TaskSchema) -> Optional[int | LabelSet]:
    """The label of the prediction the annotation started from, when LS sends it."""
    prediction = annotation.get("prediction")
    if not isinstance(prediction, dict) or not isinstance(prediction.get("result"), list):
        return None
    try:
        return _label(prediction["result"], schema, -1)
    except FeedbackError:
        return None


def _evidence_results(results: list, schema: TaskSchema, annotation_id: int) -> list[dict]:
    if schema.evidence_name is None:
        return []
    return [
        r
        for r in results
        if r.get("from_name") == schema.evidence_name and r.get("type", schema.evidence_type) == schema.evidence_type
    ]


def _region_labels(result: dict, schema: TaskSchema, annotation_id: int) -> list[str]:
    value = result.get("value")
    if not isinstance(value, dict):
        raise FeedbackError(f"annotation {annotation_id}: {schema.evidence_type} result without a 'value' object")
    names = value.get(schema.evidence_type)
    if not isinstance(names, list):
        raise FeedbackError(
            f"annotation {annotation_id}: {schema.evidence_type} result without a 'value.{schema.evidence_type}' list"
        )
    return names


def _image_mask(results: list[dict], image_size: Optional[int], annotation_id: int) -> Optional[np.ndarray]:
    mask: Optional[np.ndarray] = None
    for result in results:
        region = _decode_region(result, annotation_id)
        if image_size is not None:
            region = _resize_mask(region, image_size)
        if mask is None:
            mask = region
        elif mask.shape != region.shape:
            raise FeedbackError(
                f"annotation {annotation_id}: brush regions of different sizes {mask.shape} and {region.shape}; pass image_size"
            )
        else:
            mask = mask | region
    return mask if mask is not None and mask.any() else None


MAX_MASK_PIXELS = 100_000_000  # a brush mask declaring more is refused before it is decoded


def _decode_region(result: dict, annotation_id: int) -> np.ndarray:
    value = result["value"]
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise FeedbackError(
            f"annotation {annotation_id}: brush region without RLE data (format {value.get('format')!r})"
        )
    width, height = result.get("original_width"), result.get("original_height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise FeedbackError(
            f"annotation {annotation_id}: brush region needs positive integer original_width/original_height, "
            f"got {width!r} x {height!r}"
        )
    if width * height > MAX_MASK_PIXELS:
        raise FeedbackError(f"annotation {annotation_id}: a brush region of {width} x {height} pixels is over the "
                            f"limit of {MAX_MASK_PIXELS / 1e6:g} megapixels")
    try:
        return rle.decode(value["rle"], height, width) > 0
    except rle.RLEError as exc:
        raise FeedbackError(f"annotation {annotation_id}: bad brush RLE: {exc}") from None


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize one region's bool mask to size x size, as the image is resized.

    An object's mark (``data.frame.blend_reaches``) covers every pixel the image's resize
    (``data.images.image_to_tensor``, Pillow's bilinear filter) takes any of its value from: the
    resize blends the mark's edge into its neighbours, and a mark cut at the cells it covers would
    leave that rim, still in the mark's colour, for a model to read the shortcut from (decoy corners
    at 28 px read at the shipped 64: the default reached 0.49 where the bound is 0.975; 0.99 with
    the rim marked). The image's own 8-bit arithmetic: a blend too faint to move the image by one
    level is not marked. A background's mark keeps the cells at least half covered: its rim is the
    object's edge, which the fill shifts in colour rather than erases.
    """
    if mask.shape == (size, size):
        return mask
    if blend_reaches(mask):
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)) > 0
    else:
        coverage = _area_weights(mask.shape[0], size) @ mask.astype(np.float32) @ _area_weights(mask.shape[1], size).T
        out = coverage >= 0.5 - 1e-6
    if mask.any() and not out.any():
        # a mark too small to tint any cell would be lost; keep the cells it falls in
        rows, cols = np.nonzero(mask)
        out = out.copy()
        out[rows * size // mask.shape[0], cols * size // mask.shape[1]] = True
    return out


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) share of each output cell covered by each input pixel (rows sum to 1)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    pixels = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :])
    return (np.clip(overlap, 0, None) * (n_out / n_in)).astype(np.float32)


def _task_text(task: dict, schema: TaskSchema, annotation_id: int) -> str:
    data = task.get("data") if isinstance(task, dict) else None
    value = data.get(schema.data_key) if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise FeedbackError(f"annotation {annotation_id}: task data has no text field {schema.data_key!r}")
    return value


def _text_mask(results: list[dict], text: str, max_len: Optional[int], annotation_id: int,
               tokens: Optional[list[Token]] = None) -> Optional[np.ndarray]:
    if not results:
        return None
    spans = []
    for result in results:
        value = result["value"]
        start, end = value.get("start"), value.get("end")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end <= len(
            text
        ):
            raise FeedbackError(
                f"annotation {annotation_id}: span needs integer start < end within the text (length {len(text)}), "
                f"got start={start!r} end={end!r}"
            )
        spans.append((start, end))
    tokens = tokenize(text) if tokens is None else tokens
    if not tokens:
        return None
    length = max_len if max_len is not None else len(tokens)
    tokens = tokens[:length]
    starts = np.array([t.start for t in tokens], dtype=np.int64)
    ends = np.array([t.end for t in tokens], dtype=np.int64)
    mask = np.zeros(length, dtype=bool)
    for start, end in spans:
        mask[: len(tokens)] |= (starts < end) & (ends > start)
    return mask if mask.any() else None
