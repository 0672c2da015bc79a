"""/clusters over HTTP, embedded defaults: what the model looks at after each training, and the
project manager's corrections (durable, listed, undone, generalised by the next training)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings, Settings
from ml_backend.jobs import make_queue
from ml_backend.store import ProjectStore, open_annotation_store
from tests.support.data import confounded_images
from tests.support.live import LiveServer, annotation_webhook, choice, ls_task, png_data_uri, setup_body

SECRET = {"X-Webhook-Secret": "hook-secret-123"}
N = 24


@pytest.fixture
def settings(tmp_path):
    return Settings(model_dir=tmp_path / "models", webhook_secret="hook-secret-123",
                    project=ProjectSettings(epochs=3, image_size=24, holdout=0.0))


@pytest.fixture
def trained(settings, image_config):
    """A served project whose version read N labelled images (the class-1 corner decoy in them)."""
    with LiveServer(create_app(settings)) as server:
        requests.post(server.url + "/setup", json=setup_body(image_config))
        x, y, _ = confounded_images(N, seed=3)
        for i in range(N):
            pixels = (x[i, 0].numpy() * 255).astype(np.uint8)
            task = ls_task(i + 1, {"image": png_data_uri(pixels)})
            body = annotation_webhook("ANNOTATION_CREATED", 100 + i, task, [choice(("Class A", "Class B")[int(y[i])])],
                                      image_config)
            assert requests.post(server.url + "/webhook", json=body, headers=SECRET).status_code == 200
        assert make_queue(settings).wait_idle(180)
        yield server


def clusters(server, project="2", **params):
    return requests.get(server.url + "/clusters", params={"project": project, **params})


def test_a_training_publishes_the_clusters_of_its_labelled_tasks(trained, settings):
    answer = clusters(trained)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    version = ProjectStore(settings.model_dir, "2").current()
    assert body["version"] == version and body["sources"] == ["labeled"] and body["labeled"] == N
    found = body["clusters"]
    assert found and sorted(t for c in found for t in c["task_ids"]) == list(range(1, N + 1))  # each task once
    number = version.rsplit("-v", 1)[1]
    for c in found:
        assert c["id"].startswith(f"v{number}-c") and c["size"] == len(c["task_ids"]) == len(c["labeled_task_ids"])
        assert set(c["classes"]) <= {"Class A", "Class B"} and sum(c["classes"].values()) == c["size"]
        assert 0 < c["share"] <= 1 and set(c["representative_task_ids"]) <= set(c["task_ids"])
        assert len(c["mean_map"]) == 256 and abs(sum(c["mean_map"]) - 1) < 0.01 and c["marked_irrelevant"] is False
    scores = [(not c["suspicious"], -c["shortcut_score"]) for c in found]
    assert scores == sorted(scores)  # most suspicious first
    lean = clusters(trained, tasks="0").json()["clusters"][0]
    assert "task_ids" not in lean and "representative_task_ids" in lean and lean["thumbnails"]
    assert "thumbnails" not in clusters(trained, thumbnails="0").json()["clusters"][0]


def test_each_cluster_stores_thumbnails_of_its_representatives(trained):
    for c in clusters(trained).json()["clusters"]:
        assert [t["task"] for t in c["thumbnails"]] == c["representative_task_ids"]
        for t in c["thumbnails"]:
            assert t["image"].startswith("data:image/png;base64,")
            picture = Image.open(io.BytesIO(base64.b64decode(t["image"].split(",", 1)[1])))
            assert picture.size == (24, 24) and picture.mode == "RGB"  # the model's input, 24 px here
            pixels = np.asarray(picture)
            red = (pixels[..., 0] == 220) & (pixels[..., 1] == 38) & (pixels[..., 2] == 38)
            assert 0 < red.sum() < pixels.shape[0] * pixels.shape[1] / 2  # the evidence's outline


def test_bad_requests_get_clear_4xx(trained, settings):
    assert clusters(trained, project=None).status_code == 400  # no project
    missing = requests.get(trained.url + "/clusters")
    assert missing.status_code == 400 and "project" in missing.json()["error"]
    none_yet = clusters(trained, project="7")
    assert none_yet.status_code == 404 and "no model version" in none_yet.json()["error"]
    for cluster_id in ("garbage", "v1-c999", "v1-c1%00"):
        answer = requests.post(f"{trained.url}/clusters/{cluster_id}/irrelevant", json={"project": 2})
        assert answer.status_code == 404 and answer.json()["error"]
    bad_body = requests.post(f"{trained.url}/clusters/v1-c1/irrelevant", data="{not json",
                             headers={"Content-Type": "application/json"})
    assert bad_body.status_code == 400
    assert requests.delete(f"{trained.url}/clusters/v1-c1/irrelevant", json={"project": 2}).status_code == 404
    review = requests.post(f"{trained.url}/clusters/v1-c1/review", json={"project": 2})
    assert review.status_code == 409 and "LABEL_STUDIO_URL" in review.json()["error"]  # no Label Studio here


def test_mark_irrelevant_is_recorded_once_listed_trained_on_and_undone(trained, settings):
    before = clusters(trained).json()
    target = before["clusters"][0]
    mark = requests.post(f"{trained.url}/clusters/{target['id']}/irrelevant", json={"project": 2})
    assert mark.status_code == 201, mark.text
    assert mark.json()["recorded"] is True and mark.json()["train_job"]
    again = requests.post(f"{trained.url}/clusters/{target['id']}/irrelevant", json={"project": 2})
    assert again.status_code == 200 and again.json()["recorded"] is False
    listed = clusters(trained).json()
    assert [c["cluster"] for c in listed["corrections"]] == [target["id"]]
    assert listed["corrections"][0]["tasks"] == target["size"]
    assert [c["id"] for c in listed["clusters"] if c["marked_irrelevant"]] == [target["id"]] or \
        listed["version"] != before["version"]  # the training it queued may have published already
    assert make_queue(settings).wait_idle(180)
    store = ProjectStore(settings.model_dir, "2")
    after = store.current()
    assert after != before["version"]
    applied = store.meta(after)["cluster_corrections"]
    assert applied["clusters"] == [target["id"]] and applied["tasks_marked"] >= 1
    stale = requests.post(f"{trained.url}/clusters/{target['id']}/irrelevant", json={"project": 2})
    assert stale.status_code == 409 and after in stale.json()["error"]
    undo = requests.delete(f"{trained.url}/clusters/{target['id']}/irrelevant", json={"project": 2})
    assert undo.status_code == 200 and undo.json()["removed"] is True and undo.json()["corrections"] == []
    assert make_queue(settings).wait_idle(180)
    assert store.meta(store.current())["cluster_corrections"] == {"clusters": [], "tasks_marked": 0}


def test_the_ranking_job_reads_only_the_representatives_again_for_their_thumbnails(settings, image_config):
    from types import SimpleNamespace

    from ml_backend.data.fetch import Fetcher
    from ml_backend.jobs.rank import representative_thumbnails
    from ml_backend.labelstudio.client import LabelStudioError
    from ml_backend.labelstudio.schema import parse_label_config
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN

    x, _, _ = confounded_images(3, seed=1)
    read = []

    def task_of(task_id):
        read.append(task_id)
        if task_id == 9:
            raise LabelStudioError("task 9 is gone", status=404)
        return ls_task(task_id, {"image": png_data_uri((x[task_id - 1, 0].numpy() * 255).astype(np.uint8))})

    ctx = SimpleNamespace(key="2", schema=parse_label_config(image_config), settings=settings.project)
    loaded = SimpleNamespace(model=adapt(ImageCNN(2, image_size=24, width=4)))
    payload = {"clusters": [{"representative_task_ids": [2, 9]}, {"representative_task_ids": [1, 2]}]}
    representative_thumbnails(ctx, loaded, Fetcher(settings), task_of)(payload)
    assert read == [2, 9, 1]  # each representative once; no other task
    assert [[t["task"] for t in c["thumbnails"]] for c in payload["clusters"]] == [[2], [1, 2]]
    assert payload["clusters"][0]["thumbnails"][0]["image"].startswith("data:image/png;base64,")


OFF = {"evidence_clusters": False}
# the evidence cap reads the evidence too: off where the clusters switch is measured
NO_EVIDENCE_CAP = {"max_evidence_share": 1.0}


def post_annotations(server, image_config, n, seed=3):
    x, y, _ = confounded_images(n, seed=seed)
    for i in range(n):
        task = ls_task(i + 1, {"image": png_data_uri((x[i, 0].numpy() * 255).astype(np.uint8))})
        body = annotation_webhook("ANNOTATION_CREATED", 100 + i, task, [choice(("Class A", "Class B")[int(y[i])])],
                                  image_config)
        assert requests.post(server.url + "/webhook", json=body, headers=SECRET).status_code == 200


def test_with_clusters_off_a_training_publishes_none_yet_applies_recorded_corrections_and_the_routes_refuse(
        settings, image_config):
    with LiveServer(create_app(settings)) as server:
        assert requests.post(server.url + "/setup", json=setup_body(image_config, extra_params=OFF)).status_code == 200
        # recorded while the project's clusters were on (of a version since gone): it must still train
        annotations = open_annotation_store(settings)
        assert annotations.add_cluster_correction("2", "v9-c1", "p2-v9", range(1, 9))
        post_annotations(server, image_config, 12)
        assert make_queue(settings).wait_idle(180)
        store = ProjectStore(settings.model_dir, "2")
        version = store.current()
        assert version is not None
        assert store.clusters(version) is None and not (store.root / "clusters").exists()
        applied = store.meta(version)["cluster_corrections"]
        assert applied["clusters"] == ["v9-c1"] and applied["tasks_marked"] >= 1
        answers = {"GET": clusters(server),
                   "POST irrelevant": requests.post(f"{server.url}/clusters/v9-c1/irrelevant", json={"project": 2}),
                   "POST review": requests.post(f"{server.url}/clusters/v9-c1/review", json={"project": 2}),
                   "any id": requests.post(f"{server.url}/clusters/garbage/irrelevant", json={"project": 2})}
        for route, answer in answers.items():
            assert answer.status_code == 409, (route, answer.text)
            error = answer.json()["error"]
            assert "turned off for project 2" in error and "XIL_EVIDENCE_CLUSTERS" in error, (route, error)
        assert [c["cluster"] for c in annotations.cluster_corrections("2")] == ["v9-c1"]
        page = requests.get(server.url + "/dashboard")
        assert page.status_code == 200 and "evidence clusters are turned off for this project" in page.text
        assert 'action="dashboard/clusters/v9-c1/undo"' in page.text  # a correction that still applies can be undone
        undo = requests.delete(f"{server.url}/clusters/v9-c1/irrelevant", json={"project": 2})
        assert undo.status_code == 200, undo.text
        assert annotations.cluster_corrections("2") == []
        # on again: the routes answer as before (no clusters for this version yet), not 409
        assert requests.post(server.url + "/setup", json=setup_body(image_config)).status_code == 200
        again = clusters(server)
        assert again.status_code == 404 and "no evidence clusters" in again.json()["error"]


class _LabelStudio:
    """What the ranking job asks of Label Studio, answered from a list of unlabelled tasks."""

    def __init__(self, tasks):
        self.tasks = tasks

    def iter_tasks(self, project, **_):
        return iter([dict(t) for t in self.tasks])

    def get_task(self, task_id):
        return next(dict(t) for t in self.tasks if t["id"] == task_id)

    def import_predictions(self, project, predictions):
        return len(predictions)

    def update_prediction(self, *args, **kwargs):
        return None

    def delete_prediction(self, prediction_id):
        return None

    def update_project(self, project, **fields):
        return fields


def test_with_clusters_off_the_ranking_explains_nothing_for_them_and_ranks_the_same(settings, image_config,
                                                                                       monkeypatch):
    from ml_backend.jobs import rank as rank_job
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.ranking import score

    settings = settings.replace(label_studio_url="http://ls.invalid", label_studio_api_key="key")
    store = ProjectStore(settings.model_dir, "2")
    store.update_config(label_config=image_config, extra_params={**OFF, **NO_EVIDENCE_CAP})
    torch.manual_seed(0)
    version = store.publish(adapt(ImageCNN(2, image_size=24, width=4)), ("Class A", "Class B"), {})
    x, y, _ = confounded_images(30, seed=5)
    tasks = [ls_task(i + 1, {"image": png_data_uri((x[i, 0].numpy() * 255).astype(np.uint8))}) for i in range(30)]
    annotations = open_annotation_store(settings)
    for i in range(20, 30):  # labelled: what the clusters explain again beside the unlabelled tasks
        body = annotation_webhook("ANNOTATION_CREATED", 100 + i, tasks[i], [choice(("Class A", "Class B")[int(y[i])])],
                                  image_config)
        annotations.upsert("2", body["annotation"], body["task"])
    monkeypatch.setattr(rank_job, "LabelStudioClient", lambda *a, **k: _LabelStudio(tasks[:20]))
    relevance, explained_again = [], []
    render, labeled_evidence = score.render_predictions, rank_job.labeled_evidence

    def recording_render(*args, with_relevance=False, **kwargs):
        relevance.append(with_relevance)
        return render(*args, with_relevance=with_relevance, **kwargs)

    def recording_labeled_evidence(*args, **kwargs):
        explained_again.append(True)
        return labeled_evidence(*args, **kwargs)

    monkeypatch.setattr(score, "render_predictions", recording_render)
    monkeypatch.setattr(rank_job, "labeled_evidence", recording_labeled_evidence)

    off = rank_job.rank_project(settings, "2")
    assert off["ranked"] == 20 and off["clusters"] is None and store.clusters(version) is None
    assert relevance and not any(relevance) and not explained_again  # entropy reads no explanation
    off_queue = store.ranking()["tasks"]

    relevance.clear()
    store.update_config(extra_params=NO_EVIDENCE_CAP)
    on = rank_job.rank_project(settings, "2")
    assert on["clusters"] and store.clusters(version)["sources"] == ["labeled", "unlabeled"]
    assert relevance and all(relevance) and explained_again == [True]  # the switch is what changed
    assert store.ranking()["tasks"] == off_queue  # the ranking itself is the same either way
