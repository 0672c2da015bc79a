"""A training that was due when the embedded server died is re-planned when it starts again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.data import confounded_images
from tests.support.live import annotation_webhook, choice, ls_task, png_data_uri, setup_body

pytestmark = pytest.mark.slow

ML_BACKEND = Path(sys.executable).parent / "ml-backend"


def serve(model_dir: Path, port: int, debounce: str, log: Path, database_url: str = "") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XIL_", "REDIS_URL", "LABEL_STUDIO", "DATABASE_URL"))}
    env.update(MODEL_DIR=str(model_dir), TRAIN_DEBOUNCE_SECONDS=debounce, XIL_EPOCHS="2", XIL_IMAGE_SIZE="24",
               XIL_HOLDOUT="0", DATABASE_URL=database_url)
    with log.open("ab") as out:
        proc = subprocess.Popen([str(ML_BACKEND), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(log.read_text()[-3000:])


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    """The annotation store the server uses: "" (the SQLite file under MODEL_DIR) or a PostgreSQL database."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_a_due_training_survives_kill_9(tmp_path, image_config, database_url):
    from benchmarks._common import free_port

    model_dir, log = tmp_path / "models", tmp_path / "backend.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(model_dir, port, "600", log, database_url)  # the job waits 10 minutes: it is still due at the kill
    try:
        assert requests.post(url + "/setup", json=setup_body(image_config)).status_code == 200
        for i in range(1, 4):
            x, y, _ = confounded_images(1, seed=i)
            task = ls_task(i, {"image": png_data_uri((x[0, 0].numpy() * 255).astype("uint8"))})
            body = annotation_webhook("ANNOTATION_CREATED", i, task, [choice(("Class A", "Class B")[int(y[0])])],
                                      image_config)
            assert requests.post(url + "/webhook", json=body).json()["changed"] == 1
        assert requests.get(url + "/versions").json()["versions"] == []
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: the in-process queue dies with its job
        proc.wait(10)
    proc = serve(model_dir, port, "0.2", log, database_url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not requests.get(url + "/versions").json()["versions"]:
            time.sleep(0.5)
        assert requests.get(url + "/versions").json()["versions"] == ["p2-v1"], log.read_text()[-3000:]
        version = requests.get(url + "/versions").json()["projects"]["2"][0]
        assert version["examples"] == 3
        if database_url:  # the annotations went to PostgreSQL, not to a file under MODEL_DIR
            from ml_backend.feedback.store import AnnotationStore

            assert not (model_dir / "feedback.sqlite3").exists()
            with AnnotationStore(database_url) as store:
                assert store.count("2") == 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
