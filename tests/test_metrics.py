"""/metrics is Prometheus text, and its counters move with traffic (deltas: the registry is process-wide)."""
from __future__ import annotations

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ml_backend.app import create_app
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models.cnn import ImageCNN
from ml_backend.models import adapt
from ml_backend.store import ProjectStore
from tests.support.live import LiveServer, ls_task, metric_sample, png_data_uri, predict_body, setup_body

PROJECT = {"id": 7, "title": "xil", "label_config": None, "model_version": "", "sampling": "Sequential sampling",
           "total_annotations_number": 1, "min_annotations_to_start_training": 0}


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


sample = metric_sample


@pytest.fixture
def backend(settings, image_config):
    settings = settings.replace(train_debounce=0.0,
                                project=settings.project.with_overrides({"epochs": 1, "image_size": 16}))
    app = create_app(settings)
    with LiveServer(app) as server:
        server.settings, server.config = settings, image_config
        yield server
        app.extensions["ml_backend"]["webhooks"].queue.wait_idle(60)


def webhooks(config: str) -> list[dict]:
    """One body per action, in the shapes of the contract doc §2.3."""
    project = {**PROJECT, "label_config": config}
    task = ls_task(11, {"image": png_data_uri(np.full((16, 16, 3), 90))}, project=7)
    annotation = {"id": 31, "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                        "value": {"choices": ["Class A"]}}],
                  "was_cancelled": False, "ground_truth": False, "created_at": "2026-11-22T10:00:00Z",
                  "updated_at": "2026-11-22T10:00:00Z", "lead_time": 1.5, "prediction": {}, "task": 11, "project": 7,
                  "completed_by": 1}
    return [
        {"action": "PROJECT_UPDATED", "project": project},
        {"action": "TASKS_CREATED", "tasks": [task], "project": project},
        {"action": "ANNOTATION_CREATED", "annotation": annotation, "task": task, "project": project},
        {"action": "ANNOTATION_UPDATED", "annotation": {**annotation, "updated_at": "2026-11-22T10:05:00Z"},
         "task": task, "project": project},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 31}], "project": project},
    ]


def test_metrics_is_prometheus_text_with_the_expected_families(backend):
    response = requests.get(backend.url + "/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    found = families(response.text)
    assert found["ml_backend_queue_depth"].type == "gauge"
    assert sample(response.text, "ml_backend_queue_depth") == 0
    assert found["ml_backend_request_seconds"].type == "histogram"
    for name in ("ml_backend_predictions", "ml_backend_webhook_events", "ml_backend_job_failures"):
        assert found[name].type == "counter", name


def test_predictions_served_count_each_task(backend):
    schema = parse_label_config(backend.config)
    ProjectStore(backend.settings.model_dir, "2").publish(adapt(ImageCNN(schema.n_classes, image_size=16, width=4)),
                                                          schema.classes, {})
    before = requests.get(backend.url + "/metrics").text
    tasks = [ls_task(i, {"image": png_data_uri(np.full((20, 24, 3), 40 * i))}) for i in range(1, 4)]
    tasks.append(ls_task(9, {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}))  # unreadable: no prediction
    assert requests.post(backend.url + "/predict", json=predict_body(tasks, backend.config)).ok
    after = requests.get(backend.url + "/metrics").text
    assert sample(after, "ml_backend_predictions_total", project="2", outcome="served") == \
        sample(before, "ml_backend_predictions_total", project="2", outcome="served") + 3
    assert sample(after, "ml_backend_predictions_total", project="2", outcome="unreadable") == \
        sample(before, "ml_backend_predictions_total", project="2", outcome="unreadable") + 1


def test_webhook_events_are_counted_by_action(backend):
    bodies = webhooks(backend.config)
    before = requests.get(backend.url + "/metrics").text
    for body in bodies:
        response = requests.post(backend.url + "/webhook", json=body)
        assert response.status_code == 200, response.text
    requests.post(backend.url + "/webhook", json=bodies[0])
    assert requests.post(backend.url + "/webhook", json={"nope": 1}).status_code == 400
    after = requests.get(backend.url + "/metrics").text
    for body in bodies:
        action = body["action"]
        expected = 2 if action == "PROJECT_UPDATED" else 1
        delta = sample(after, "ml_backend_webhook_events_total", action=action) - \
            sample(before, "ml_backend_webhook_events_total", action=action)
        assert delta == expected, action


def test_request_latency_is_recorded_by_route_and_status(backend):
    routes = [("get", "/health", 200), ("post", "/setup", 200), ("get", "/status", 200), ("get", "/dashboard", 200),
              ("get", "/queue?project=2", 404), ("get", "/versions", 200)]
    before = requests.get(backend.url + "/metrics").text
    for method, path, status in routes:
        kwargs = {"json": setup_body(backend.config)} if path == "/setup" else {}
        assert getattr(requests, method)(backend.url + path, **kwargs).status_code == status, path
    requests.get(backend.url + "/nowhere")
    after = requests.get(backend.url + "/metrics").text
    for _, path, status in routes + [("get", "/nowhere", 404)]:
        route = {"/nowhere": "unmatched"}.get(path, path.split("?")[0])
        count = "ml_backend_request_seconds_count"
        delta = sample(after, count, route=route, status=str(status)) - sample(before, count, route=route,
                                                                              status=str(status))
        assert delta == 1, (route, status)
        assert sample(after, "ml_backend_request_seconds_sum", route=route, status=str(status)) > 0
    buckets = [s for f in text_string_to_metric_families(after) for s in f.samples
               if s.name == "ml_backend_request_seconds_bucket" and s.labels.get("route") == "/status"]
    assert buckets and buckets[-1].labels["le"] == "+Inf"
