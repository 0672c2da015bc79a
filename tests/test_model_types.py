"""Every model type is chosen per project, served by /predict and retrained through /webhook."""
from __future__ import annotations

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from ml_backend.app import create_app
from ml_backend.config import ConfigError, ProjectSettings, Settings
from ml_backend.jobs import make_queue
from ml_backend.store import ProjectStore
from tests.support.data import confounded_images
from tests.support.live import (LiveServer, annotation_webhook, brush, choice, ls_task, png_data_uri, predict_body,
                                setup_body)

CORNER = np.zeros((24, 24), dtype=bool)
CORNER[:6, :6] = True


@pytest.fixture
def backend(tmp_path):
    settings = Settings(model_dir=tmp_path / "models", train_debounce=0.2,
                        project=ProjectSettings(epochs=3, image_size=24, holdout=0.0))
    with LiveServer(create_app(settings)) as server:
        yield server, settings


def image_task(task_id: int) -> tuple[dict, str]:
    x, y, _ = confounded_images(1, seed=task_id)
    return ls_task(task_id, {"image": png_data_uri((x[0, 0].numpy() * 255).astype(np.uint8))}), \
        ("Class A", "Class B")[int(y[0])]


def train_on_corrections(server, settings, config: str, n: int = 6) -> dict:
    for i in range(1, n + 1):
        task, label = image_task(i)
        result = [choice(label)] + ([brush(CORNER, "Irrelevant")] if i % 2 else [])
        assert requests.post(server.url + "/webhook", json=annotation_webhook(
            "ANNOTATION_CREATED", i, task, result, config)).status_code == 200
    assert make_queue(settings).wait_idle(180)
    failed = [j for j in make_queue(settings).jobs("2") if j["status"] == "failed"]
    assert not failed, failed[0]["traceback"]
    return ProjectStore(settings.model_dir, "2").list()[-1]


@pytest.mark.parametrize("params, kind, metric", [
    ({"model_kind": "senn", "strategies": ["cali", "rrr"], "senn_patch": 6}, "senn", "senn_faithfulness"),
    ({"model_kind": "senn", "strategies": ["cali"], "senn_concepts": "pixels", "senn_robustness": 0.01}, "senn",
     "senn_stability"),
    ({"model_kind": "bayesian_cnn"}, "bayesian_cnn", "activation_evidence_scale"),  # its default strategies
    ({"model_kind": "senn", "strategies": ["rrr"], "senn_concepts": "learned"}, "senn", "senn_stability"),
    ({"model_kind": "cnn", "strategies": ["rrr", "counterexamples", "relevant"]}, "cnn", "irrelevant_attribution_mass"),
])
def test_image_model_types(backend, image_config, params, kind, metric):
    server, settings = backend
    assert requests.post(server.url + "/setup", json=setup_body(image_config, extra_params=params)).status_code == 200
    meta = train_on_corrections(server, settings, image_config)
    assert meta["kind"] == kind
    if "strategies" not in params:
        assert meta["strategies"] == ["activation_evidence", "counterexamples"] and meta["counterexamples"] > 0
    donors = ProjectStore(settings.model_dir, "2").load(meta["version"]).donors  # the counterfactual's fill
    assert donors is not None and len(donors) == 6 and donors.shape[-2:] == (24, 24)  # every training task
    assert meta["metrics"][metric] is not None
    if params.get("senn_concepts") == "learned":
        assert set(meta["concept_examples"]) and all(len(v) >= 1 for v in meta["concept_examples"].values())
    task, _ = image_task(40)
    prediction = requests.post(server.url + "/predict", json=predict_body([task], image_config)).json()["results"][0]
    assert prediction["model_version"] == meta["version"]
    types = [r["type"] for r in prediction["result"]]
    assert types[0] == "choices"
    for region in prediction["result"][1:]:
        alpha = decode_rle(region["value"]["rle"]).reshape(24, 24, 4)[:, :, 3]
        assert set(np.unique(alpha)) <= {0, 255}


def test_text_senn_is_served_and_retrained(backend, text_config):
    server, settings = backend
    params = {"model_kind": "senn", "strategies": ["cali"]}
    assert requests.post(server.url + "/setup", json=setup_body(text_config, extra_params=params)).status_code == 200
    texts = ["great film xqz", "awful plot", "lovely acting xqz", "boring and slow"]
    for i, text in enumerate(texts, 1):
        label = "Positive" if "xqz" in text else "Negative"
        result = [choice(label, "text")]
        if "xqz" in text:
            start = text.index("xqz")
            result.append({"from_name": "evidence", "to_name": "text", "type": "labels",
                           "value": {"start": start, "end": start + 3, "text": "xqz", "labels": ["Irrelevant"]}})
        requests.post(server.url + "/webhook", json=annotation_webhook(
            "ANNOTATION_CREATED", i, ls_task(i, {"text": text}), result, text_config))
    assert make_queue(settings).wait_idle(180)
    meta = ProjectStore(settings.model_dir, "2").list()[-1]
    assert meta["kind"] == "text_senn" and meta["feedback"]["irrelevant"] == 2
    assert "senn_faithfulness" in meta["metrics"]
    prediction = requests.post(server.url + "/predict",
                               json=predict_body([ls_task(9, {"text": "fine film xqz"})], text_config)).json()
    result = prediction["results"][0]["result"]
    assert result[0]["type"] == "choices"
    for span in result[1:]:
        assert "fine film xqz"[span["value"]["start"]:span["value"]["end"]] == span["value"]["text"]


@pytest.mark.parametrize("params, message", [
    ({"strategies": ["cali"]}, "senn"),
    ({"model_kind": "cnn", "strategies": ["activation_evidence"]}, "bayesian_cnn"),
    ({"model_kind": "resnet"}, "model_kind"),
    ({"strategies": ["defaults"]}, "or 'default', the model kind's own"),
])
def test_strategies_must_fit_the_model(params, message, image_config):
    from ml_backend.project import make_context

    settings = ProjectSettings().with_overrides(params)  # types and ranges are fine
    with pytest.raises(ConfigError, match=message):
        make_context("2", image_config, settings)


@pytest.mark.parametrize("params, strategies", [
    ({}, ("counterexamples",)),
    ({"model_kind": "senn"}, ("cali", "counterexamples")),
    ({"model_kind": "bayesian_cnn"}, ("activation_evidence", "counterexamples")),
    ({"model_kind": "senn", "strategies": ["rrr", "default"]}, ("rrr", "cali", "counterexamples")),
    ({"model_kind": "senn", "strategies": ["counterexamples", "default"]}, ("counterexamples", "cali")),
    ({"model_kind": "bayesian_cnn", "strategies": []}, ()),  # no feedback stays a choice
])
def test_default_strategies_are_the_model_kinds_own(params, strategies, image_config):
    from ml_backend.project import make_context

    ctx = make_context("2", image_config, ProjectSettings().with_overrides(params))
    assert ctx.settings.strategies == strategies


def test_bayesian_model_is_refused_for_text(backend, text_config):
    server, _ = backend
    response = requests.post(server.url + "/setup", json=setup_body(text_config, extra_params={
        "model_kind": "bayesian_cnn"}))
    assert response.status_code == 422 and "text" in response.json()["error"]


@pytest.mark.parametrize("poison", [
    [{"type": "choices", "from_name": "label", "to_name": "image", "value": "Class A"}],
    [None],
    [{"type": "brushlabels", "from_name": "evidence", "to_name": "image", "value": {"rle": "x", "brushlabels": 3}}],
    "not a list",
])
def test_one_malformed_annotation_never_stops_training(backend, image_config, poison):
    """At the webhook it is quarantined (listed on /status with its reason, never trained on); one
    that reaches the store another way (a resync from Label Studio) is skipped by training."""
    from ml_backend.store import open_annotation_store

    server, settings = backend
    assert requests.post(server.url + "/setup", json=setup_body(image_config)).status_code == 200
    task, _ = image_task(99)
    answer = requests.post(server.url + "/webhook", json=annotation_webhook("ANNOTATION_CREATED", 99, task, poison,
                                                                            image_config)).json()
    assert answer["rejected"] == 1 and answer["changed"] == 0
    [project] = requests.get(server.url + "/status").json()["projects"]
    assert project["rejected"]["count"] == 1 and project["rejected"]["recent"][0]["annotation"] == 99
    assert "quarantined" in requests.get(server.url + "/dashboard").text
    task, _ = image_task(98)
    resynced = annotation_webhook("ANNOTATION_CREATED", 98, task, poison, image_config)
    open_annotation_store(settings).upsert("2", resynced["annotation"], task)
    meta = train_on_corrections(server, settings, image_config, n=4)
    assert meta["examples"] == 4 and meta["skipped"]["invalid"] == 1
    # and the next training still runs
    task, label = image_task(5)
    requests.post(server.url + "/webhook", json=annotation_webhook("ANNOTATION_CREATED", 5, task, [choice(label)],
                                                                   image_config))
    assert make_queue(settings).wait_idle(180)
    assert ProjectStore(settings.model_dir, "2").list()[-1]["examples"] == 5


@pytest.mark.parametrize("kind, network", [("cnn", "ImageCNN"), ("senn", "SENN"), ("bayesian_cnn", "BayesianCNN")])
def test_image_kinds_give_region_features_on_a_grid_over_the_input(kind, network):
    """Hypercolumns of the network's own blocks, half the input's side, whatever mode it was in."""
    import torch

    from ml_backend.models.base import KINDS

    cls = KINDS.get(kind)
    net = cls.network_class(n_classes=4, image_size=32, in_channels=3)
    model = cls(net)
    net.train()
    x = torch.rand(2, 3, 32, 32)
    maps = model.region_features(x)
    assert maps.shape[0] == 2 and maps.shape[2:] == (16, 16) and maps.shape[1] >= 16
    assert net.training  # the mode it was in comes back
    assert torch.allclose(model.region_features(x[:1]), maps[:1], atol=1e-5)


@pytest.mark.parametrize("kind", ["text_cnn", "text_senn"])
def test_text_kinds_give_a_vector_per_token_that_depends_on_its_context(kind):
    import torch

    from ml_backend.models.base import KINDS

    cls = KINDS.get(kind)
    model = cls(cls.network_class(n_classes=2, n_buckets=100, max_len=8))
    ids = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [9, 6, 7, 0, 0, 0, 0, 0]])
    features = model.region_features(ids)
    assert features.shape[:2] == (2, 8) and features.shape[2] > 8
    # token 6 in both texts: the same embedding, another context (its neighbour 5 or 9)
    assert not torch.allclose(features[0, 1], features[1, 1])
    assert torch.allclose(features[0, 2], model.region_features(ids[:1])[0, 2])
