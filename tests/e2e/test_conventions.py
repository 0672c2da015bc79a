"""Label Studio conventions against a real Label Studio 1.23.2, with OUR backend (`ml-backend serve`):

- version names: GET /api/ml/{id}/versions (Label Studio asks our /versions with no project)
  lists names that say their project ("p<id>-v<N>"), the same names the predictions, /setup and
  the project's model_version carry;
- a multi-label project (<Choices choice="multiple">): annotations with several choices train it,
  Label Studio stores and returns predictions with several choices, each served class with its
  own evidence regions, and the ranking orders /next; an interactive call answers with the label
  sets before and after a painted region;
- a project with unreadable tasks (an undecodable image, a missing local file): Label Studio
  stores no prediction for them (our /predict answers an empty list for such a task), so
  uncertainty sampling never serves one while a readable task is open; the reason is logged once.

Reuses the harness (conftest's `label_studio`) and the full loop's `backend` fixture and helpers.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from labelstudio import LabelStudio
from ml_backend.feedback.parse import LabelSet, parse_annotation
from ml_backend.labelstudio.schema import parse_label_config
from test_full_loop import (BASIC_AUTH, IMAGE_CONFIG, SIZE, Backend, backend, bars_image, brush,  # noqa: F401
                            check_evidence, choice, png_bytes, predictions_by_task, stored, wait_for, wait_settled)

pytestmark = pytest.mark.e2e

CLASSES = ("Top", "Left", "Right")
MULTI_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="multiple" showInLine="true">
    <Choice value="Top"/><Choice value="Left"/><Choice value="Right"/>
  </Choices>
  <BrushLabels name="evidence" toName="image" smart="true">
    <Label value="Model evidence" background="#1f77b4"/>
    <Label value="Irrelevant" background="#d62728"/>
    <Label value="Relevant" background="#2ca02c"/>
    <Label value="Counterfactual evidence" background="#ff7f0e"/>
  </BrushLabels>
  <TextArea name="counterfactual" toName="image" editable="false" smart="false" maxSubmissions="1"/>
</View>"""
# each class: its own pattern (horizontal bars, vertical bars, a solid block) at its own place on a
# noisy 48 x 48 image. A global-pooling CNN tells patterns apart from a few examples; places alone it
# learned from 6 examples in only some seeds' trajectories (one failed CI run).
BLOCKS = {"Top": (slice(0, 16), slice(16, 32)), "Left": (slice(24, 48), slice(0, 16)),
          "Right": (slice(24, 48), slice(32, 48))}
COMBOS = [("Top",), ("Left",), ("Right",), ("Top", "Left"), ("Top", "Right"), ("Left", "Right"),
          ("Top", "Left", "Right"), ("Top", "Right"), ("Left",), ("Top", "Left"), ("Right",), ("Left", "Right")] * 2
N_LABELED = 18


def blocks_image(labels: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    img = rng.uniform(0, 60, (SIZE, SIZE))
    for label in labels:
        rows, cols = BLOCKS[label]
        pattern = np.zeros((rows.stop - rows.start, cols.stop - cols.start))
        if label == "Top":
            pattern[(np.arange(len(pattern)) % 4) < 2] = 230
        elif label == "Left":
            pattern[:, (np.arange(pattern.shape[1]) % 4) < 2] = 230
        else:
            pattern[:] = 230
        img[rows, cols] = np.maximum(img[rows, cols], pattern)
    return img.astype(np.uint8)


def data_uri(gray: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(gray)).decode()


def multi_choice(labels: tuple[str, ...]) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}


def connect(ls: LabelStudio, backend: Backend, title: str, config: str) -> tuple[int, dict]:
    pid = ls.create_project(title, config)["id"]
    backend.start()
    ml = ls.connect_ml_backend(pid, backend.url, "xil", basic_auth=BASIC_AUTH)
    assert ml["state"] == "CO", ml
    return pid, ml


def test_multi_label_project(label_studio: LabelStudio, backend: Backend) -> None:
    ls, step = label_studio, label_studio.timer.step
    schema = parse_label_config(MULTI_CONFIG)
    backend.env.update(XIL_EPOCHS="100", XIL_PATIENCE="100")  # 14 examples: one batch, one step per epoch
    with step("multi-label: project, backend, tasks"):
        pid, ml = connect(ls, backend, "xil e2e multi-label", MULTI_CONFIG)
        rng = np.random.default_rng(0)
        data = [{"image": data_uri(blocks_image(labels, rng)), "truth": ",".join(labels)} for labels in COMBOS]
        assert ls.import_tasks(pid, data)["task_count"] == len(COMBOS)
        tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
        truth = {t["id"]: tuple(t["data"]["truth"].split(",")) for t in tasks}

    with step(f"multi-label: {N_LABELED} annotations with several choices -> train -> rank"):
        annotations = [ls.create_annotation(t["id"], [multi_choice(truth[t["id"]])]) for t in tasks[:N_LABELED]]
        store = backend.store()
        wait_for("the annotations in the store", lambda: all(stored(store, pid, a) for a in annotations), 15, backend)
        for annotation in annotations:  # what training reads: a label set per task
            feedback = parse_annotation(*store.get(str(pid), annotation["id"]), schema)
            assert isinstance(feedback.label, LabelSet)
            assert [schema.classes[k] for k in feedback.label.indices] == sorted(
                truth[annotation["task"]], key=schema.classes.index)
        status = wait_settled(backend, pid, examples=N_LABELED, newer_than=None)
        version = status["serving"]["version"]
        assert version.startswith(f"p{pid}-v"), version  # a burst of webhooks may train more than once

    with step("multi-label: Label Studio stores predictions with several choices and per-class evidence"):
        ls.retrieve_predictions(pid)
        preds = predictions_by_task(ls, pid, version)
        assert set(preds) == set(truth), f"tasks without a {version} prediction: {set(truth) - set(preds)}"
        served = {}
        for tid, prediction in preds.items():
            choices = [r for r in prediction["result"] if r["type"] == "choices"]
            assert len(choices) <= 1, prediction
            labels = choices[0]["value"]["choices"] if choices else []
            assert set(labels) <= set(CLASSES) and 0.0 <= prediction["score"] <= 1.0
            served[tid] = tuple(labels)
            for region in (r for r in prediction["result"] if r["from_name"] == "evidence"):
                assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Model evidence"]
                assert region["meta"]["text"][0].removeprefix("evidence for ") in labels
                assert (region["original_width"], region["original_height"]) == (SIZE, SIZE)
        several = [tid for tid, labels in served.items() if len(labels) >= 2]
        assert several, f"no prediction with several choices: {served}"
        right = sum(set(served[tid]) == set(truth[tid]) for tid in truth)
        print(f"[e2e] multi-label: {right} of {len(truth)} tasks' label sets predicted exactly; "
              f"{len(several)} predictions with several choices")
        assert right >= len(truth) // 2, (served, truth)

    with step("multi-label: model versions, ranking, /next"):
        listed = ls.api("GET", f"/api/ml/{ml['id']}/versions")["versions"]
        assert listed == [f"p{pid}-v{n}" for n in range(1, len(listed) + 1)] and version in listed
        project = ls.project(pid)
        assert project["model_version"] == version and project["sampling"] == "Uncertainty sampling"
        open_tasks = [t["id"] for t in ls.tasks(pid, only_unlabeled=True)]
        lowest = min(open_tasks, key=lambda tid: preds[tid]["score"])
        assert ls.next_task(pid)["id"] == lowest
    with step("multi-label: interactive counterfactual, the Top pattern painted Irrelevant"):
        ls.patch_ml_backend(ml["id"], backend.url, pid, is_interactive=True, auth_method="BASIC_AUTH",
                            basic_auth_user=BASIC_AUTH[0], basic_auth_pass=BASIC_AUTH[1])
        tid = next(t for t in sorted(truth) if truth[t] == ("Top", "Left"))
        painted = np.zeros((SIZE, SIZE), dtype=bool)
        painted[BLOCKS["Top"]] = True
        answer = ls.interactive_annotating(ml["id"], tid, {"result": [brush(painted, "Irrelevant", "drawn")]})
        assert "errors" not in answer, answer
        facts, result = answer["data"]["counterfactual"], answer["data"]["result"]
        # whether Top survives its pattern painted over depends on the model (random fill, no donor task at
        # serving time: noise can read as bars); what it does with the pattern is tested in test_counterfactual
        assert facts["before"]["labels"] == list(served[tid]) and set(facts["after"]["labels"]) <= set(CLASSES)
        assert set(facts["after"]["scores"]) == set(CLASSES)
        assert facts["changed"] == (facts["before"]["labels"] != facts["after"]["labels"])
        line = result[0]["value"]["text"][0]
        assert result[0]["type"] == "textarea" and line.startswith("Without the Irrelevant region(s): "), result[0]
        assert ("no longer Top" in line) == ("Top" not in facts["after"]["labels"]), line
        assert "choices" not in [r["type"] for r in result]
        for region in result[1:]:
            assert region["value"]["brushlabels"] == ["Counterfactual evidence"] and region["readonly"] is True
            assert region["meta"]["text"][0].removeprefix("evidence for ") in facts["after"]["labels"]
    store.close()
    assert "Traceback" not in backend.log(), backend.log_tail(200)


def test_unreadable_tasks_are_never_served_first(label_studio: LabelStudio, backend: Backend) -> None:
    ls, step = label_studio, label_studio.timer.step
    with step("unreadable: project, backend, tasks (2 of 8 unreadable, imported first)"):
        pid, ml = connect(ls, backend, "xil e2e unreadable", IMAGE_CONFIG)
        rng = np.random.default_rng(3)
        broken = [{"image": "data:image/png;base64,bm90IGFuIGltYWdl", "truth": "broken"},  # not an image
                  {"image": "/data/local-files/?d=nowhere/missing.png", "truth": "broken"}]  # 404
        good = [{"image": data_uri(bars_image(i % 2 == 0, rng)), "truth": ("Vertical", "Horizontal")[i % 2]}
                for i in range(6)]
        assert ls.import_tasks(pid, broken + good)["task_count"] == 8
        tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
        unreadable = {t["id"] for t in tasks if t["data"]["truth"] == "broken"}
        readable = [t for t in tasks if t["id"] not in unreadable]
        truth = {t["id"]: t["data"]["truth"] for t in tasks}

    with step("unreadable: Retrieve Predictions twice: none stored for them, logged once"):
        labeled = [ls.create_annotation(t["id"], [choice("image", truth[t["id"]])]) for t in readable[:2]]
        status = wait_settled(backend, pid, examples=len(labeled), newer_than=None)
        version = status["serving"]["version"]
        ls.retrieve_predictions(pid)
        ls.retrieve_predictions(pid)  # Label Studio re-sends the tasks without a prediction of the version
        preds = predictions_by_task(ls, pid, version)
        assert not unreadable & set(preds), {tid: preds[tid] for tid in unreadable & set(preds)}
        assert {t["id"] for t in readable} <= set(preds)
        for prediction in preds.values():
            check_evidence("image", {}, prediction)
        log = backend.log()
        for tid in unreadable:
            served_warnings = [line for line in log.splitlines()
                               if f"task {tid}: cannot read data (no prediction)" in line and "WARNING" in line]
            assert len(served_warnings) == 1, served_warnings
        ranking = json.loads((backend.model_dir / "projects" / str(pid) / "queue.json").read_text())
        assert set(map(int, ranking["unreadable"])) == unreadable
        assert unreadable.isdisjoint(t["task"] for t in ranking["tasks"])

    with step("unreadable: /next serves every readable task before an unreadable one"):
        project = ls.project(pid)
        assert project["model_version"] == version and project["sampling"] == "Uncertainty sampling"
        order = []
        for _ in range(len(readable) - len(labeled)):
            task = ls.next_task(pid)
            assert task["id"] not in unreadable, f"/next served unreadable task {task['id']} after {order}"
            order.append(task["id"])
            ls.create_annotation(task["id"], [choice("image", truth[task["id"]])])
        print(f"[e2e] unreadable: /next served {order}, then only unreadable tasks were left")
        assert ls.next_task(pid)["id"] in unreadable  # last: Label Studio's fallback once no prediction is left
    assert "Traceback" not in backend.log(), backend.log_tail(200)
