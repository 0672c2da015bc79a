import os
from pathlib import Path

import pytest
import torch

# Two cores are shared by the test process and the servers it starts.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
LABEL_CONFIGS = ROOT / "label_config"


@pytest.fixture
def image_config() -> str:
    return (LABEL_CONFIGS / "image_classification_evidence.xml").read_text()


@pytest.fixture
def text_config() -> str:
    return (LABEL_CONFIGS / "text_classification_evidence.xml").read_text()


@pytest.fixture
def settings(tmp_path):
    from ml_backend.config import Settings

    return Settings(model_dir=tmp_path / "models")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (tests.support.postgres); fails, never skips,
    when PostgreSQL is not installed."""
    from tests.support.postgres import PostgresServer

    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
    except BaseException as exc:
        server.stop()
        pytest.fail(f"cannot start PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
