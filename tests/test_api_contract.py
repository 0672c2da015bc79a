"""Label Studio-shaped payloads (contract doc §1, §3) against the running app over real HTTP."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from skimage import data as skdata

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.text import TextCNN
from ml_backend.models import adapt
from ml_backend.store import ProjectStore
from tests.support.live import LiveServer, ls_task, metric_sample, png_data_uri, predict_body, setup_body


@pytest.fixture
def backend(settings):
    with LiveServer(create_app(settings)) as server:
        yield server


def publish(settings, config: str, project: str = "2") -> str:
    schema = parse_label_config(config)
    torch_model = ImageCNN(schema.n_classes, image_size=32) if schema.object_type == "image" else TextCNN(schema.n_classes)
    return ProjectStore(settings.model_dir, project).publish(adapt(torch_model), schema.classes, {"source": "test"})


def images():
    return [skdata.astronaut()[::4, ::4], skdata.camera()[::8, ::4], skdata.coffee()[::6, ::6]]


def test_health_and_root(backend):
    for path in ("/", "/health"):
        response = requests.get(backend.url + path)
        assert response.status_code == 200 and response.json()["status"] == "UP"


def test_setup_returns_the_current_model_version(backend, settings, image_config):
    response = requests.post(backend.url + "/setup", json=setup_body(image_config))
    assert response.status_code == 200 and response.json() == {"model_version": "untrained"}
    publish(settings, image_config)
    assert requests.post(backend.url + "/setup", json=setup_body(image_config)).json() == {"model_version": "p2-v1"}


def test_untrained_project_returns_no_labels(backend, image_config):
    tasks = [ls_task(i, {"image": png_data_uri(img)}) for i, img in enumerate(images(), 1)]
    body = requests.post(backend.url + "/predict", json=predict_body(tasks, image_config)).json()
    assert body["results"] == [{"model_version": "untrained", "score": 0.0, "result": []}] * 3


def test_image_predictions_carry_class_score_and_brush_evidence(backend, settings, image_config):
    publish(settings, image_config)
    imgs = images()
    tasks = [ls_task(i, {"image": png_data_uri(img)}) for i, img in enumerate(imgs, 1)]
    response = requests.post(backend.url + "/predict", json=predict_body(tasks, image_config))
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    for img, prediction in zip(imgs, results):
        assert prediction["model_version"] == "p2-v1"
        assert 0.5 <= prediction["score"] <= 1.0  # two classes: the top probability
        choices = [r for r in prediction["result"] if r["type"] == "choices"]
        assert len(choices) == 1
        assert choices[0]["from_name"] == "label" and choices[0]["to_name"] == "image"
        assert choices[0]["value"]["choices"][0] in ("Class A", "Class B")
        assert choices[0]["score"] == pytest.approx(prediction["score"])
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        assert brushes, "the model's evidence is missing"
        height, width = img.shape[:2]
        for region in brushes:
            assert region["from_name"] == "evidence" and region["to_name"] == "image"
            assert (region["original_width"], region["original_height"]) == (width, height)
            assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Model evidence"]
            assert 0.0 < region["score"] <= 1.0
            rgba = decode_rle(region["value"]["rle"]).reshape(height, width, 4)
            alpha = rgba[:, :, 3]
            assert set(np.unique(alpha)) <= {0, 255} and (alpha == 255).any()
            assert 0 < (alpha == 255).mean() < 1


def test_unreadable_task_gets_no_prediction_and_the_batch_is_served(backend, settings, image_config):
    """No prediction (an empty list: Label Studio stores none), never an empty result with a score
    that uncertainty sampling would serve first."""
    publish(settings, image_config)
    good = png_data_uri(images()[0])
    tasks = [ls_task(1, {"image": good}), ls_task(2, {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}),
             ls_task(3, {"other": good}), ls_task(4, {"image": good})]
    results = requests.post(backend.url + "/predict", json=predict_body(tasks, image_config)).json()["results"]
    assert results[1] == [] and results[2] == []
    assert all(r["model_version"] == "p2-v1" and "score" in r and r["result"] for r in (results[0], results[3]))


def test_text_predictions_have_exact_spans(backend, settings, text_config):
    publish(settings, text_config)
    texts = ["I loved this film, the acting was wonderful!", "Terrible plot.  Boring, slow and far too long.", " "]
    tasks = [ls_task(i, {"text": t}) for i, t in enumerate(texts, 1)]
    results = requests.post(backend.url + "/predict", json=predict_body(tasks, text_config)).json()["results"]
    assert results[2] == []  # empty text: nothing to classify, no prediction
    for text, prediction in zip(texts[:2], results):
        assert prediction["result"][0]["type"] == "choices"
        spans = [r for r in prediction["result"] if r["type"] == "labels"]
        assert spans
        for span in spans:
            value = span["value"]
            assert text[value["start"]:value["end"]] == value["text"] and value["text"].strip() == value["text"]
            assert value["labels"] == ["Model evidence"] and span["from_name"] == "evidence"


def test_choices_only_config_gets_predictions_without_evidence(backend, settings):
    config = '<View><Image name="img" value="$url"/><Choices name="c" toName="img"><Choice value="x"/>' \
             '<Choice value="y"/></Choices></View>'
    publish(settings, config)
    tasks = [ls_task(1, {"url": png_data_uri(images()[0])})]
    result = requests.post(backend.url + "/predict", json=predict_body(tasks, config)).json()["results"][0]["result"]
    assert [r["type"] for r in result] == ["choices"]


@pytest.mark.parametrize("data, status, message", [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "empty body"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"label_config": "<View/>"}', 400, "tasks"),
    (b'{"tasks": {"id": 1}}', 400, "list"),
])
def test_bad_predict_bodies_get_a_clear_400(backend, data, status, message):
    response = requests.post(backend.url + "/predict", data=data, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_unservable_config_gets_422_naming_what_is_missing(backend):
    body = predict_body([ls_task(1, {"a": "x"})], '<View><Audio name="a" value="$a"/></View>')
    response = requests.post(backend.url + "/predict", json=body)
    assert response.status_code == 422 and "<Image> or <Text>" in response.json()["error"]
    response = requests.post(backend.url + "/setup", json=setup_body("<View><Image"))
    assert response.status_code == 422


def test_oversized_body_gets_413(tmp_path):
    with LiveServer(create_app(Settings(model_dir=tmp_path, max_body_bytes=1000))) as server:
        response = requests.post(server.url + "/predict", data=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than 1000 bytes" in response.json()["error"]


def test_unknown_route_and_method_are_json(backend):
    assert requests.get(backend.url + "/nope").json()["status"] == 404
    response = requests.get(backend.url + "/predict")
    assert response.status_code == 405 and "error" in response.json()


def test_basic_auth_on_every_route_but_health(tmp_path, image_config):
    settings = Settings(model_dir=tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    with LiveServer(create_app(settings)) as server:
        assert requests.get(server.url + "/health").status_code == 200
        for method, path in (("get", "/"), ("post", "/setup"), ("post", "/predict"), ("get", "/versions"),
                             ("get", "/metrics")):
            assert getattr(requests, method)(server.url + path).status_code == 401, path
            wrong = getattr(requests, method)(server.url + path, auth=("ls", "nope"))
            assert wrong.status_code == 401
        ok = requests.post(server.url + "/setup", json=setup_body(image_config), auth=("ls", "s3cret"))
        assert ok.status_code == 200


def test_versions_lists_published_versions(backend, settings, image_config):
    assert requests.get(backend.url + "/versions").json()["versions"] == []
    publish(settings, image_config)
    publish(settings, image_config)
    body = requests.get(backend.url + "/versions").json()
    assert body["versions"] == ["p2-v1", "p2-v2"]
    assert [v["current"] for v in body["projects"]["2"]] == [False, True]
    rolled = requests.post(backend.url + "/versions/rollback", json={"project": "2.123"}).json()
    assert rolled == {"project": "2", "model_version": "p2-v1"}
    assert requests.post(backend.url + "/setup", json=setup_body(image_config)).json()["model_version"] == "p2-v1"


@pytest.mark.parametrize("project", ["1;DROP", "a/b", "../../etc", "x" * 300, "2.x", [2], {"id": "x"}, True, -1, 2.5])
def test_project_ids_other_than_label_studios_are_a_400(backend, image_config, project):
    """Label Studio's project ids are integers, optionally "<id>.<created timestamp>"."""
    calls = [
        ("post", "/setup", {"project": project, "schema": image_config}),
        ("post", "/predict", {"project": project, "label_config": image_config, "tasks": []}),
        ("post", "/versions/rollback", {"project": project}),
        ("post", "/webhook", {"action": "START_TRAINING", "project": project}),
        ("post", "/webhook", {"action": "TASKS_CREATED", "project": {"id": project}}),
    ]
    for method, path, body in calls:
        response = getattr(requests, method)(backend.url + path, json=body)
        assert response.status_code == 400, (path, response.text)
        assert "project" in response.json()["error"], (path, response.json())
    if isinstance(project, str):
        response = requests.get(backend.url + "/versions", params={"project": project})
        assert response.status_code == 400 and "invalid project id" in response.json()["error"]


@pytest.mark.parametrize("version", ["../../6/versions/v1", "/tmp", "v1/../../6/versions/v1", 5, ["v1"], "p6-v1", "p2-v2",
                                     {"v": 1}, True, "x" * 500])
def test_rollback_names_only_the_projects_own_versions(backend, settings, image_config, version):
    other = ProjectStore(settings.model_dir, "6")
    other.publish(adapt(ImageCNN(2, image_size=32)), ("Class A", "Class B"), {})
    publish(settings, image_config)
    response = requests.post(backend.url + "/versions/rollback", json={"project": 2, "version": version})
    assert response.status_code == 404 and "has no version" in response.json()["error"]
    assert ProjectStore(settings.model_dir, "2").current() == "p2-v1"


def test_metrics_parse_and_move_with_traffic(backend, settings, image_config):
    publish(settings, image_config)
    before = requests.get(backend.url + "/metrics")
    assert before.headers["Content-Type"].startswith("text/plain")
    served_before = metric_sample(before.text, "ml_backend_predictions_total", project="2", outcome="served")
    tasks = [ls_task(i, {"image": png_data_uri(images()[0])}) for i in range(3)]
    requests.post(backend.url + "/predict", json=predict_body(tasks, image_config))
    after = requests.get(backend.url + "/metrics").text
    assert metric_sample(after, "ml_backend_predictions_total", project="2", outcome="served") == served_before + 3
    assert metric_sample(after, "ml_backend_request_seconds_count", route="/predict", status="200") >= 1
    assert metric_sample(after, "ml_backend_model_version", project="2") == 1
    publish(settings, image_config)
    assert metric_sample(requests.get(backend.url + "/metrics").text, "ml_backend_model_version", project="2") == 2


def test_large_batches_are_served_in_chunks_in_task_order(backend, settings, image_config):
    publish(settings, image_config)
    good = png_data_uri(images()[1])
    tasks = [ls_task(i, {"image": good} if i % 3 else {"missing": 1}) for i in range(70)]
    results = requests.post(backend.url + "/predict", json=predict_body(tasks, image_config)).json()["results"]
    assert len(results) == 70
    assert [r != [] and bool(r["result"]) for r in results] == [bool(i % 3) for i in range(70)]


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook", "/versions/rollback"])
def test_deeply_nested_json_is_a_400(backend, path):
    body = "[" * 100_000 + "]" * 100_000
    response = requests.post(backend.url + path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


def test_an_unknown_action_with_a_lone_surrogate_leaves_metrics_readable(backend):
    body = '{"action": "\\ud800", "project": {"id": 2}}'  # JSON escapes: a lone surrogate in Python
    response = requests.post(backend.url + "/webhook", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["ignored"] is True
    metrics = requests.get(backend.url + "/metrics")
    assert metrics.status_code == 200
    assert metric_sample(metrics.text, "ml_backend_webhook_events_total", action="other") >= 1


def test_unreadable_text_and_urls_do_not_fail_a_request(backend, settings, image_config, text_config):
    publish(settings, text_config)
    body = predict_body([ls_task(1, {"text": "fine film \ud800 xqz"})], text_config)
    response = requests.post(backend.url + "/predict", data=json.dumps(body),  # json escapes the lone surrogate
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    [result] = response.json()["results"]
    assert result["result"][0]["type"] == "choices"
    publish(settings, image_config, project="3")
    for url in ("http://[", "http://[::1", "https://exa mple.com/\x00.png"):
        body = predict_body([ls_task(1, {"image": url})], image_config, project="3.1")
        response = requests.post(backend.url + "/predict", json=body)
        assert response.status_code == 200 and response.json()["results"] == [[]], url
