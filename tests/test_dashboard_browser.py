"""The dashboard as a real browser renders it (Debian's chromium, headless), after real training jobs.

Writes screenshots; with UPDATE_DOCS=1 into docs/dashboard.png (README shows it) and
docs/dashboard-clusters.png ("What the model looks at", after a click on "Mark irrelevant").
Needs /usr/bin/chromium (scripts/install_system_deps.sh installs it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ml_backend.app import create_app
from ml_backend.labelstudio import rle
from ml_backend.store import ProjectStore
from tests.support.cdp import Browser
from tests.support.live import LiveServer, ls_task, png_data_uri, setup_body

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIZE = 32
CONFOUNDER = np.zeros((SIZE, SIZE), dtype=bool)
CONFOUNDER[:8, :8] = True  # a corner patch that only class A images carry: a shortcut


def image(label: int, seed: int) -> np.ndarray:
    """Class A: a vertical bar (plus the corner confounder); class B: a horizontal bar."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (SIZE, SIZE, 3))
    at = int(rng.integers(10, 22))
    if label == 0:
        img[:, at - 2:at + 2] = 230
        img[CONFOUNDER] = (250, 30, 30)
    else:
        img[at - 2:at + 2, :] = 230
    return img


def annotation_webhook(project: int, task_id: int, label: int, corrected: bool) -> dict:
    """ANNOTATION_CREATED as Label Studio 1.23.2 sends it (contract §2.3), trimmed to what matters."""
    result = [{"id": f"c{task_id}", "from_name": "label", "to_name": "image", "type": "choices",
               "value": {"choices": ["Class A" if label == 0 else "Class B"]}}]
    if corrected:
        result.append({"id": f"b{task_id}", "from_name": "evidence", "to_name": "image", "type": "brushlabels",
                       "original_width": SIZE, "original_height": SIZE, "image_rotation": 0,
                       "value": {"format": "rle", "rle": rle.encode(CONFOUNDER), "brushlabels": ["Irrelevant"]}})
    task = ls_task(task_id, {"image": png_data_uri(image(label, task_id))}, project=project)
    annotation = {"id": task_id, "result": result, "was_cancelled": False, "ground_truth": False,
                  "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z", "lead_time": 3.2,
                  "task": task_id, "project": project, "completed_by": 1}
    return {"action": "ANNOTATION_CREATED", "annotation": annotation, "task": task, "project": {"id": project}}


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    profile = ROOT / ".pytest_cache" / f"chromium-{time.monotonic_ns()}"
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def trained_backend(settings, image_config):
    """Versions from real training jobs (webhooks -> store -> embedded queue), a failed job, a ranking."""
    settings = settings.replace(label_studio_url="http://localhost:8080", train_debounce=1.0,
                                project=settings.project.with_overrides(
                                    {"image_size": SIZE, "epochs": 20, "learning_rate": 0.003, "holdout": 0.25,
                                     "batch_size": 16}))
    app = create_app(settings)
    queue = app.extensions["ml_backend"]["webhooks"].queue
    with LiveServer(app) as server:
        assert requests.post(server.url + "/setup", json=setup_body(image_config, project="5.1795343946")).ok
        task_id = 0
        for batch in (8, 8, 12):
            for _ in range(batch):
                task_id += 1
                body = annotation_webhook(5, task_id, label=task_id % 2, corrected=task_id % 2 == 0 and task_id > 8)
                assert requests.post(server.url + "/webhook", json=body).ok
            assert queue.wait_idle(120)
        queue.enqueue_train("4")  # no label config: this job fails, and the dashboard shows why
        assert queue.wait_idle(30)
        version = requests.post(server.url + "/setup", json=setup_body(image_config, project="5")).json()
        tasks = [{"task": 100 + i, "score": round(0.05 * i, 4), "acquisition_value": round(0.69 - 0.05 * i, 4)}
                 for i in range(14)]
        ProjectStore(settings.model_dir, "5").save_ranking({"project": "5", "model_version": version["model_version"],
                                                            "acquisition": "entropy", "computed_at": time.time(),
                                                            "tasks": tasks})
        yield server


def test_dashboard_renders_in_chromium(trained_backend, tmp_path):
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make system-deps` (scripts/install_system_deps.sh)"
    status = requests.get(trained_backend.url + "/status").json()
    project = next(p for p in status["projects"] if p["project"] == "5")
    assert len(project["versions"]) >= 2, project["jobs"]
    assert project["serving"]["metrics"]["train_accuracy"] is not None

    dumped = chromium("--dump-dom", trained_backend.url + "/dashboard")
    dom = dumped.stdout
    assert dumped.returncode == 0 and "</html>" in dom, dumped.stderr[-2000:]
    card = dom[dom.index('id="project-5"'):]
    svgs = re.findall(r'<svg[^>]*class="chart".*?</svg>', card, flags=re.S)
    assert len(svgs) == 2
    for svg in svgs:
        assert re.search(r"<polyline points=\"[\d.]+,[\d.]+ [\d.]+,[\d.]+", svg)  # a line through >= 2 versions
    queue_table = re.search(r'<table class="queue">.*?</table>', card, flags=re.S).group(0)
    assert queue_table.count("<tr>") == 11  # header + top 10
    assert 'href="http://localhost:8080/projects/5/data?task=100"' in queue_table
    jobs_table = re.search(r'<table class="jobs">.*?</table>', card, flags=re.S).group(0)
    assert "finished" in jobs_table and "published p5-v" in jobs_table
    failed = dom[dom.index('id="project-4"'):dom.index('id="project-5"')]
    assert "failed" in failed and "no label config" in failed and "<svg" not in failed

    # docs/dashboard.png is refreshed on request only, so a test run leaves the work tree clean
    shot = ROOT / "docs" / "dashboard.png" if os.environ.get("UPDATE_DOCS") else tmp_path / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    taken = chromium(f"--screenshot={shot}", "--window-size=1280,1600", trained_backend.url + "/dashboard")
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def wait_for_jobs(server, timeout: float = 120) -> None:
    """Until no job of the embedded queue is queued or running (the click queued a training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for p in requests.get(server.url + "/status").json()["projects"] for j in p["jobs"]]
        if not any(j["status"] in ("queued", "scheduled", "started") for j in jobs):
            return
        time.sleep(0.5)
    raise AssertionError("jobs still running")


def test_what_the_model_looks_at_in_chromium_and_a_click_marks_a_cluster(trained_backend, tmp_path):
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make system-deps` (scripts/install_system_deps.sh)"
    stored = requests.get(trained_backend.url + "/clusters", params={"project": 5, "tasks": 0}).json()
    assert stored["clusters"] and all(c["thumbnails"] for c in stored["clusters"])
    with Browser(CHROMIUM) as browser:
        browser.open(trained_backend.url + "/dashboard")
        cards = browser.evaluate("""[...document.querySelectorAll('#clusters-5 article.cluster')].map(c => ({
            id: c.id, suspicious: !!c.querySelector('.badge.suspicious'), cells: c.querySelectorAll('svg.heatmap rect').length,
            thumbs: [...c.querySelectorAll('img.thumb')].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().height]),
            facts: c.querySelector('.facts').innerText}))""")
        assert [c["id"] for c in cards] == [f"cluster-5-{c['id']}" for c in stored["clusters"]]
        for card, cluster in zip(cards, stored["clusters"]):
            assert card["cells"] == 256 and card["suspicious"] == cluster["suspicious"]
            assert len(card["thumbs"]) == len(cluster["thumbnails"]) >= min(6, cluster["size"])
            assert all(done and width == SIZE and height == 56 for done, width, height in card["thumbs"])  # decoded
            assert "share" in card["facts"] and "shortcut score" in card["facts"]
        target = stored["clusters"][0]["id"]
        assert browser.evaluate("document.querySelectorAll('#clusters-5 tr.correction').length") == 0

        browser.click(f'#cluster-5-{target} form[action$="/irrelevant"] button')
        browser.wait_for("Page.loadEventFired")  # the form's POST, its 303 and the dashboard again
        assert browser.evaluate("location.pathname + location.hash") == "/dashboard#clusters-5"
        rows = browser.evaluate("[...document.querySelectorAll('#clusters-5 tr.correction')].map(r => r.innerText)")
        assert len(rows) == 1 and rows[0].startswith(target), rows
        listed = requests.get(trained_backend.url + "/clusters", params={"project": 5, "tasks": 0, "thumbnails": 0})
        assert [c["cluster"] for c in listed.json()["corrections"]] == [target]

        # docs/dashboard-clusters.png is refreshed on request only, so a test run leaves the work tree clean
        shot = ROOT / "docs" / "dashboard-clusters.png" if os.environ.get("UPDATE_DOCS") else tmp_path / "clusters.png"
        shot.unlink(missing_ok=True)
        browser.screenshot("#clusters-5", str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    wait_for_jobs(trained_backend)
