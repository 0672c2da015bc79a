"""The WebhookLane answers POST /webhook exactly as the Flask route does, without Flask."""
from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.webhook_lane import WebhookLane
from tests.support.live import annotation_webhook, choice, ls_task

SECRET = {"X-Webhook-Secret": "s3cret"}


def make_app(model_dir):
    return create_app(Settings(model_dir=model_dir, webhook_secret="s3cret", max_body_bytes=20_000,
                               train_debounce=60.0))


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path / "models")


def call(wsgi, method: str = "POST", path: str = "/webhook", data: bytes = b"", headers=None,
         length: str | None = None) -> tuple[int, dict]:
    env = EnvironBuilder(method=method, path=path, data=data, headers=headers or {}).get_environ()
    if length is not None:
        env["CONTENT_LENGTH"] = length
    answered = {}

    def start_response(status, response_headers, exc_info=None):
        answered["status"] = int(status.split()[0])
        answered["type"] = dict(response_headers).get("Content-Type")

    body = b"".join(wsgi(env, start_response))
    assert answered["type"] == "application/json"
    return answered["status"], json.loads(body)


def same_answer(answer: tuple[int, dict]) -> tuple[int, dict]:
    """Job ids are random: only their kind and project are compared."""
    status, body = answer
    return status, {k: v.rsplit("-", 1)[0] if k.endswith("_job") else v for k, v in body.items()}


def cases(text_config: str) -> list[tuple[bytes, dict, str | None]]:
    task = ls_task(7, {"text": "a fine review"}, project=4)
    good = annotation_webhook("ANNOTATION_CREATED", 11, task, [choice("Positive", "text")], text_config, project_id=4)
    good_bytes = json.dumps(good).encode()
    return [
        (good_bytes, SECRET, None),
        (good_bytes, {}, None),  # no secret: 401
        (good_bytes, {"X-Webhook-Secret": "wrong"}, None),
        (b"{not json", {}, None),  # authentication comes first: 401, not 400
        (b"[" * 100_000, {}, None),  # nor 413
        (b"", SECRET, None),
        (b"{not json", SECRET, None),
        (b"\xff\xfe\x00", SECRET, None),
        (b"[1, 2]", SECRET, None),
        (b"[" * 100_000 + b"]" * 100_000, SECRET, None),  # over max_body_bytes: 413
        (b"[" * 5000 + b"]" * 5000, SECRET, None),  # nested too deeply
        (json.dumps({"action": 5}).encode(), SECRET, None),
        (json.dumps({"action": "ANNOTATION_CREATED", "project": "1;DROP"}).encode(), SECRET, None),
        (json.dumps({"action": "SOMETHING_NEW"}).encode(), SECRET, None),
        (good_bytes, SECRET, "-3"),
        (good_bytes, SECRET, "many"),
    ]


def test_the_lane_answers_as_the_flask_route(tmp_path, text_config):
    lane = make_app(tmp_path / "a").wsgi_app  # two backends that see the same requests in the same order
    flask_only = make_app(tmp_path / "b").wsgi_app.app
    assert isinstance(lane, WebhookLane)
    statuses = set()
    for data, headers, length in cases(text_config):
        through_lane = call(lane, data=data, headers=headers, length=length)
        through_flask = call(flask_only, data=data, headers=headers, length=length)
        if length is not None:  # werkzeug reads a bad Content-Length as no body; the lane names it
            assert through_lane == (400, {"error": "invalid Content-Length", "status": 400})
            continue
        assert same_answer(through_lane) == same_answer(through_flask), (data[:60], headers)
        statuses.add(through_lane[0])
    assert statuses == {200, 400, 401, 413}
    assert call(make_app(tmp_path / "c").wsgi_app, data=b"{not json")[0] == 401


def test_other_requests_go_to_flask_and_webhooks_are_counted(app, text_config):
    client = app.test_client()
    assert client.get("/webhook").status_code == 405
    assert client.get("/health").status_code == 200
    task = ls_task(8, {"text": "another review"}, project=4)
    body = annotation_webhook("ANNOTATION_CREATED", 12, task, [choice("Negative", "text")], text_config, project_id=4)
    assert client.post("/webhook", json=body, headers=SECRET).status_code == 200
    assert client.post("/webhook", data=b"{", headers=SECRET).status_code == 400
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'ml_backend_request_seconds_count{route="/webhook",status="200"}' in metrics
    assert 'ml_backend_request_seconds_count{route="/webhook",status="400"}' in metrics
    assert 'ml_backend_webhook_events_total{action="ANNOTATION_CREATED"}' in metrics
