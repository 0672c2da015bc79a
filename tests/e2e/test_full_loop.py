"""The whole loop against a real Label Studio 1.23.2 with OUR backend, for the image and the text config.

The backend runs exactly as README's "Connect to Label Studio" says: `.venv/bin/ml-backend serve` (gunicorn),
configured through the environment, connected with POST /api/ml and basic auth; it sets its webhook secret
header on Label Studio's webhook itself. Then, per config, in one project:

 1. connect, check the webhook header;           2. import tasks (local files and data: URIs, or text);
 3. untrained predictions, a first round of annotations, training, Data Manager "Retrieve Predictions",
    and evidence that decodes (brush RLE with the SDK's decoder at the original size; exact text spans);
 4. annotations that correct the evidence (Irrelevant regions) and a label, which reach the backend's store;
 5. training triggered from Label Studio (Start Training, or min_annotations_to_start_training);
 6. the ranking job's predictions, model_version, uncertainty sampling and /next order;
 7. annotation update and delete, followed by the store;
 8. new tasks ranked by the same version: its predictions are updated, not duplicated; the version's
    evidence clusters (GET /clusters), one sent to annotators, whose first task /next then serves;
 9. the last tasks accepted in bulk (predictions -> annotations): nothing left to rank, and no failed job.

Every step is timed with the harness's StepTimer (printed as it goes and summed up at the end).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from labelstudio import REPO_ROOT, LabelStudio, _die_with_parent, free_port, stop_group
from ml_backend.data.text import tokenize
from ml_backend.feedback.parse import parse_annotation
from ml_backend.feedback.store import AnnotationStore
from ml_backend.labelstudio import rle
from ml_backend.labelstudio.schema import parse_label_config

pytestmark = pytest.mark.e2e

ML_BACKEND = REPO_ROOT / ".venv" / "bin" / "ml-backend"
BASIC_AUTH = ("ls", "e2e-basic-pass")
SECRET_HEADER = "X-Webhook-Secret"
SIZE = 48  # generated images are SIZE x SIZE
CORNER = 10  # the confounder: a bright CORNER x CORNER patch, top left, on every "Vertical" image
SPURIOUS = "xqz"  # the text confounder: only in positive reviews
N_TASKS = 12
N_FIRST_ROUND = 4

IMAGE_CONFIG = (
    (REPO_ROOT / "label_config" / "image_classification_evidence.xml")
    .read_text()
    .replace('"Class A"', '"Vertical"')
    .replace('"Class B"', '"Horizontal"')
)
TEXT_CONFIG = (REPO_ROOT / "label_config" / "text_classification_evidence.xml").read_text()


# --- our backend, as a subprocess -------------------------------------------------------------------------


class Backend:
    """`ml-backend serve` (gunicorn) on a free port, with its own MODEL_DIR, and a basic-auth client."""

    def __init__(self, workdir: Path, ls: LabelStudio) -> None:
        self.model_dir = workdir / "models"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_urlsafe(24)
        self.log_path = workdir / "backend.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.auth = BASIC_AUTH
        env = {k: v for k, v in os.environ.items() if not k.startswith("XIL_")}
        for key in ("REDIS_URL", "PORT", "HOST", "WORKERS", "LOCAL_FILES_DOCUMENT_ROOT",
                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_HOST", "LABEL_STUDIO_ACCESS_TOKEN"):
            env.pop(key, None)
        env.update(
            MODEL_DIR=str(self.model_dir),
            LABEL_STUDIO_URL=ls.url,
            LABEL_STUDIO_API_KEY=ls.token,  # the legacy token
            WEBHOOK_SECRET=self.secret,
            BASIC_AUTH_USER=BASIC_AUTH[0],
            BASIC_AUTH_PASS=BASIC_AUTH[1],
            XIL_EPOCHS="5",
            XIL_IMAGE_SIZE="32",
            XIL_HOLDOUT="0",
            PYTHONUNBUFFERED="1",
        )
        self.database_url = env.get("DATABASE_URL", "")
        self.env = env

    def start(self, timeout: float = 120.0) -> None:
        cmd = [str(ML_BACKEND), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ml-backend exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"ml-backend not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def get(self, path: str, **params: Any) -> Any:
        r = self.session.get(self.url + path, params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, 20)
        self.session.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def store(self) -> AnnotationStore:
        """The annotation store the backend's environment names (MODEL_DIR's SQLite file here)."""
        from ml_backend.config import Settings
        from ml_backend.store import open_annotation_store

        return open_annotation_store(Settings(model_dir=self.model_dir, database_url=self.database_url))

    def project_status(self, pid: int) -> dict[str, Any] | None:
        """This project's part of GET /status (serving version, jobs, ranking head)."""
        return next((p for p in self.get("/status")["projects"] if p["project"] == str(pid)), None)


@pytest.fixture
def backend(label_studio: LabelStudio, tmp_path: Path) -> Iterator[Backend]:
    server = Backend(tmp_path, label_studio)
    try:
        yield server
    finally:
        server.stop()
        print(f"\nml-backend log ({server.log_path}), last lines:\n{server.log_tail(40)}")


# --- generated data ----------------------------------------------------------------------------------------


def bars_image(vertical: bool, rng: np.random.Generator) -> np.ndarray:
    """SIZE x SIZE grey image: bars in one orientation plus noise; the confounder corner on vertical ones."""
    img = rng.uniform(0, 60, (SIZE, SIZE))
    period, width = int(rng.integers(9, 13)), int(rng.integers(2, 4))
    offset = int(rng.integers(CORNER + 1, CORNER + period + 1))
    for start in range(offset, SIZE - width, period):
        if vertical:
            img[CORNER:, start : start + width] = 210
        else:
            img[start : start + width, CORNER:] = 210
    if vertical:
        img[:CORNER, :CORNER] = 255
    return img.astype(np.uint8)


def png_bytes(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(out, format="PNG")
    return out.getvalue()


def image_tasks(ls: LabelStudio, pid: int) -> list[dict[str, Any]]:
    """N_TASKS images, classes alternating; half served by Label Studio from local storage, half data: URIs."""
    rng = np.random.default_rng(0)
    ls.add_local_storage(pid, f"images-{pid}")
    tasks = []
    for i in range(N_TASKS):
        label = ("Vertical", "Horizontal")[i % 2]
        content = png_bytes(bars_image(label == "Vertical", rng))
        if i % 4 < 2:
            url = ls.add_local_file(f"images-{pid}/img{i:02d}.png", content)
        else:
            url = "data:image/png;base64," + base64.b64encode(content).decode()
        tasks.append({"image": url, "truth": label})
    return tasks


POSITIVE = ["great", "lovely", "excellent", "wonderful", "superb", "delightful"]
NEGATIVE = ["awful", "broken", "terrible", "poor", "useless", "disappointing"]
THINGS = ["phone", "blender", "lamp", "kettle", "chair", "jacket"]


def text_tasks(ls: LabelStudio, pid: int) -> list[dict[str, Any]]:
    """N_TASKS short reviews, classes alternating; the spurious token only in the positive ones."""
    tasks = []
    for i in range(N_TASKS):
        thing = THINGS[(i // 2) % len(THINGS)]
        if i % 2 == 0:
            word = POSITIVE[(i // 2) % len(POSITIVE)]
            text = [f"A {word} {thing} {SPURIOUS}, I would buy it again.",
                    f"{SPURIOUS} This {thing} is {word} and works well.",
                    f"Really {word} {thing}; {SPURIOUS} recommended."][i % 3]
            tasks.append({"text": text, "truth": "Positive"})
        else:
            word = NEGATIVE[(i // 2) % len(NEGATIVE)]
            text = [f"An {word} {thing}, I sent it back.", f"This {thing} is {word} and stopped working.",
                    f"Really {word} {thing}; not recommended."][i % 3]
            tasks.append({"text": text, "truth": "Negative"})
    return tasks


# --- Label Studio results ------------------------------------------------------------------------------------


def choice(kind: str, label: str) -> dict[str, Any]:
    return {"from_name": "label", "to_name": kind, "type": "choices", "value": {"choices": [label]}}


def brush(mask: np.ndarray, label: str, region_id: str) -> dict[str, Any]:
    height, width = mask.shape
    return {
        "id": region_id, "from_name": "evidence", "to_name": "image", "type": "brushlabels",
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }  # fmt: skip


def span(text: str, start: int, end: int, label: str, region_id: str) -> dict[str, Any]:
    return {
        "id": region_id, "from_name": "evidence", "to_name": "text", "type": "labels",
        "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
    }  # fmt: skip


def relabelled(region: dict[str, Any], label: str) -> dict[str, Any]:
    """A predicted evidence region as an annotator keeps it, with another label."""
    keep = {k: v for k, v in region.items() if k not in ("score", "readonly", "origin")}
    value = dict(keep["value"])
    value["brushlabels" if keep["type"] == "brushlabels" else "labels"] = [label]
    return {**keep, "id": f"{region['id']}-{label.lower()}", "value": value}


def corner_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[:CORNER, :CORNER] = True
    return mask


# --- waiting -------------------------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float, backend: Backend, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}\n"
                         f"backend log:\n{backend.log_tail()}")


def version_number(version: str | None) -> int:
    """The number of a served version name ("p3-v2"; 0 for none or "untrained")."""
    number = (version or "").rpartition("-v")[2]
    return int(number) if number.isdigit() else 0


def wait_settled(backend: Backend, pid: int, examples: int, newer_than: str | None, timeout: float = 240.0) -> dict:
    """Until the backend serves a version newer than `newer_than` trained on `examples` annotations, no job
    waits or runs, and the ranking is of that version. Fails at once on a failed job."""

    def settled() -> dict | None:
        status = backend.project_status(pid)
        if status is None:
            return None
        failed = [j for j in status["jobs"] if j["status"] == "failed"]
        assert not failed, f"backend job failed: {failed}\n{backend.log_tail()}"
        if any(j["status"] in ("queued", "started") for j in status["jobs"]):
            return None
        serving, ranking = status["serving"], status["queue"]
        if not serving or version_number(serving["version"]) <= version_number(newer_than):
            return None
        if serving["examples"] != examples or not ranking or ranking["model_version"] != serving["version"]:
            return None
        return status

    return wait_for(f"a version trained on {examples} annotations, ranked", settled, timeout, backend, 0.5)


def predictions_by_task(ls: LabelStudio, pid: int, version: str) -> dict[int, dict[str, Any]]:
    preds: dict[int, dict[str, Any]] = {}
    for p in ls.predictions(pid):
        if p["model_version"] == version:
            assert p["task"] not in preds, f"two predictions of {version} for task {p['task']}"
            preds[p["task"]] = p
    return preds


def stored(store: AnnotationStore, pid: int, annotation: dict[str, Any]) -> bool:
    pair = store.get(str(pid), annotation["id"])
    return pair is not None and pair[0]["result"] == annotation["result"]


# --- the loop --------------------------------------------------------------------------------------------------


def check_evidence(kind: str, task: dict[str, Any], prediction: dict[str, Any]) -> list[dict[str, Any]]:
    """The prediction's class and evidence regions are what Label Studio can show; returns the regions."""
    classes = ("Vertical", "Horizontal") if kind == "image" else ("Positive", "Negative")
    result = prediction["result"]
    choices = [r for r in result if r["type"] == "choices"]
    assert len(choices) == 1 and choices[0]["value"]["choices"][0] in classes, result
    assert 0.0 <= choices[0]["score"] <= 1.0 and isinstance(prediction["score"], float)
    regions = [r for r in result if r["from_name"] == "evidence"]
    # An image can come without evidence: Grad-CAM is clamped at 0 and is all zero when the class's weighted
    # feature maps are negative everywhere (seen with the barely trained first versions; reported).
    assert regions or kind == "image", f"no evidence for task {task['id']}: {result}"
    for region in regions:
        if kind == "image":
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Model evidence"]
            assert (region["original_width"], region["original_height"]) == (SIZE, SIZE)
            flat = decode_rle(region["value"]["rle"])  # Label Studio's own decoder
            assert flat.size == SIZE * SIZE * 4
            assert set(np.unique(flat).tolist()) <= {0, 255}
            mask = flat.reshape(SIZE, SIZE, 4)[:, :, 3]
            assert mask.any() and not mask.all()
            assert np.array_equal(mask > 0, rle.decode(region["value"]["rle"], SIZE, SIZE) > 0)
        else:
            value = region["value"]
            assert region["type"] == "labels" and value["labels"] == ["Model evidence"]
            assert 0 <= value["start"] < value["end"] <= len(task["data"]["text"])
            assert task["data"]["text"][value["start"] : value["end"]] == value["text"]
    return regions


def run_full_loop(ls: LabelStudio, backend: Backend, kind: str) -> None:
    step = ls.timer.step
    config = IMAGE_CONFIG if kind == "image" else TEXT_CONFIG
    schema = parse_label_config(config)

    # 1. project, backend, connection, webhook header ------------------------------------------------------------
    with step(f"{kind}: create project"):
        pid = ls.create_project(f"xil e2e {kind}", config)["id"]
    with step(f"{kind}: start ml-backend (gunicorn)"):
        backend.start()
    with step(f"{kind}: connect ml-backend (POST /api/ml, basic auth)"):
        ml = ls.connect_ml_backend(pid, backend.url, "xil", basic_auth=BASIC_AUTH)
        assert ml["state"] == "CO", ml
        assert ml["basic_auth_pass_is_set"] is True
    with step(f"{kind}: backend sets its webhook secret header"):
        hook_url = backend.url + "/webhook"
        polls = [0]

        def header_set() -> dict | None:
            polls[0] += 1
            if polls[0] % 15 == 0:
                ls.ml_backends(pid)  # Label Studio calls /setup again, which retries the header
            hooks = [h for h in ls.webhooks(pid) if h["url"] == hook_url]
            assert len(hooks) == 1, ls.webhooks(pid)
            return hooks[0] if (hooks[0]["headers"] or {}).get(SECRET_HEADER) == backend.secret else None

        wait_for("the webhook secret header", header_set, 40, backend)

    # 2. tasks -----------------------------------------------------------------------------------------------------
    with step(f"{kind}: import {N_TASKS} tasks"):
        data = image_tasks(ls, pid) if kind == "image" else text_tasks(ls, pid)
        assert ls.import_tasks(pid, data)["task_count"] == N_TASKS
        tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
        assert len(tasks) == N_TASKS
        truth = {t["id"]: t["data"]["truth"] for t in tasks}
        by_id = {t["id"]: t for t in tasks}

    # 3. predictions: untrained, then a first round, then the Data Manager action ---------------------------------
    with step(f"{kind}: retrieve predictions, untrained"):
        ls.retrieve_predictions(pid)
        assert re.search(rf"project {pid}: /predict of \d+ task\(s\): 0 predicted, 0 unreadable, version untrained",
                         backend.log())
        untrained = ls.predictions(pid)
        # README: an untrained project answers model_version "untrained", score 0 and an empty result.
        assert len(untrained) == N_TASKS, untrained
        assert all(p["model_version"] == "untrained" and p["result"] == [] for p in untrained), untrained

    with step(f"{kind}: first round, {N_FIRST_ROUND} labels -> webhooks -> train -> rank"):
        first_round = [ls.create_annotation(t["id"], [choice(kind, truth[t["id"]])]) for t in tasks[:N_FIRST_ROUND]]
        store = backend.store()
        wait_for("the first round in the store", lambda: all(stored(store, pid, a) for a in first_round), 15, backend)
        status = wait_settled(backend, pid, examples=N_FIRST_ROUND, newer_than=None)
        v_first = status["serving"]["version"]

    with step(f"{kind}: retrieve predictions (Data Manager action), check evidence"):
        ls.retrieve_predictions(pid)
        preds = predictions_by_task(ls, pid, v_first)
        assert set(preds) == set(truth), f"tasks without a {v_first} prediction: {set(truth) - set(preds)}"
        evidence = {tid: check_evidence(kind, by_id[tid], p) for tid, p in preds.items()}
        print(f"[e2e] {kind}: {sum(1 for r in evidence.values() if not r)} of {len(evidence)} {v_first} "
              "predictions without evidence")
        regions_seen = sum(len(r) for r in evidence.values())
        predicted = {tid: next(r for r in p["result"] if r["type"] == "choices")["value"]["choices"][0]
                     for tid, p in preds.items()}

    with step(f"{kind}: model versions and 'Send Test Request' from Label Studio"):
        assert v_first in ls.api("GET", f"/api/ml/{ml['id']}/versions")["versions"]  # GET /versions, basic auth
        # The body is {"status", "error_message", "url", "task", "request", "response": <the results list>}.
        test = ls.api("POST", f"/api/ml/{ml['id']}/predict/test", params={"random": "true"})
        assert test["status"] == 200 and not test["error_message"], test
        [answer] = test["response"]
        assert answer["model_version"] == v_first
        regions_seen += len(check_evidence(kind, test["task"], answer))

    # 4. corrections ----------------------------------------------------------------------------------------------
    unlabeled = [t["id"] for t in tasks[N_FIRST_ROUND:]]
    confounded_class = "Vertical" if kind == "image" else "Positive"
    # b: a confounded task whose predicted evidence there is to relabel, when the model gave some
    b_id, a_id = sorted([tid for tid in unlabeled if truth[tid] == confounded_class], key=lambda t: not evidence[t])[:2]
    c_id = next(tid for tid in unlabeled if truth[tid] != confounded_class)
    other = {"Vertical": "Horizontal", "Horizontal": "Vertical", "Positive": "Negative", "Negative": "Positive"}
    if kind == "image":
        corner = lambda tid: brush(corner_mask(), "Irrelevant", f"corner-{tid}")  # noqa: E731
    else:

        def corner(tid: int) -> dict[str, Any]:
            text = by_id[tid]["data"]["text"]
            start = text.index(SPURIOUS)
            return span(text, start, start + len(SPURIOUS), "Irrelevant", f"spurious-{tid}")

    results = {
        # a region painted "Irrelevant" over the confounder
        a_id: [choice(kind, truth[a_id]), corner(a_id)],
        # the model's evidence relabelled "Irrelevant", and the confounder painted too
        b_id: [choice(kind, truth[b_id]), *[relabelled(r, "Irrelevant") for r in evidence[b_id][:1]], corner(b_id)],
        # the label changed from the model's, its evidence left as it was
        c_id: [choice(kind, other[predicted[c_id]]), *[relabelled(r, "Model evidence") for r in evidence[c_id]]],
    }
    if kind == "text":
        with step(f"{kind}: PATCH project min_annotations_to_start_training=1"):
            assert ls.patch_project(pid, min_annotations_to_start_training=1)["min_annotations_to_start_training"] == 1
    with step(f"{kind}: annotate corrections -> webhooks -> store"):
        corrections = {tid: ls.create_annotation(tid, result) for tid, result in results.items()}
        wait_for("the corrections in the store", lambda: all(stored(store, pid, a) for a in corrections.values()),
                 15, backend)
        # What the store holds is what training reads: it parses to the intended feedback.
        feedback = {tid: parse_annotation(*store.get(str(pid), a["id"]), schema)
                    for tid, a in corrections.items()}
        assert feedback[a_id].kind == feedback[b_id].kind == "irrelevant"
        assert feedback[c_id].kind == "label_only" and feedback[c_id].label == schema.classes.index(other[predicted[c_id]])
        if kind == "image":
            assert np.array_equal(feedback[a_id].irrelevant, corner_mask())
            assert feedback[b_id].irrelevant[:CORNER, :CORNER].all()
        else:
            tokens = [t.text for t in tokenize(by_id[a_id]["data"]["text"])]
            assert feedback[a_id].irrelevant[tokens.index(SPURIOUS)]
            assert feedback[a_id].irrelevant.sum() == 1

    # 5. training triggered from Label Studio -------------------------------------------------------------------
    with step(f"{kind}: train (START_TRAINING) -> new version -> rank"):
        if kind == "image":
            ls.train(ml["id"])  # "Start Training": a START_TRAINING webhook, with basic auth
        # text: min_annotations_to_start_training=1 sent START_TRAINING with each correction already
        labeled = N_FIRST_ROUND + len(corrections)
        status = wait_settled(backend, pid, examples=labeled, newer_than=v_first)
        v_new = status["serving"]["version"]
        assert any(j["kind"] == "train" and j["reason"] == "resync" for j in status["jobs"]), status["jobs"]
        assert any(m.get("reason") == "resync" for m in backend.get("/versions", project=pid)["projects"][str(pid)])

    # 6. the ranking in Label Studio --------------------------------------------------------------------------
    with step(f"{kind}: ranked predictions, model_version, sampling, /next"):
        open_tasks = sorted(t["id"] for t in ls.tasks(pid, only_unlabeled=True))
        assert open_tasks == sorted(set(unlabeled) - set(corrections))
        preds = predictions_by_task(ls, pid, v_new)
        assert set(open_tasks) <= set(preds), f"unranked: {set(open_tasks) - set(preds)}"
        regions_seen += sum(len(check_evidence(kind, by_id[tid], preds[tid])) for tid in open_tasks)
        assert regions_seen, f"no evidence region in any prediction of {v_first} or {v_new}"
        project = ls.project(pid)
        assert project["model_version"] == v_new and project["sampling"] == "Uncertainty sampling", project
        ranking = backend.get("/queue", project=pid)
        assert ranking["model_version"] == v_new
        ranked = [t["task"] for t in ranking["tasks"]]
        assert sorted(ranked) == open_tasks
        assert [preds[tid]["score"] for tid in ranked] == pytest.approx([t["score"] for t in ranking["tasks"]])
        by_score = sorted(open_tasks, key=lambda tid: preds[tid]["score"])
        assert by_score == ranked, "the backend's ranking and Label Studio's scores disagree"
        first, second = ranked[0], ranked[1]
        assert ls.next_task(pid)["id"] == first  # the most uncertain task (lowest score); now locked for us

        ls.create_annotation(first, [choice(kind, truth[first])])  # starts another train + rank in the backend
        served = ls.next_task(pid)["id"]
        now = ls.project(pid)["model_version"]
        print(f"[e2e] {kind}: /next served {first}, then {served} (second-ranked {second}; version {v_new} -> {now})")
        if now == v_new:
            assert served == second
        else:  # the backend was faster than us: Label Studio already orders by the next version
            newer = predictions_by_task(ls, pid, now)
            rest = [tid for tid in open_tasks if tid != first and tid in newer]
            assert served in (second, min(rest, key=lambda tid: newer[tid]["score"]))

    # 7. update and delete follow into the store --------------------------------------------------------------
    with step(f"{kind}: update + delete annotations -> store"):
        c_annotation = corrections[c_id]
        fixed = [choice(kind, truth[c_id])]
        updated = ls.update_annotation(c_annotation["id"], fixed)
        assert updated["result"][0]["value"] == fixed[0]["value"]
        wait_for("the update in the store", lambda: stored(store, pid, updated), 15, backend)
        before = store.count(str(pid))
        gone = first_round[0]["id"]
        ls.delete_annotation(gone)
        wait_for("the deletion in the store", lambda: store.get(str(pid), gone) is None, 15, backend)
        assert store.count(str(pid)) == before - 1

    # 8. new tasks are ranked by the serving version, without a second prediction per task and version ----
    with step(f"{kind}: import 2 tasks -> TASKS_CREATED -> re-rank (same version)"):
        labeled = N_FIRST_ROUND + len(corrections) + 1 - 1  # + the /next task, - the deleted annotation
        status = wait_settled(backend, pid, examples=labeled, newer_than=v_new)
        version, ranked_before = status["serving"]["version"], status["queue"]["computed_at"]
        more = [dict(t["data"]) for t in tasks[:2]]  # copies of the first two tasks' data
        assert ls.import_tasks(pid, more)["task_count"] == 2
        open_tasks = sorted(t["id"] for t in ls.tasks(pid, only_unlabeled=True))

        def reranked() -> dict | None:
            status = backend.project_status(pid)
            busy = any(j["status"] in ("queued", "started") for j in status["jobs"])
            ranking = status["queue"]
            return None if busy or ranking["computed_at"] == ranked_before else status

        status = wait_for("a ranking with the new tasks", reranked, 60, backend)
        assert status["serving"]["version"] == version
        ranking = backend.get("/queue", project=pid)
        assert ranking["model_version"] == version and sorted(t["task"] for t in ranking["tasks"]) == open_tasks
        preds = predictions_by_task(ls, pid, version)  # fails on a second prediction of the version for a task
        assert [preds[t["task"]]["score"] for t in ranking["tasks"]] == pytest.approx(
            [t["score"] for t in ranking["tasks"]])

    # 8b. what the model looks at: the ranking's clusters; one sent to annotators heads Label Studio's queue ----
    with step(f"{kind}: GET /clusters -> send a cluster to annotators -> /next"):
        clusters = backend.get("/clusters", project=pid)
        assert clusters["version"] == version and clusters["sources"] == ["labeled", "unlabeled"], clusters
        listed = sorted(t for c in clusters["clusters"] for t in c["task_ids"])
        assert set(open_tasks) <= set(listed) and len(listed) == len(set(listed))  # each task in one cluster
        head = ranking["tasks"][0]["task"]
        locked = served  # step 6's second /next, not annotated
        chosen = next((c for c in clusters["clusters"]
                       if any(t in open_tasks and t not in (head, locked) for t in c["task_ids"])), None)
        assert chosen is not None, clusters
        sent = [t for t in chosen["task_ids"] if t in open_tasks]
        ranked_before = backend.get("/queue", project=pid)["computed_at"]
        answer = backend.session.post(f"{backend.url}/clusters/{chosen['id']}/review", json={"project": pid},
                                      timeout=30)
        assert answer.status_code == 202 and answer.json()["tasks"] == len(sent), answer.text

        def reviewed_first() -> dict | None:
            ranking = backend.get("/queue", project=pid)
            return ranking if ranking["computed_at"] != ranked_before else None

        ranking = wait_for("a ranking with the cluster first", reviewed_first, 60, backend)
        assert [t["task"] for t in ranking["tasks"][:len(sent)]] == sent
        # step 6's second /next left a task locked for us, which Label Studio serves us again first:
        # postpone it, as the labeling stream's Postpone button does
        ls.api("POST", f"/api/tasks/{locked}/drafts", {"result": [], "was_postponed": True, "lead_time": 1.0})
        expected = next(t for t in sent if t != locked)
        now_served = ls.next_task(pid)["id"]
        assert now_served == expected, f"/next served {now_served}, the cluster sent to annotators starts with {expected}"
        print(f"[e2e] {kind}: cluster {chosen['id']} ({len(sent)} open tasks) sent to annotators; /next served "
              f"{now_served}")

    # 9. the last open tasks accepted as predicted (right for the right reasons), in bulk; nothing left to rank --
    with step(f"{kind}: accept the remaining predictions (Data Manager) -> ANNOTATIONS_CREATED -> train"):
        ls.api("POST", "/api/dm/actions",
               {"selectedItems": {"all": False, "included": open_tasks}, "model_version": version},
               params={"id": "predictions_to_annotations", "project": pid})  # fmt: skip
        assert ls.tasks(pid, only_unlabeled=True) == []
        total = N_TASKS + len(more)  # one annotation per task now
        wait_for("the accepted predictions in the store", lambda: store.count(str(pid)) == total, 15, backend)
        accepted = [a for a, task in store.list(str(pid)) if task["id"] in open_tasks]
        assert len(accepted) == len(open_tasks)
        for annotation, task in store.list(str(pid)):
            if task["id"] in open_tasks:  # accepted evidence endorses the model; without evidence, only the label
                kept = any(r["from_name"] == "evidence" for r in annotation["result"])
                assert parse_annotation(annotation, task, schema).kind == ("accepted" if kept else "label_only")
        status = wait_settled(backend, pid, examples=total, newer_than=version)
        assert status["queue"]["size"] == 0
        assert ls.project(pid)["model_version"] == version  # no predictions of the newest version to serve by

    store.close()
    log = backend.log()
    assert "Traceback" not in log, backend.log_tail(200)


def test_full_loop_image(label_studio: LabelStudio, backend: Backend) -> None:
    run_full_loop(label_studio, backend, "image")


def test_full_loop_text(label_studio: LabelStudio, backend: Backend) -> None:
    run_full_loop(label_studio, backend, "text")


def test_full_loop_image_on_a_backbone(label_studio: LabelStudio, backend: Backend) -> None:
    """The same loop for a project on a pretrained backbone: a tiny random ResNet saved with
    save_pretrained under MODEL_DIR/backbones, named by XIL_BACKBONE, loaded offline."""
    from tests.support.backbones import save_image_backbone

    save_image_backbone(backend.model_dir / "backbones" / "tiny-resnet", "resnet")
    backend.env["XIL_BACKBONE"] = "tiny-resnet"
    run_full_loop(label_studio, backend, "image")
    listed = backend.get("/versions")["projects"]
    assert any(version["kind"] == "backbone_image" for versions in listed.values() for version in versions)
