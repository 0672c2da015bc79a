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


PROJECT_TOKEN = "project-token-SECRET-4f9a"
TASK_DATA_PASSWORD = "task-data-password-SECRET-77"


def project_object(label_config: str, project_id: int = 2) -> dict:
    """ProjectWebhookSerializer as Label Studio sends it: it carries secrets."""
    return {"id": project_id, "title": "xil", "label_config": label_config, "token": PROJECT_TOKEN,
            "task_data_login": "reader", "task_data_password": TASK_DATA_PASSWORD, "model_version": "",
            "sampling": "Sequential sampling", "min_annotations_to_start_training": 0, "show_collab_predictions": True}


def annotation_webhook(action: str, annotation_id: int, task: dict, result: list, label_config: str,
                       updated_at: str = "2026-11-22T10:00:00.000000Z", project_id: int = 2) -> dict:
    """ANNOTATION_CREATED / ANNOTATION_UPDATED as in the contract doc §2.3."""
    annotation = {"id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
                  "created_at": "2026-11-22T10:00:00.000000Z", "updated_at": updated_at, "draft_created_at": None,
                  "lead_time": 1.5, "prediction": {}, "result_count": len(result), "unique_id": f"u{annotation_id}",
                  "import_id": None, "last_action": None, "bulk_created": False, "task": task["id"],
                  "project": project_id, "completed_by": 1, "updated_by": 1, "parent_prediction": None,
                  "parent_annotation": None, "last_created_by": None}
    webhook_task = {k: v for k, v in task.items() if k not in ("annotations", "predictions")}
    webhook_task.update(allow_skip=True, precomputed_agreement=None, is_labeled=True)
    return {"action": action, "annotation": annotation, "task": webhook_task,
            "project": project_object(label_config, project_id)}


def choice(label: str, to_name: str = "image") -> dict:
    return {"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [label]}}


def brush(mask, label: str) -> dict:
    from ml_backend.labelstudio import rle

    height, width = mask.shape
    return {"id": f"r-{label}", "from_name": "evidence", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]}}


def metric_sample(metrics_text: str, name: str, **labels) -> float:
    """Sum of a Prometheus sample's values over the series whose labels match."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(metrics_text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
