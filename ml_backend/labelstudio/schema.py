"""Label config -> TaskSchema: what the backend predicts and where its evidence goes."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from label_studio_sdk.label_interface import LabelInterface

# Default names of the evidence control's label roles; a config may use other names,
# matched case-insensitively against these aliases.
EVIDENCE_ALIASES = ("model evidence", "evidence", "model_evidence")
IRRELEVANT_ALIASES = ("irrelevant", "not relevant", "confounder", "ignore")
RELEVANT_ALIASES = ("relevant", "look here", "important")

_EVIDENCE_CONTROL = {"Image": "BrushLabels", "Text": "Labels"}


class SchemaError(ValueError):
    """The label config cannot be served; the message says what is missing."""


@dataclass(frozen=True)
class TaskSchema:
    object_type: str  # "image" | "text"
    object_name: str  # e.g. "image"
    data_key: str  # task["data"][data_key] holds the image URL or the text
    choices_name: str
    classes: tuple[str, ...]
    multi_label: bool = False  # <Choices choice="multiple">: any number of classes per task
    evidence_name: Optional[str] = None
    evidence_type: Optional[str] = None  # "brushlabels" | "labels" | None
    evidence_label: Optional[str] = None
    irrelevant_label: Optional[str] = None
    relevant_label: Optional[str] = None

    @property
    def has_evidence(self) -> bool:
        return self.evidence_name is not None and self.evidence_label is not None

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _find(labels: list[str], aliases: tuple[str, ...]) -> Optional[str]:
    lowered = {label.strip().lower(): label for label in labels}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    return None


def parse_label_config(label_config: str) -> TaskSchema:
    """Parse a Label Studio label config; raise SchemaError naming what is missing."""
    if not label_config or not isinstance(label_config, str):
        raise SchemaError("no label config: send the project's label_config (XML)")
    if len(label_config) <= CACHED_CONFIG_CHARS:
        return _parse_cached(label_config)
    return _parse(label_config)  # a config that large is parsed each time: the cache stays small


CACHED_CONFIG_CHARS = 256 * 1024  # with 64 entries, the cache holds at most 16 M characters


@lru_cache(maxsize=64)  # every /predict carries the config; parsing it is the slow part
def _parse_cached(label_config: str) -> TaskSchema:
    return _parse(label_config)


def _parse(label_config: str) -> TaskSchema:
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several types on bad XML
        raise SchemaError(f"label config is not valid XML: {exc}") from None

    objects = [o for o in interface.objects if o.tag in _EVIDENCE_CONTROL]
    if not objects:
        found = sorted({o.tag for o in interface.objects}) or ["none"]
        raise SchemaError(f"label config needs an <Image> or <Text> object tag; found {', '.join(found)}")
    for obj in objects:
        choices = [
            c for c in interface.controls if c.tag == "Choices" and obj.name in c.to_name and c.labels
        ]
        if not choices:
            continue
        control = choices[0]
        if len(control.labels) < 2:
            raise SchemaError(f"<Choices name=\"{control.name}\"> needs at least two <Choice> values")
        value = obj.value or ""
        if not value.startswith("$") or len(value) < 2:
            raise SchemaError(f"<{obj.tag} name=\"{obj.name}\"> needs value=\"$field\" naming the task data field")
        evidence_tag = _EVIDENCE_CONTROL[obj.tag]
        evidence = [c for c in interface.controls if c.tag == evidence_tag and obj.name in c.to_name]
        ev_name = ev_label = irr_label = rel_label = None
        if evidence:
            labels = list(evidence[0].labels or [])
            ev_label = _find(labels, EVIDENCE_ALIASES)
            irr_label = _find(labels, IRRELEVANT_ALIASES)
            rel_label = _find(labels, RELEVANT_ALIASES)
            if ev_label is None:
                raise SchemaError(
                    f"<{evidence_tag} name=\"{evidence[0].name}\"> needs a label for the model's evidence, "
                    f"e.g. <Label value=\"Model evidence\"/>; found {labels}"
                )
            ev_name = evidence[0].name
        return TaskSchema(
            object_type=obj.tag.lower(),
            object_name=obj.name,
            data_key=value[1:],
            choices_name=control.name,
            classes=tuple(control.labels),
            multi_label=str(control.attr.get("choice", "")).strip().lower() == "multiple",
            evidence_name=ev_name,
            evidence_type=evidence_tag.lower() if ev_name else None,
            evidence_label=ev_label,
            irrelevant_label=irr_label,
            relevant_label=rel_label,
        )
    names = ", ".join(f"<{o.tag} name=\"{o.name}\">" for o in objects)
    raise SchemaError(f"label config needs a <Choices> control with toName pointing at {names}")
