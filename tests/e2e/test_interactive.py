"""Interactive pre-annotation against a real Label Studio 1.23.2 (issue 16, "counterfactual on demand").

Label Studio's labeling UI, with Auto-Annotation on and the backend's "Interactive preannotations"
enabled, sends the regions an annotator just drew to POST /api/ml/{id}/interactive-annotating; Label
Studio forwards them to our /predict as ``params.context`` and hands the first result back to the
browser as ``{"data": ...}`` without storing anything (contract row D). Here, per config (image, text):

 1. the switch: with ``is_interactive`` off Label Studio refuses without calling us; PATCH (url and
    project included) turns it on;
 2. a drawn Irrelevant region: the answer carries the counterfactual (class and score before and
    after), a read-only TextArea summary and "Counterfactual evidence" regions, and no Choices;
 3. a drawn Relevant region: the "only" counterfactual;
 4. an empty context: today's prediction; a malformed region: a 422 (Label Studio's ``errors`` carries
    only its status line; our log names the region's fault);
 5. Label Studio stored no prediction; an annotation holding the accepted read-only results is stored
    as sent, and our training parser reads no feedback from them.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
import torch

from labelstudio import REPO_ROOT, LabelStudio
from ml_backend.feedback.parse import parse_annotation
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.text import TextCNN
from ml_backend.store import ProjectStore
from test_full_loop import BASIC_AUTH, SIZE, Backend, backend, bars_image, brush, png_bytes, span  # noqa: F401

pytestmark = pytest.mark.e2e

CONFIGS = {kind: (REPO_ROOT / "label_config" / f"{kind}_classification_evidence.xml").read_text()
           for kind in ("image", "text")}
TEXT = "A great kettle, xqz, it boils fast and looks lovely on the counter."


def corner(size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[:size // 2, :size // 2] = True
    return mask


def project_with_task(ls: LabelStudio, server: Backend, kind: str) -> tuple[int, int, int]:
    """(project id, ML backend id, task id): a project with one task, connected, with a published model."""
    pid = ls.create_project(f"interactive {kind}", CONFIGS[kind])["id"]
    if kind == "image":
        data = {"image": "data:image/png;base64," + base64.b64encode(png_bytes(bars_image(True, np.random.default_rng(1)))).decode()}
    else:
        data = {"text": TEXT}
    ls.import_tasks(pid, [data])
    task_id = ls.tasks(pid)[0]["id"]
    schema = parse_label_config(CONFIGS[kind])
    torch.manual_seed(0)
    network = ImageCNN(2, image_size=32) if kind == "image" else TextCNN(2)
    ProjectStore(server.model_dir, str(pid)).publish(adapt(network), schema.classes, {"source": "e2e"})
    ml = ls.connect_ml_backend(pid, server.url, f"xil {kind}", basic_auth=BASIC_AUTH)
    return pid, ml["id"], task_id


def drawn(kind: str, label: str) -> dict[str, Any]:
    """A region as the labeling UI serializes it into the context."""
    if kind == "image":
        return {**brush(corner(SIZE), label, "drawn"), "origin": "manual"}
    start = TEXT.index("xqz")
    return {**span(TEXT, start, start + 3, label, "drawn"), "origin": "manual"}


def check_counterfactual(kind: str, data: dict[str, Any], mode: str, classes: tuple[str, ...]) -> None:
    facts = data["counterfactual"]
    assert facts["mode"] == mode and facts["before"]["label"] in classes and facts["after"]["label"] in classes
    assert facts["changed"] == (facts["before"]["label"] != facts["after"]["label"])
    assert 0.0 < facts["after"]["score"] <= 1.0 and data["score"] == pytest.approx(facts["after"]["score"])
    types = [r["type"] for r in data["result"]]
    assert "choices" not in types, "the interactive answer must never carry the annotator's Choices"
    summary = data["result"][0]
    assert summary["type"] == "textarea" and summary["from_name"] == "counterfactual" and summary["readonly"] is True
    line = summary["value"]["text"][0]
    assert f"{facts['after']['label']} " in line and f"was {facts['before']['label']}" in line
    evidence = [r for r in data["result"] if r["type"] != "textarea"]
    label_key = "brushlabels" if kind == "image" else "labels"
    for region in evidence:
        assert region["from_name"] == "evidence" and region["readonly"] is True
        assert region["value"][label_key] == ["Counterfactual evidence"]
        if kind == "image":
            assert (region["original_width"], region["original_height"]) == (SIZE, SIZE)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_interactive_annotating_answers_with_the_counterfactual(label_studio: LabelStudio, backend: Backend,
                                                                kind: str) -> None:
    ls = label_studio
    timer = ls.timer
    backend.start()
    classes = parse_label_config(CONFIGS[kind]).classes
    with timer.step(f"interactive {kind}: project, task, model, connect"):
        pid, ml_id, task_id = project_with_task(ls, backend, kind)

    with timer.step(f"interactive {kind}: the switch"):
        refused = ls.interactive_annotating(ml_id, task_id, {"result": [drawn(kind, "Irrelevant")]})
        assert refused == {"errors": ["Model is not set to be used for interactive preannotations"]}
        # The PATCH is validated with /health and /setup using only what it carries: basic auth must be
        # sent again (the stored password is not used), or /setup answers 401 and Label Studio a 400.
        patched = ls.patch_ml_backend(ml_id, backend.url, pid, is_interactive=True, auth_method="BASIC_AUTH",
                                      basic_auth_user=BASIC_AUTH[0], basic_auth_pass=BASIC_AUTH[1])
        assert patched["is_interactive"] is True

    with timer.step(f"interactive {kind}: Irrelevant, Relevant, empty, malformed"):
        answer = ls.interactive_annotating(ml_id, task_id, {"result": [drawn(kind, "Irrelevant")]})
        assert "errors" not in answer, answer
        check_counterfactual(kind, answer["data"], "without", classes)
        only = ls.interactive_annotating(ml_id, task_id, {"result": [drawn(kind, "Relevant")]})
        check_counterfactual(kind, only["data"], "only", classes)

        today = ls.interactive_annotating(ml_id, task_id, {"result": []})["data"]
        assert "counterfactual" not in today and today["result"][0]["type"] == "choices"
        assert today["score"] == pytest.approx(answer["data"]["counterfactual"]["before"]["score"], abs=1e-5)

        bad = drawn(kind, "Irrelevant")
        if kind == "image":
            bad["original_width"] = SIZE * 2
        else:
            bad["value"] = {**bad["value"], "start": 500, "end": 510}
        errors = ls.interactive_annotating(ml_id, task_id, {"result": [bad]})
        # Label Studio 1.23.2 passes on the status line, not our JSON body (ml/api_connector.py _request):
        # the annotator sees that the call failed; the backend's log says why.
        assert list(errors) == ["errors"] and errors["errors"][0].startswith("422 Client Error")
        assert "params.context: " in backend.log()

    with timer.step(f"interactive {kind}: nothing stored; the accepted results as an annotation"):
        assert ls.predictions(pid) == [], "Label Studio stores nothing from an interactive call"
        accepted = [{"from_name": "label", "to_name": kind, "type": "choices", "value": {"choices": [classes[0]]}},
                    *answer["data"]["result"]]
        annotation = ls.create_annotation(task_id, accepted)
        kept = {r["from_name"]: r for r in annotation["result"]}
        assert kept["counterfactual"]["value"]["text"] == answer["data"]["result"][0]["value"]["text"]
        assert kept["counterfactual"].get("readonly") is True
        feedback = parse_annotation(annotation, {"id": task_id, "data": {"text": TEXT}}, parse_label_config(CONFIGS[kind]),
                                    image_size=32 if kind == "image" else None)
        assert feedback.kind == "label_only" and feedback.irrelevant is None and feedback.relevant is None
