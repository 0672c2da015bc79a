"""Interactive pre-annotation in Label Studio's format: the regions an annotator drew
(``params.context``) in, the counterfactual's read-only results out.

Label Studio 1.23.2's labeling UI sends ``{"result": [<the regions just drawn>]}`` and adds the
answer's ``result`` to the open annotation as suggestions (contract row D). Suggestions for a
classification (Choices, TextArea) are accepted at once, so the answer never carries the project's
Choices: it carries a TextArea text and regions under a label of their own, all ``readonly``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from label_studio_sdk.label_interface import LabelInterface

from ml_backend.labelstudio.schema import TaskSchema

COUNTERFACTUAL_EVIDENCE_ALIASES = ("counterfactual evidence", "counterfactual")
COUNTERFACTUAL_TEXT_PREFIX = "counterfactual"  # a <TextArea> whose name starts so, pointed at the object
MAX_CONTEXT_REGIONS = 100


class ContextError(ValueError):
    """``params.context`` cannot be read; the message says what is wrong (a 4xx for the client)."""


@dataclass(frozen=True)
class Marks:
    """The drawn regions that ask for a counterfactual, in Label Studio's format."""

    irrelevant: tuple[dict[str, Any], ...] = ()
    relevant: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.irrelevant or self.relevant)

    @property
    def regions(self) -> list[dict[str, Any]]:
        return [*self.irrelevant, *self.relevant]

    @property
    def mode(self) -> str:
        """"without" (Irrelevant removed), "only" (all but Relevant removed) or both."""
        return "+".join(m for m, on in (("without", self.irrelevant), ("only", self.relevant)) if on)


@dataclass(frozen=True)
class InteractiveSchema:
    """Where a config shows a counterfactual: a TextArea's name and an evidence label (either may be absent)."""

    text_name: Optional[str] = None
    evidence_label: Optional[str] = None


def context_marks(context: Any, schema: TaskSchema) -> Marks:
    """The Irrelevant / Relevant regions of the schema's evidence control in ``params.context``.

    None, ``{}`` and ``{"result": []}`` mark nothing, and so do regions of other controls or labels.
    A context of the wrong shape raises ContextError; the regions' content is checked where it is read.
    """
    if context is None:
        return Marks()
    if not isinstance(context, dict):
        raise ContextError(f"params.context must be an object like {{\"result\": [...]}}, got {type(context).__name__}")
    results = context.get("result")
    if results is None:
        return Marks()
    if not isinstance(results, list):
        raise ContextError(f"params.context.result must be a list of regions, got {type(results).__name__}")
    if len(results) > MAX_CONTEXT_REGIONS:
        raise ContextError(f"params.context.result holds {len(results)} regions; at most {MAX_CONTEXT_REGIONS}")
    irrelevant, relevant = [], []
    for i, region in enumerate(results):
        if not isinstance(region, dict):
            raise ContextError(f"params.context.result[{i}] must be a region object, got {type(region).__name__}")
        if schema.evidence_name is None or region.get("from_name") != schema.evidence_name:
            continue
        value = region.get("value")
        labels = value.get(schema.evidence_type) if isinstance(value, dict) else None
        if not isinstance(labels, list):
            raise ContextError(f"params.context.result[{i}]: a {schema.evidence_type} region needs "
                               f"'value.{schema.evidence_type}', a list of labels")
        if schema.irrelevant_label is not None and schema.irrelevant_label in labels:
            irrelevant.append(region)
        elif schema.relevant_label is not None and schema.relevant_label in labels:
            relevant.append(region)
    return Marks(tuple(irrelevant), tuple(relevant))


def interactive_schema(label_config: str, schema: TaskSchema) -> InteractiveSchema:
    """The config's counterfactual TextArea and evidence label, if it has them."""
    return _interactive_schema(label_config, schema.object_name, schema.evidence_name)


@lru_cache(maxsize=64)
def _interactive_schema(label_config: str, object_name: str, evidence_name: Optional[str]) -> InteractiveSchema:
    interface = LabelInterface(label_config)  # parsed before by parse_label_config: it is valid
    text_name = next((c.name for c in interface.controls if c.tag == "TextArea" and object_name in c.to_name
                      and c.name.lower().startswith(COUNTERFACTUAL_TEXT_PREFIX)), None)
    label = None
    if evidence_name is not None:
        labels = {str(v).strip().lower(): v for v in interface.get_control(evidence_name).labels or []}
        label = next((labels[a] for a in COUNTERFACTUAL_EVIDENCE_ALIASES if a in labels), None)
    return InteractiveSchema(text_name, label)


WHAT = {"without": "Without the Irrelevant region(s)", "only": "With only the Relevant region(s)",
        "without+only": "With only the Relevant region(s), Irrelevant ones removed"}
UNTOUCHED = "Nothing was changed in your annotation."


def summary(mode: str, before: tuple[str, float], after: tuple[str, float]) -> str:
    """One line for the annotator: the class and score before and after."""
    if after[0] == before[0]:
        verdict = "the marked part suffices" if mode == "only" else "same class"
    else:
        verdict = "the class changes"
    return f"{WHAT[mode]}: {after[0]} {after[1]:.2f} (was {before[0]} {before[1]:.2f}); {verdict}. {UNTOUCHED}"


def label_set_summary(mode: str, before: list[tuple[str, float]], after: list[tuple[str, float]]) -> str:
    """Multi-label: the classes served, with their scores, before and after; which leave, which come."""

    def listed(served: list[tuple[str, float]]) -> str:
        return ", ".join(f"{label} {score:.2f}" for label, score in served) or "no class"

    gone = [label for label, _ in before if label not in dict(after)]
    came = [label for label, _ in after if label not in dict(before)]
    if not gone and not came:
        verdict = "the marked part suffices" if mode == "only" else "same classes"
    else:
        parts = ([f"no longer {', '.join(gone)}"] if gone else []) + ([f"now {', '.join(came)}"] if came else [])
        verdict = "; ".join(parts)
    return f"{WHAT[mode]}: {listed(after)} (was {listed(before)}); {verdict}. {UNTOUCHED}"


def textarea_result(schema: TaskSchema, text_name: str, text: str) -> dict[str, Any]:
    """A read-only TextArea result on the task's object."""
    return {"id": "counterfactual-summary", "from_name": text_name, "to_name": schema.object_name,
            "type": "textarea", "value": {"text": [text]}, "readonly": True}


def as_counterfactual(region: dict[str, Any], schema: TaskSchema, label: str, region_id: str) -> dict[str, Any]:
    """An evidence region (``results.brush_result`` / ``span_result``) relabelled, read-only."""
    key = schema.evidence_type or "labels"
    return {**region, "id": region_id, "value": {**region["value"], key: [label]}, "readonly": True}
