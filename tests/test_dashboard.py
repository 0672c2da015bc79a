"""/status, /queue and /dashboard over real HTTP, with versions, job records and a ranking on disk."""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.dashboard import line_chart
from ml_backend.jobs import JobQueue
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models.cnn import ImageCNN
from ml_backend.models import adapt
from ml_backend.store import ProjectStore
from tests.support.live import LiveServer
from tests.test_containers import redis_url  # noqa: F401  (fixture)

LS_URL = "http://ls.example:8080"
CURVE = [  # (holdout, train, irrelevant mass, examples)
    (0.55, 0.70, 0.42, 8),
    (0.68, 0.85, 0.25, 16),
    (0.81, 0.93, 0.09, 24),
]


def publish_versions(settings: Settings, image_config: str, project: str = "3", curve=CURVE) -> list[str]:
    """Versions with the metrics and feedback counts a training job writes."""
    schema = parse_label_config(image_config)
    store = ProjectStore(settings.model_dir, project)
    store.update_config(label_config=image_config)
    names = []
    for i, (holdout, train, mass, examples) in enumerate(curve):
        meta = {"metrics": {"holdout_accuracy": holdout, "train_accuracy": train, "irrelevant_attribution_mass": mass,
                            "holdout_irrelevant_attribution_mass": mass + 0.05},
                "feedback": {"accepted": examples - 3 - i, "label_only": 2, "irrelevant": 1 + i, "relevant": 0,
                             "irrelevant+relevant": 0},
                "examples": examples, "holdout": examples // 5, "strategies": ["rrr"], "device": "cpu"}
        names.append(store.publish(adapt(ImageCNN(schema.n_classes, image_size=16, width=4)), schema.classes, meta))
    return names


def write_ranking(settings: Settings, project: str = "3", n: int = 120, version: str = "v3") -> dict:
    tasks = [{"task": 1000 + i, "score": round(0.01 * i / n, 6), "acquisition_value": round(1 - i / n, 6)}
             for i in range(n)]
    ranking = {"project": project, "model_version": version, "acquisition": "entropy", "computed_at": time.time(),
               "seconds": 0.5, "tasks": tasks}
    ProjectStore(settings.model_dir, project).save_ranking(ranking)
    return ranking


class FixedQueue(JobQueue):
    """Job records in every state, as either queue reports them."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def jobs(self, project=None, limit=50):
        return [dict(r) for r in self.records if project in (None, r["project"])][:limit]

    def depth(self) -> int:
        return sum(r["status"] == "queued" for r in self.records)


def job_record(status: str, kind: str = "train", project: str = "3", **fields) -> dict:
    now = time.time()
    record = {"id": f"{kind}-{project}-{status}", "kind": kind, "project": project, "reason": "annotations",
              "status": status, "enqueued_at": now - 60, "started_at": None, "ended_at": None, "progress": 0.0,
              "message": "", "error": None, "traceback": None, "result": None}
    if status != "queued":
        record["started_at"] = now - 50
    if status in ("finished", "failed"):
        record["ended_at"] = now - 5
    record.update(fields)
    return record


FIXED_JOBS = [
    job_record("queued"),
    job_record("started", progress=0.42, message="epoch 12/30"),
    job_record("finished", progress=1.0, result={"version": "v3", "examples": 24}),
    job_record("failed", kind="rank", error="ConnectionError: Label Studio unreachable",
               traceback="Traceback ...\nConnectionError: Label Studio unreachable"),
]


def fixed_webhooks(records: list[dict]):
    return SimpleNamespace(queue=FixedQueue(records), observe_metrics=lambda: None, on_setup=lambda project: None,
                           handle=lambda action, body: {"action": action})


@pytest.fixture
def ls_settings(settings):
    return settings.replace(label_studio_url=LS_URL)


@pytest.fixture
def seeded(ls_settings, image_config):
    publish_versions(ls_settings, image_config)
    write_ranking(ls_settings)
    with LiveServer(create_app(ls_settings, webhooks=fixed_webhooks(FIXED_JOBS))) as server:
        yield server


def test_status_with_no_projects(settings):
    with LiveServer(create_app(settings)) as server:
        body = requests.get(server.url + "/status").json()
        assert body["projects"] == [] and body["queue_depth"] == 0 and body["queue_backend"] == "embedded"
        page = requests.get(server.url + "/dashboard")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "No projects yet" in page.text


def test_status_reports_serving_version_curve_feedback_jobs_and_queue(seeded):
    body = requests.get(seeded.url + "/status").json()
    assert body["queue_depth"] == 1
    [project] = body["projects"]
    assert project["project"] == "3"
    assert project["serving"]["version"] == "p3-v3"
    assert project["serving"]["metrics"]["holdout_accuracy"] == 0.81
    curve = project["versions"]
    assert [p["version"] for p in curve] == ["p3-v1", "p3-v2", "p3-v3"]
    assert [p["holdout_accuracy"] for p in curve] == [0.55, 0.68, 0.81]
    assert [p["train_accuracy"] for p in curve] == [0.70, 0.85, 0.93]
    assert [p["irrelevant_attribution_mass"] for p in curve] == [0.42, 0.25, 0.09]
    assert [p["examples"] for p in curve] == [8, 16, 24]
    assert all(isinstance(p["created_at"], float) for p in curve)
    assert project["feedback"] == {"accepted": 19, "label_only": 2, "irrelevant": 3, "relevant": 0,
                                   "irrelevant+relevant": 0}
    jobs = {j["status"]: j for j in project["jobs"]}
    assert set(jobs) == {"queued", "started", "finished", "failed"}
    assert jobs["started"]["progress"] == 0.42 and jobs["started"]["message"] == "epoch 12/30"
    assert jobs["failed"]["error"] == "ConnectionError: Label Studio unreachable"
    assert "traceback" not in jobs["failed"]
    assert jobs["finished"]["ended_at"] > jobs["finished"]["started_at"] > jobs["finished"]["enqueued_at"]
    queue = project["queue"]
    assert queue["model_version"] == "v3" and queue["acquisition"] == "entropy" and queue["size"] == 120
    assert [t["task"] for t in queue["top"]] == list(range(1000, 1010))
    assert queue["top"][0]["url"] == f"{LS_URL}/projects/3/data?task=1000"


def test_status_without_label_studio_url_has_no_links(settings, image_config):
    publish_versions(settings, image_config)
    write_ranking(settings)
    with LiveServer(create_app(settings)) as server:
        top = requests.get(server.url + "/status").json()["projects"][0]["queue"]["top"]
        assert top[0]["url"] is None
        assert requests.get(server.url + "/queue?project=3").json()["tasks"][0]["url"] is None


def test_real_jobs_from_the_embedded_queue(settings, image_config):
    """A job that fails (project without a label config) and one that finishes (no annotations yet)."""
    app = create_app(settings.replace(train_debounce=0.0))
    queue = app.extensions["ml_backend"]["webhooks"].queue
    publish_versions(settings, image_config, project="3", curve=CURVE[:1])
    queue.enqueue_train("7")
    queue.enqueue_train("3", reason="resync")
    assert queue.wait_idle(60)
    with LiveServer(app) as server:
        projects = {p["project"]: p for p in requests.get(server.url + "/status").json()["projects"]}
    assert set(projects) == {"3", "7"}  # 7 is known from its job only
    [failed] = projects["7"]["jobs"]
    assert failed["status"] == "failed" and "no label config" in failed["error"]
    assert projects["7"]["serving"] is None and projects["7"]["versions"] == []
    [finished] = projects["3"]["jobs"]
    assert finished["status"] == "finished" and finished["reason"] == "resync" and finished["progress"] == 1.0
    assert finished["result"]["skipped"] == "no usable annotations"


def test_queue_pages_through_the_ranking(seeded):
    first = requests.get(seeded.url + "/queue", params={"project": "3"}).json()
    assert first["model_version"] == "v3" and first["acquisition"] == "entropy"
    assert first["total"] == 120 and first["page"] == 1 and first["page_size"] == 50 and first["pages"] == 3
    assert [t["task"] for t in first["tasks"]] == list(range(1000, 1050))
    assert first["tasks"][0] == {"rank": 1, "task": 1000, "score": 0.0, "acquisition_value": 1.0,
                                 "url": f"{LS_URL}/projects/3/data?task=1000"}
    last = requests.get(seeded.url + "/queue", params={"project": "3.1795343946", "page": 3}).json()
    assert [t["rank"] for t in last["tasks"]] == list(range(101, 121))
    small = requests.get(seeded.url + "/queue", params={"project": "3", "page": 2, "page_size": 7}).json()
    assert [t["task"] for t in small["tasks"]] == list(range(1007, 1014)) and small["pages"] == 18
    beyond = requests.get(seeded.url + "/queue", params={"project": "3", "page": 9}).json()
    assert beyond["tasks"] == [] and beyond["total"] == 120


@pytest.mark.parametrize("params, status, words", [
    ({}, 400, "project"),
    ({"project": ""}, 400, "project"),
    ({"project": "../etc"}, 400, "invalid project"),
    ({"project": "3", "page": "x"}, 400, "'page' must be an integer"),
    ({"project": "3", "page": "0"}, 400, "'page' must be between"),
    ({"project": "3", "page_size": "0"}, 400, "'page_size' must be between"),
    ({"project": "3", "page_size": "100000"}, 400, "'page_size' must be between"),
    ({"project": "4"}, 404, "no ranking yet"),
])
def test_queue_errors_are_json(seeded, params, status, words):
    response = requests.get(seeded.url + "/queue", params=params)
    assert response.status_code == status
    body = response.json()
    assert body["status"] == status and words in body["error"]


def test_dashboard_has_charts_and_tables(seeded):
    page = requests.get(seeded.url + "/dashboard")
    assert page.status_code == 200
    html = page.text
    assert "Project 3" in html and "serving p3-v3" in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 2
    accuracy, mass = svgs
    assert "Accuracy" in accuracy and "Attribution on irrelevant regions" in mass
    for svg in svgs:
        assert len(re.findall(r"<polyline points=\"([^\"]+)\"", svg)) == 2
        assert all(len(points.split()) == 3 for points in re.findall(r"<polyline points=\"([^\"]+)\"", svg))
        assert ">p3-v1<" in svg and ">p3-v3<" in svg  # x axis labels
    assert '<table class="feedback">' in html and "<td>irrelevant</td>" in html
    assert '<table class="jobs">' in html and "ConnectionError: Label Studio unreachable" in html
    assert 'style="width: 42.0%"' in html and "epoch 12/30" in html
    assert '<table class="queue">' in html
    assert f'href="{LS_URL}/projects/3/data?task=1000"' in html
    assert html.count('<a href="http://ls.example:8080/projects/3/data?task=') == 10


def test_chart_breaks_lines_at_missing_values_and_handles_one_version():
    svg = line_chart("t", ["v1", "v2", "v3", "v4"], [("a", [0.2, None, 0.5, 0.6], "#000")], y_max=1.0)
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 3
    single = line_chart("t", ["v1"], [("a", [0.3], "#000")])
    assert single.count("<circle") == 1 and ">v1<" in single
    empty = line_chart("t", [], [("a", [], "#000")])
    assert "no data yet" in empty and "<polyline" not in empty
    escaped = line_chart("<b>", ["<v>"], [("<s>", [0.1], "#000")])
    assert "<b>" not in escaped and "&lt;v&gt;" in escaped


def test_monitoring_routes_are_behind_basic_auth(tmp_path, image_config):
    settings = Settings(model_dir=tmp_path / "models", basic_auth_user="ls", basic_auth_pass="s3cret")
    publish_versions(settings, image_config)
    write_ranking(settings)
    with LiveServer(create_app(settings)) as server:
        for path in ("/status", "/dashboard", "/queue?project=3"):
            denied = requests.get(server.url + path)
            assert denied.status_code == 401 and denied.json()["status"] == 401, path
            assert denied.headers["WWW-Authenticate"].startswith("Basic")
            assert requests.get(server.url + path, auth=("ls", "nope")).status_code == 401
            assert requests.get(server.url + path, auth=("ls", "s3cret")).status_code == 200, path


@pytest.mark.integration
def test_status_reads_jobs_from_rq(settings, image_config, redis_url):
    """With REDIS_URL the job records come from RQ (no worker here: the jobs wait)."""
    settings = settings.replace(redis_url=redis_url)
    publish_versions(settings, image_config, curve=CURVE[:2])
    app = create_app(settings)
    queue = app.extensions["ml_backend"]["webhooks"].queue
    train = queue.enqueue_train("3")  # debounced: scheduled for a moment later
    rank = queue.enqueue_rank("3")
    with LiveServer(app) as server:
        body = requests.get(server.url + "/status").json()
        page = requests.get(server.url + "/dashboard").text
    assert body["queue_backend"] == "redis" and body["queue_depth"] == 2  # the rank job and the scheduled train job
    [project] = body["projects"]
    jobs = {j["id"]: j for j in project["jobs"]}
    assert (jobs[train["id"]]["kind"], jobs[train["id"]]["status"]) == ("train", "scheduled")
    assert (jobs[rank["id"]]["kind"], jobs[rank["id"]]["status"]) == ("rank", "queued")
    assert jobs[rank["id"]]["enqueued_at"] is not None
    assert train["id"] in page and rank["id"] in page and "<polyline" in page


def test_status_still_answers_when_redis_is_down(settings, image_config):
    from tests.test_containers import free_port

    settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    publish_versions(settings, image_config, curve=CURVE[:2])
    with LiveServer(create_app(settings)) as server:
        body = requests.get(server.url + "/status").json()
        page = requests.get(server.url + "/dashboard")
    assert body["queue_depth"] is None and "ConnectionError" in body["queue_error"]
    assert body["projects"][0]["serving"]["version"] == "p3-v2"
    assert page.status_code == 200 and "job queue unavailable" in page.text


# --- "What the model looks at" --------------------------------------------------------------
def write_clusters(settings: Settings, project: str = "3", version: str = "p3-v3", n: int = 30,
                   tasks_each: int = 2000) -> dict:
    """A version's clusters as the jobs store them: many, with long task lists and thumbnails."""
    from ml_backend.discovery.thumbnails import image_thumbnail

    picture = image_thumbnail(torch.rand(3, 24, 24), np.pad(np.ones((6, 6)), ((0, 18), (0, 18))), 0.9)
    number = int(version.rsplit("-v", 1)[1])
    clusters = []
    for i in range(n):
        ids = list(range(100_000 + i * tasks_each, 100_000 + (i + 1) * tasks_each))
        grid = np.zeros(256)
        grid[i % 256] = 1.0
        clusters.append({"id": f"v{number}-c{i + 1}", "size": tasks_each, "share": round(1 / n, 4),
                         "classes": {"Class A": tasks_each - 3, "Class B": 3}, "shortcut_score": 0.97 - 0.01 * i,
                         "suspicious": i < 2, "isolation": 0.5, "task_ids": ids, "labeled_task_ids": ids[:5],
                         "representative_task_ids": ids[:8], "mean_map": list(grid),
                         "thumbnails": [{"task": t, "image": picture} for t in ids[:8]]})
    payload = {"version": version, "tasks": n * tasks_each, "labeled": 5 * n, "clusters": clusters,
               "computed_at": time.time(), "sources": ["labeled", "unlabeled"]}
    ProjectStore(settings.model_dir, project).save_clusters(payload)
    return payload


@pytest.fixture
def clustered(ls_settings, image_config):
    publish_versions(ls_settings, image_config)
    write_clusters(ls_settings)
    with LiveServer(create_app(ls_settings.replace(train_debounce=60.0))) as server:  # no training runs here
        yield server


def cluster_form(server, cluster_id: str, action: str, data: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/dashboard/clusters/{cluster_id}/{action}",
                         data={"project": "3"} if data is None else data, allow_redirects=False, **kwargs)


def test_the_dashboard_shows_what_the_model_looks_at_fast_and_without_task_lists(clustered):
    started = time.perf_counter()
    page = requests.get(clustered.url + "/dashboard")
    assert page.status_code == 200 and time.perf_counter() - started < 2.0
    html = page.text
    panel = html[html.index('id="clusters-3"'):]
    assert "What the model looks at" in panel and "60000 tasks" in panel
    cards = re.findall(r'<article class="cluster[^"]*" id="cluster-3-(v3-c\d+)">', panel)
    assert cards == [f"v3-c{i}" for i in range(1, 25)]  # the stored order, suspicious first; capped
    assert "and 6 more clusters" in panel
    first = panel[panel.index('id="cluster-3-v3-c1"'):panel.index('id="cluster-3-v3-c2"')]
    assert "suspicious" in first and "0.970" in first and "Class A" in first and "3.3%" in first
    heatmap = re.search(r'<svg[^>]*class="heatmap".*?</svg>', first, flags=re.S).group(0)
    assert heatmap.count("<rect") == 256
    assert first.count('<img class="thumb" src="data:image/png;base64,') == 8
    assert f'href="{LS_URL}/projects/3/data?task=100000"' in first
    assert 'action="dashboard/clusters/v3-c1/irrelevant"' in first and "Mark irrelevant" in first
    assert 'action="dashboard/clusters/v3-c1/review"' in first and "Send to annotators" in first
    assert "100500" not in html  # a task that is no representative: task lists are not rendered
    assert len(html) < 1_000_000


def test_the_text_map_is_drawn_as_bars():
    from ml_backend.dashboard import relevance_map

    bars = relevance_map([0.0] * 15 + [1.0], "t")
    assert bars.count('class="bar"') == 16


def test_marking_a_cluster_from_the_dashboard_lists_the_correction_and_undo_removes_it(clustered):
    marked = cluster_form(clustered, "v3-c2", "irrelevant", headers={"Origin": clustered.url})
    assert marked.status_code == 303 and marked.headers["Location"] == "../../../dashboard#clusters-3"
    html = requests.get(clustered.url + "/dashboard").text
    row = re.search(r'<tr class="correction" data-cluster="v3-c2">.*?</tr>', html, flags=re.S).group(0)
    assert "p3-v3" in row and ">2000<" in row and 'action="dashboard/clusters/v3-c2/undo"' in row
    card = html[html.index('id="cluster-3-v3-c2"'):html.index('id="cluster-3-v3-c3"')]
    assert "marked irrelevant" in card and "Mark irrelevant" not in card and "Undo" in card
    listed = requests.get(clustered.url + "/clusters", params={"project": 3, "tasks": 0, "thumbnails": 0}).json()
    assert [c["cluster"] for c in listed["corrections"]] == ["v3-c2"]
    assert cluster_form(clustered, "v3-c2", "undo").status_code == 303
    assert 'class="correction"' not in requests.get(clustered.url + "/dashboard").text


@pytest.mark.parametrize("cluster_id, action, data, status, words", [
    ("v3-c99", "irrelevant", None, 404, "has no cluster v3-c99"),
    ("garbage", "irrelevant", None, 404, "cluster ids look like"),
    ("v2-c1", "irrelevant", None, 409, "serves p3-v3 now"),  # a stale page's button
    ("v3-c1", "irrelevant", {}, 400, "send the project"),
    ("v3-c1", "irrelevant", {"project": ""}, 400, "send the project"),
    ("v3-c1", "irrelevant", {"project": "../etc"}, 400, "invalid project"),
    ("v3-c1", "irrelevant", {"project": "8"}, 404, "no model version"),
    ("v3-c1", "undo", None, 404, "has no correction of cluster"),
    ("v3-c1", "review", None, 409, "needs Label Studio"),
    ("v3-c1", "explode", None, 404, "no cluster action"),
])
def test_cluster_forms_answer_4xx_as_a_clear_page(clustered, cluster_id, action, data, status, words):
    answer = cluster_form(clustered, cluster_id, action, data)
    assert answer.status_code == status and answer.headers["Content-Type"].startswith("text/html")
    message = re.search(r'<p class="error" id="error-message">(.*?)</p>', answer.text, flags=re.S).group(1)
    assert words in message.replace("&#39;", "'") and "Back to the dashboard" in answer.text


def test_cluster_forms_refuse_another_sites_page(clustered):
    answer = cluster_form(clustered, "v3-c1", "irrelevant", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "dashboard&#39;s own page" in answer.text
    assert 'class="correction"' not in requests.get(clustered.url + "/dashboard").text
