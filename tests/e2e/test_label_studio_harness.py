"""Smoke test of the Label Studio harness against a real Label Studio 1.23.2.

The ML backend here is a tiny stdlib stub. It stands in for OUR backend only in this harness test,
because the backend is being written in parallel; the full end-to-end test runs the real one.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from labelstudio import REPO_ROOT, LabelStudio, LabelStudioError

pytestmark = pytest.mark.e2e

LABEL_CONFIG = (REPO_ROOT / "label_config" / "image_classification_evidence.xml").read_text()
# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEBHOOK_SECRET = "s3cret-for-webhooks"


def choice(label: str) -> dict[str, Any]:
    """A Choices result for the image config."""
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


class StubBackend:
    """A stdlib HTTP server answering like an ML backend; records every request it gets."""

    def __init__(self, model_version: str = "stub-1") -> None:
        self.model_version = model_version
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with stub.lock:
                    stub.calls.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                return body

            def do_GET(self) -> None:
                self._record()
                if self.path == "/health":
                    self._reply(200, {"status": "UP"})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._record()
                if self.path == "/setup":
                    self._reply(200, {"model_version": stub.model_version})
                elif self.path == "/predict":
                    # Lower score = more uncertain; make the last task the most uncertain one.
                    results = [
                        {
                            "result": [choice("Class A")],
                            "score": round(0.9 - 0.1 * i, 3),
                            "model_version": stub.model_version,
                        }
                        for i, _ in enumerate(body["tasks"])
                    ]
                    self._reply(200, {"results": results})
                elif self.path == "/webhook":
                    self._reply(200, {"status": "ok"})
                else:
                    self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        with self.lock:
            return [c["path"] for c in self.calls]

    def webhooks(self, action: str) -> list[dict[str, Any]]:
        """Recorded /webhook calls carrying this action."""
        with self.lock:
            return [c for c in self.calls if c["path"] == "/webhook" and (c["body"] or {}).get("action") == action]

    def wait_webhook(self, action: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` webhooks with this action arrived (LS without Redis sends them inline anyway)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.webhooks(action)) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"no {action} webhook; got {[c['body'].get('action') for c in self.calls if c['path'] == '/webhook']}"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Any:
    backend = StubBackend()
    yield backend
    backend.close()


def test_harness_end_to_end(label_studio: LabelStudio, stub: StubBackend) -> None:
    ls = label_studio
    step = ls.timer.step

    with step("health"):
        assert ls.health() == {"status": "UP"}

    with step("create project"):
        project = ls.create_project("harness smoke", LABEL_CONFIG)
        pid = project["id"]
        assert project["sampling"] == "Sequential sampling"

    with step("connect ML backend"):
        backend = ls.connect_ml_backend(pid, stub.url, "stub")
        assert backend["state"] == "CO", backend
        assert "/health" in stub.paths() and "/setup" in stub.paths()
        assert ls.project(pid)["model_version"] == "stub"  # LS sets it to the backend title on connect
        hooks = ls.webhooks(pid)
        assert [h["url"] for h in hooks] == [stub.url + "/webhook"]
        hook = ls.set_webhook_headers(hooks[0]["id"], {"X-Ml-Backend-Secret": WEBHOOK_SECRET})
        assert hook["headers"] == {"X-Ml-Backend-Secret": WEBHOOK_SECRET}

    with step("GET /api/ml?project=N"):
        listed = ls.ml_backends(pid)
        assert [b["id"] for b in listed] == [backend["id"]]
        assert listed[0]["model_version"] == "stub-1" and listed[0]["basic_auth_pass_is_set"] is False

    with step("import 2 tasks"):
        ls.add_local_storage(pid, "images")
        local_url = ls.add_local_file("images/one.png", PNG)
        data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
        imported = ls.import_tasks(pid, [{"image": data_uri}, {"image": local_url}])
        assert imported["task_count"] == 2, imported
        created = stub.wait_webhook("TASKS_CREATED")[-1]
        assert created["headers"].get("X-Ml-Backend-Secret") == WEBHOOK_SECRET
        served = requests.get(ls.url + local_url, headers={"Authorization": f"Token {ls.token}"}, timeout=10)
        assert served.status_code == 200 and served.content == PNG

    with step("list tasks (paged)"):
        tasks = ls.tasks(pid, page_size=1)
        assert [t["data"]["image"] for t in tasks] == [data_uri, local_url]
        first, last = tasks[0]["id"], tasks[1]["id"]
        assert all(t["is_labeled"] is False for t in tasks)

    with step("patch project sampling"):
        assert ls.patch_project(pid, sampling="Uncertainty sampling")["sampling"] == "Uncertainty sampling"
        # model_version must name an ML backend title or a version some stored prediction carries.
        with pytest.raises(LabelStudioError, match="doesn't exist either as live model or as static predictions"):
            ls.patch_project(pid, model_version="stub-1")

    with step("retrieve predictions (DM action)"):
        n_predict = stub.paths().count("/predict")
        ls.retrieve_predictions(pid)
        predict_calls = [c for c in stub.calls if c["path"] == "/predict"][n_predict:]
        assert len(predict_calls) == 1 and len(predict_calls[0]["body"]["tasks"]) == 2
        preds = sorted(ls.predictions(pid), key=lambda p: p["task"])
        assert [(p["task"], p["score"], p["model_version"]) for p in preds] == [
            (first, 0.9, "stub-1"),
            (last, 0.8, "stub-1"),
        ]

    with step("patch project model_version"):
        assert ls.patch_project(pid, model_version="stub-1")["model_version"] == "stub-1"

    with step("next task (uncertainty sampling)"):
        assert ls.next_task(pid)["id"] == last  # the lowest score

    with step("annotate -> ANNOTATION_CREATED"):
        annotation = ls.create_annotation(last, [choice("Class B")])
        hook = stub.wait_webhook("ANNOTATION_CREATED")[-1]
        assert "Authorization" not in hook["headers"]
        assert hook["headers"].get("X-Ml-Backend-Secret") == WEBHOOK_SECRET
        assert hook["body"]["annotation"]["id"] == annotation["id"] and hook["body"]["task"]["id"] == last
        unlabeled = ls.tasks(pid, only_unlabeled=True)
        assert [t["id"] for t in unlabeled] == [first]

    with step("update annotation -> ANNOTATION_UPDATED"):
        ls.update_annotation(annotation["id"], [choice("Class A")])
        assert stub.wait_webhook("ANNOTATION_UPDATED")[-1]["body"]["annotation"]["result"][0]["value"]["choices"] == [
            "Class A"
        ]

    with step("delete annotation -> ANNOTATIONS_DELETED"):
        ls.delete_annotation(annotation["id"])
        hook = stub.wait_webhook("ANNOTATIONS_DELETED")[-1]
        assert hook["body"]["annotations"] == [{"id": annotation["id"]}]

    with step("push a prediction (POST /api/predictions)"):
        pushed = ls.create_prediction(first, [choice("Class B")], score=0.05, model_version="stub-2")
        assert pushed["task"] == first and pushed["score"] == 0.05 and pushed["model_version"] == "stub-2"

    with step("train -> START_TRAINING"):
        ls.train(backend["id"])
        hook = stub.wait_webhook("START_TRAINING")[-1]
        assert set(hook["body"]) == {"action", "project"} and hook["body"]["project"]["id"] == pid

    with step("min_annotations_to_start_training=1 -> START_TRAINING on annotate"):
        ls.patch_project(pid, min_annotations_to_start_training=1)
        before = len(stub.webhooks("START_TRAINING"))
        ls.create_annotation(first, [choice("Class A")])
        stub.wait_webhook("START_TRAINING", count=before + 1)
