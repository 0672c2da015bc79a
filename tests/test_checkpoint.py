"""A project can start from user-supplied weights (a checkpoint path in its configuration)."""
from __future__ import annotations

import numpy as np
import pytest
import requests
import torch

from ml_backend.app import create_app
from ml_backend.models.cnn import ImageCNN
from ml_backend.models import adapt
from ml_backend.store import ProjectStore
from tests.support.live import LiveServer, ls_task, png_data_uri, predict_body, setup_body


@pytest.fixture
def backend(settings):
    with LiveServer(create_app(settings)) as server:
        yield server


def _weights_file(tmp_path, name: str):
    """User weights go under MODEL_DIR (or WEIGHTS_DIRS)."""
    (tmp_path / "models" / "weights").mkdir(parents=True, exist_ok=True)
    return tmp_path / "models" / "weights" / name


def _task():
    return ls_task(1, {"image": png_data_uri(np.random.default_rng(0).integers(0, 255, (40, 30, 3)))})


def test_project_starts_from_an_ml_backend_checkpoint(backend, tmp_path, image_config):
    torch.manual_seed(3)
    model = ImageCNN(2, image_size=32)
    path = _weights_file(tmp_path, "weights.pt")
    torch.save(adapt(model).checkpoint(("Class A", "Class B")), path)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.json() == {"model_version": "p2-v1"}
    prediction = requests.post(backend.url + "/predict", json=predict_body([_task()], image_config)).json()["results"][0]
    assert prediction["model_version"] == "p2-v1"
    x = torch.rand(1, 3, 32, 32)
    served = ProjectStore(tmp_path / "models", "2").load("v1").model.network
    assert torch.allclose(served(x), model.eval()(x))  # the very weights the user supplied


def test_project_starts_from_a_bare_state_dict(backend, tmp_path, image_config):
    model = ImageCNN(2, image_size=64)  # the project's default model (XIL_IMAGE_SIZE=64)
    path = _weights_file(tmp_path, "state.pt")
    torch.save(model.state_dict(), path)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.json() == {"model_version": "p2-v1"}


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"garbage", "cannot read"),
])
def test_unusable_checkpoints_get_a_clear_422(backend, tmp_path, image_config, content, message):
    path = _weights_file(tmp_path, "bad.pt")
    if content is not None:
        path.write_bytes(content)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.status_code == 422 and message in response.json()["error"]


def test_a_state_dict_for_another_architecture_is_refused(backend, tmp_path, image_config):
    path = _weights_file(tmp_path, "other.pt")
    torch.save({"weight": torch.zeros(3, 3)}, path)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.status_code == 422 and "does not fit" in response.json()["error"]


def test_a_checkpoint_for_other_classes_is_refused(backend, tmp_path, image_config):
    path = _weights_file(tmp_path, "cats.pt")
    torch.save(adapt(ImageCNN(3, image_size=32)).checkpoint(("cat", "dog", "bird")), path)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.status_code == 422 and "'cat', 'dog', 'bird'" in response.json()["error"]


@pytest.mark.parametrize("exists", [True, False])
def test_weights_outside_the_allowed_directories_are_refused_alike(backend, tmp_path, image_config, exists):
    """Outside MODEL_DIR and WEIGHTS_DIRS the answer is the same whether or not a file is there."""
    path = tmp_path / "elsewhere.pt"
    if exists:
        torch.save(adapt(ImageCNN(2, image_size=64)).checkpoint(("Class A", "Class B")), path)
    for name in (str(path), "../elsewhere.pt", "weights/../../elsewhere.pt"):
        response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": name}))
        assert response.status_code == 422
        assert response.json()["error"] == "a checkpoint must be under MODEL_DIR or a directory listed in WEIGHTS_DIRS"


def test_weights_dirs_allow_another_directory(tmp_path, image_config):
    from ml_backend.config import Settings

    shared = tmp_path / "shared-weights"
    shared.mkdir()
    torch.save(adapt(ImageCNN(2, image_size=64)).checkpoint(("Class A", "Class B")), shared / "w.pt")
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "WEIGHTS_DIRS": f"/nonexistent,{shared}"})
    with LiveServer(create_app(settings)) as server:
        response = requests.post(server.url + "/setup",
                                 json=setup_body(image_config, extra_params={"checkpoint": str(shared / "w.pt")}))
        assert response.json() == {"model_version": "p2-v1"}


@pytest.mark.parametrize("refused", ["../../etc/passwd", "/etc", "weights/missing.pt"])
def test_a_refused_checkpoint_changes_nothing_stored(backend, tmp_path, image_config, refused):
    """A /setup answered 422 leaves the project as the last accepted /setup left it."""
    store = ProjectStore(tmp_path / "models", "2")
    accepted = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"epochs": 3}))
    assert accepted.json() == {"model_version": "untrained"}
    before = store.config()
    assert before["extra_params"] == {"epochs": 3}

    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": refused}))
    assert response.status_code == 422
    assert store.config() == before
    assert store.current() is None and not (store.root / "versions").exists()
    assert requests.get(backend.url + "/versions?project=2").json()["projects"] == {"2": []}
    # /predict without extra_params serves with what /setup stored: had the refused checkpoint been
    # stored, it would be imported (and refused) here
    prediction = requests.post(backend.url + "/predict", json=predict_body([_task()], image_config))
    assert prediction.status_code == 200 and prediction.json()["results"][0]["model_version"] == "untrained"

    path = _weights_file(tmp_path, "good.pt")
    torch.save(adapt(ImageCNN(2, image_size=32)).checkpoint(("Class A", "Class B")), path)
    response = requests.post(backend.url + "/setup", json=setup_body(image_config, extra_params={"checkpoint": str(path)}))
    assert response.json() == {"model_version": "p2-v1"}
    assert store.config()["extra_params"] == {"checkpoint": str(path)} and store.current() == "p2-v1"
