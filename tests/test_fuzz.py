"""Malformed requests on every route and webhook action never get a 5xx (seeded and bounded).

Each request is a valid Label Studio payload with some fields replaced by hostile values (wrong
types, nesting, lone surrogates, huge or non-finite numbers, path-like ids), or hostile bytes in
place of the body. The generator is tests/support/fuzz.py; a larger run is benchmarks/bench_fuzz.py.
Below it, every string that can reach the file system gets each hostile path, one by one.
"""
from __future__ import annotations

import base64
import json
from urllib.parse import quote

import numpy as np
import pytest
import requests
import torch

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings, Settings
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models import adapt
from ml_backend.models.backbones import BackboneError
from ml_backend.models.cnn import ImageCNN
from ml_backend.project import with_backbone
from ml_backend.store import ProjectStore, StoreError, allowed_path
from tests.support.backbones import save_image_backbone
from tests.support.fuzz import fuzz, templates
from tests.support.live import LiveServer, ls_task, png_data_uri, predict_body, setup_body

N_REQUESTS = 2000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    settings = Settings(model_dir=root / "models", train_debounce=30.0, basic_auth_user="ls", basic_auth_pass="pw",
                        project=ProjectSettings(epochs=1, image_size=16))
    with LiveServer(create_app(settings)) as live:
        yield live, settings


def test_no_malformed_request_gets_a_5xx(server, image_config, text_config):
    live, settings = server
    ProjectStore(settings.model_dir, "2").publish(adapt(ImageCNN(2, image_size=16, width=4)), ("Class A", "Class B"),
                                                  {})
    session = requests.Session()
    session.auth = ("ls", "pw")
    statuses, failures = fuzz(live.url, session, templates(image_config, text_config), N_REQUESTS, seed=1234)
    assert not failures, f"{len(failures)} of {N_REQUESTS} answered 5xx; first: {failures[:5]}"
    assert sum(statuses.values()) == N_REQUESTS and len(statuses) > 2, statuses
    assert session.get(live.url + "/metrics").status_code == 200


# names the file system refuses (a lone surrogate, a NUL, too long) or that leave the allowed roots
HOSTILE_PATHS = ["\ud800", "a\x00b", "../../etc/passwd", "/etc", "x" * 5000, "\udcff.pt", "/etc/\x00", "a/" * 3000]
PATH_IDS = ["surrogate", "nul", "traversal", "absolute", "long", "surrogate-escape", "absolute-nul", "deep"]


def _session() -> requests.Session:
    session = requests.Session()
    session.auth = ("ls", "pw")
    return session


def _query(value: str) -> str:
    """``value`` as it can arrive in a URL: its bytes percent-encoded (a lone surrogate as UTF-8 would write it)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _error(response: requests.Response) -> str:
    """The message of a 4xx JSON answer (AssertionError for anything else)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    message = response.json()["error"]
    assert isinstance(message, str) and message and len(message) < 1000, message[:300]
    return message


@pytest.mark.parametrize("value", HOSTILE_PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("setting", ["checkpoint", "backbone"])
def test_a_hostile_path_setting_gets_a_4xx_naming_it(server, image_config, setting, value):
    live, settings = server
    session = _session()
    params = {setting: value}
    project = str(100 + 10 * ["checkpoint", "backbone"].index(setting) + HOSTILE_PATHS.index(value))
    task = ls_task(1, {"image": png_data_uri(np.zeros((8, 8, 3), dtype=np.uint8))}, project=int(project))
    predict = predict_body([task], image_config, project=project)
    for path, body in [("/setup", setup_body(image_config, project=project, extra_params=params)),
                       # Label Studio sends extra_params as a JSON string
                       ("/setup", setup_body(image_config, project=project, extra_params=json.dumps(params))),
                       ("/predict", {**predict, "params": {**predict["params"], "extra_params": params}})]:
        message = _error(session.post(live.url + path, json=body, timeout=30))
        assert setting in message, (path, message)
    # refused with the other settings, or on import: either way before /setup stores anything
    assert ProjectStore(settings.model_dir, project).config() == {}


@pytest.mark.parametrize("value", HOSTILE_PATHS, ids=PATH_IDS)
def test_hostile_project_ids_and_version_names_get_a_4xx(server, value):
    live, _ = server
    session = _session()
    answers = [session.post(live.url + "/versions/rollback", json={"project": 2, "version": value}, timeout=30),
               session.post(live.url + "/versions/rollback", json={"project": value}, timeout=30),
               session.post(live.url + "/setup", json={"project": value, "schema": ""}, timeout=30),
               session.post(live.url + "/webhook", json={"action": "START_TRAINING", "project": value}, timeout=30),
               session.get(f"{live.url}/versions?project={_query(value)}", timeout=30),
               session.get(f"{live.url}/queue?project={_query(value)}", timeout=30)]
    for response in answers:
        _error(response)


@pytest.mark.parametrize("value", HOSTILE_PATHS, ids=PATH_IDS)
def test_the_path_sinks_refuse_hostile_names_themselves(tmp_path, image_config, value):
    """Settings built without validate() (benchmarks, the CLI) meet the same refusal at the sinks."""
    with pytest.raises(StoreError):
        allowed_path(value, tmp_path, (), "a checkpoint")
    with pytest.raises(BackboneError):
        with_backbone(parse_label_config(image_config), ProjectSettings(backbone=value), tmp_path)


def test_legitimate_path_settings_still_work(server, image_config):
    live, settings = server
    session = _session()
    weights = settings.model_dir / "weights" / "début ü.pt"  # not ASCII, and still a fine name
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adapt(ImageCNN(2, image_size=16, width=4)).checkpoint(("Class A", "Class B")), weights)
    for project, checkpoint in [("8", "weights/début ü.pt"), ("9", str(weights))]:
        response = session.post(live.url + "/setup", timeout=30,
                                json=setup_body(image_config, project=project, extra_params={"checkpoint": checkpoint}))
        assert response.status_code == 200 and response.json() == {"model_version": f"p{project}-v1"}, response.text
    backbone = save_image_backbone(settings.model_dir / "backbones" / "résnet")
    for project, name in [("10", "résnet"), ("11", str(backbone))]:
        response = session.post(live.url + "/setup", timeout=30,
                                json=setup_body(image_config, project=project, extra_params={"backbone": name}))
        assert response.status_code == 200 and response.json() == {"model_version": "untrained"}, response.text


def test_hostile_local_file_paths_leave_their_task_unpredicted(tmp_path, image_config):
    """Task data is not a setting: a Local Storage path that cannot be read gives its task no
    prediction (one item per task, as the contract wants), never a 5xx; a readable one is served."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "é.png").write_bytes(base64.b64decode(png_data_uri(np.zeros((8, 8, 3), dtype=np.uint8)).split(",")[1]))
    settings = Settings(model_dir=tmp_path / "models", local_files_root=str(root), train_debounce=30.0,
                        project=ProjectSettings(image_size=16))
    ProjectStore(settings.model_dir, "2").publish(adapt(ImageCNN(2, image_size=16, width=4)), ("Class A", "Class B"),
                                                  {})
    refs = ([f"/data/local-files/?d={value}" for value in HOSTILE_PATHS]
            + [f"/data/local-files/?d={_query(value)}" for value in HOSTILE_PATHS]
            + [f"/data/local-files/?d={_query('é.png')}"])
    tasks = [ls_task(i, {"image": ref}) for i, ref in enumerate(refs, 1)]
    with LiveServer(create_app(settings)) as live:
        response = requests.post(live.url + "/predict", json=predict_body(tasks, image_config), timeout=60)
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert results[:-1] == [[]] * (len(refs) - 1)
    assert results[-1]["model_version"] == "p2-v1" and results[-1]["result"]
