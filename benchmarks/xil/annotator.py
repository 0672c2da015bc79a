"""A simulated annotator that answers the backend's queries the way a person does in Label Studio.

It receives the prediction the backend rendered for a task (``serving.render_predictions``: a
Choices result and the "Model evidence" BrushLabels / Labels regions) and returns a Label Studio
annotation JSON:

- the Choices result with the true label;
- the model's evidence regions, kept as they were shown, except those that touch the confounder
  (those the annotator would delete, since they are wrong);
- the confounder painted as an "Irrelevant" brush region (RLE, at the image's original size) or
  marked as "Irrelevant" Labels spans (character offsets) over the spurious token.

The backend turns this JSON into training signal with ``feedback.parse.parse_annotation``, exactly
as for an annotation arriving through the webhook.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np

from ml_backend.labelstudio import rle
from ml_backend.labelstudio.results import brush_result, choices_result, span_result
from ml_backend.labelstudio.schema import TaskSchema


class SimulatedAnnotator:
    def __init__(self, schema: TaskSchema) -> None:
        if schema.irrelevant_label is None:
            raise ValueError("the label config has no 'Irrelevant' label for the evidence control")
        self.schema = schema
        self._next_id = 1
        self.shown_on_confounder: list[bool] = []  # did the shown evidence touch the confounder?

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def label_only(self, task: dict[str, Any], label: int) -> dict[str, Any]:
        """An annotation with the label alone (the rest of the labelled training set)."""
        return {"id": self._id(), "task": task["id"], "was_cancelled": False,
                "result": [self._choice(label)]}

    def correct(self, task: dict[str, Any], label: int, confounder: Any,
                prediction: Optional[dict[str, Any]]) -> dict[str, Any]:
        """Label + the shown evidence corrected: the confounder marked Irrelevant."""
        result = [self._choice(label)]
        touched = False
        for region in (prediction or {}).get("result", []):
            if region.get("from_name") != self.schema.evidence_name:
                continue
            if self._touches(region, confounder, task):
                touched = True  # wrong evidence: deleted
                continue
            result.append(copy.deepcopy(region))  # kept as shown
        self.shown_on_confounder.append(touched)
        result += self._irrelevant(task, confounder)
        annotation = {"id": self._id(), "task": task["id"], "was_cancelled": False, "result": result}
        if prediction is not None:
            annotation["prediction"] = prediction
        return annotation

    # ---------------------------------------------------------------------------------
    def _choice(self, label: int) -> dict[str, Any]:
        out = choices_result(self.schema, self.schema.classes[int(label)], 1.0)
        out.pop("score", None)
        return out

    def _irrelevant(self, task: dict[str, Any], confounder: Any) -> list[dict[str, Any]]:
        name = self.schema.irrelevant_label
        if self.schema.object_type == "image":
            region = brush_result(self.schema, np.asarray(confounder, dtype=bool), 1.0, f"irrelevant-{task['id']}")
            region["value"]["brushlabels"] = [name]
            region.pop("score", None)
            region["origin"] = "manual"
            return [region]
        text = task["data"][self.schema.data_key]
        spans = []
        for k, (start, end) in enumerate(confounder):
            span = span_result(self.schema, text, start, end, 1.0, f"irrelevant-{task['id']}-{k}")
            span["value"]["labels"] = [name]
            span.pop("score", None)
            span["origin"] = "manual"
            spans.append(span)
        return spans

    def _touches(self, region: dict[str, Any], confounder: Any, task: dict[str, Any]) -> bool:
        value = region.get("value") or {}
        if self.schema.object_type == "image":
            shown = rle.decode(value["rle"], region["original_height"], region["original_width"]) > 0
            conf = np.asarray(confounder, dtype=bool)
            return shown.shape == conf.shape and bool((shown & conf).any())
        start, end = value.get("start", 0), value.get("end", 0)
        return any(start < e and s < end for s, e in confounder)
