"""Malformed requests on every route and webhook action never get a 5xx (seeded and bounded).

Each request is a valid Label Studio payload with some fields replaced by hostile values (wrong
types, nesting, lone surrogates, huge or non-finite numbers, path-like ids), or hostile bytes in
place of the body. The generator is tests/support/fuzz.py; a larger run is benchmarks/bench_fuzz.py.
"""
from __future__ import annotations

import pytest
import requests

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings, Settings
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.store import ProjectStore
from tests.support.fuzz import fuzz, templates
from tests.support.live import LiveServer

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
