"""Run the real WSGI app on a loopback port in a thread: tests talk to it over real HTTP."""
from __future__ import annotations

import base64
import io
import threading

import numpy as np
from PIL import Image
from werkzeug.serving import make_server


class LiveServer:
    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(5)


def png_data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ls_task(task_id: int, data: dict, project: int = 2) -> dict:
    """A task as Label Studio 1.23.2 sends it to /predict (TaskSimpleSerializer fields)."""
    return {"id": task_id, "data": data, "meta": {}, "created_at": "2026-11-22T10:00:00.000000Z",
            "updated_at": "2026-11-22T10:00:00.000000Z", "is_labeled": False, "overlap": 1, "inner_id": task_id,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project, "updated_by": [],
            "file_upload": None, "comment_authors": [], "annotations": [], "predictions": []}


def predict_body(tasks: list, label_config: str, project: str = "2.1795343946") -> dict:
    return {"tasks": tasks, "project": project, "label_config": label_config,
            "params": {"login": None, "password": None, "context": None}}


def setup_body(label_config: str, project: str = "2.1795343946", extra_params=None) -> dict:
    return {"project": project, "schema": label_config, "hostname": "http://localhost:8080",
            "access_token": "0123456789abcdef", "extra_params": extra_params}
