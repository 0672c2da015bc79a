"""Version names: each says its project ("p3-v2"), since Label Studio asks GET /versions with no
project; a project's legacy names ("v2", checkpoints and CURRENT files of an older release) still work."""
from __future__ import annotations

import json

import pytest

from ml_backend.app import create_app
from ml_backend.cli import main as cli_main
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.store import ProjectStore, StoreError, version_name, version_number
from tests.support.live import setup_body

CLASSES = ("Class A", "Class B")


def publish(settings, project: str = "2") -> str:
    return ProjectStore(settings.model_dir, project).publish(adapt(ImageCNN(2, image_size=16)), CLASSES, {"x": 1})


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.mark.parametrize("project, number, name", [("3", 2, "p3-v2"), ("12", 10, "p12-v10"),
                                                   ("default", 1, "default-v1"), ("a-v1", 4, "a-v1-v4")])
def test_names_say_their_project_and_parse_back(project, number, name):
    assert version_name(project, number) == name
    assert version_number(project, name) == number
    assert version_number(project, f"v{number}") == number  # the legacy name of the project's own version


@pytest.mark.parametrize("name", ["p4-v2", "p33-v2", "p3-v0", "p3-v", "-v2", "v", "v2x", "p3-v2/../x", "../v2",
                                  "p3-v02", "", None, 2, ["p3-v2"], "p3-v" + "9" * 30])
def test_other_projects_names_and_garbage_are_not_the_projects(name):
    assert version_number("3", name) is None


def test_publish_names_versions_by_project_and_keeps_the_directory_layout(settings):
    assert publish(settings, "2") == "p2-v1"
    assert publish(settings, "2") == "p2-v2"
    assert publish(settings, "7") == "p7-v1"
    store = ProjectStore(settings.model_dir, "2")
    assert sorted(p.name for p in store.versions_dir.iterdir()) == ["v1", "v2"]
    assert (store.root / "CURRENT").read_text() == "v2"  # an older release's process reads it too
    assert store.current() == "p2-v2"
    assert [(v["version"], v["number"], v["current"]) for v in store.list()] == [("p2-v1", 1, False),
                                                                                 ("p2-v2", 2, True)]
    assert store.meta("p2-v1")["version"] == "p2-v1" and store.meta("v1")["x"] == 1
    loaded = store.load("p2-v2")
    assert loaded.version == "p2-v2" and loaded.classes == CLASSES


def test_rollback_accepts_either_name_and_answers_the_served_name(settings):
    publish(settings), publish(settings), publish(settings)
    store = ProjectStore(settings.model_dir, "2")
    assert store.rollback() == "p2-v2" and store.current() == "p2-v2"
    assert store.rollback("v3") == "p2-v3" and store.current() == "p2-v3"
    assert store.rollback("p2-v1") == "p2-v1" and store.current() == "p2-v1"
    for other in ("p7-v1", "p2-v9", "../7/versions/v1"):
        with pytest.raises(StoreError, match="has no version"):
            store.rollback(other)
    assert store.current() == "p2-v1"


def test_a_project_of_an_older_release_loads_unchanged(settings):
    """Directories v1, v2, meta.json saying "v2", CURRENT saying "v2": served as p2-v2."""
    publish(settings), publish(settings)
    store = ProjectStore(settings.model_dir, "2")
    for n in (1, 2):
        meta_path = store.versions_dir / f"v{n}" / "meta.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": f"v{n}"}))
    (store.root / "CURRENT").write_text("v2")
    assert store.current() == "p2-v2"
    assert store.load(store.current()).version == "p2-v2"
    assert store.load("v1").version == "p2-v1"
    assert [v["version"] for v in store.list()] == ["p2-v1", "p2-v2"]


def test_versions_route_names_each_projects_versions(client, settings):
    assert client.get("/versions").get_json()["versions"] == []
    publish(settings, "2"), publish(settings, "2"), publish(settings, "7")
    body = client.get("/versions").get_json()  # Label Studio's call: no project
    assert body["versions"] == ["p2-v1", "p2-v2", "p7-v1"]  # no name collides
    assert [v["version"] for v in body["projects"]["7"]] == ["p7-v1"]
    only = client.get("/versions", query_string={"project": "2.1700000000"}).get_json()
    assert only["versions"] == ["p2-v1", "p2-v2"] and list(only["projects"]) == ["2"]


def test_setup_predict_and_rollback_speak_the_same_names(client, settings, image_config):
    publish(settings, "2"), publish(settings, "2")
    assert client.post("/setup", json=setup_body(image_config)).get_json() == {"model_version": "p2-v2"}
    rolled = client.post("/versions/rollback", json={"project": "2.123", "version": "p2-v1"}).get_json()
    assert rolled == {"project": "2", "model_version": "p2-v1"}
    assert client.post("/setup", json=setup_body(image_config)).get_json() == {"model_version": "p2-v1"}
    assert client.post("/versions/rollback", json={"project": 2, "version": "v2"}).get_json()["model_version"] == "p2-v2"
    wrong = client.post("/versions/rollback", json={"project": 2, "version": "p7-v1"})
    assert wrong.status_code == 404 and "has no version" in wrong.get_json()["error"]


def test_cli_lists_versions_by_name(settings, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
    publish(settings, "2"), publish(settings, "7")
    assert cli_main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "project 2    p2-v1" in out and "project 7    p7-v1" in out
    assert cli_main(["versions", "7"]) == 0
    assert "p2-v1" not in capsys.readouterr().out
    assert cli_main(["rollback", "2", "p2-v1"]) == 0


def test_project_config_reads_see_every_write_and_the_cache_stays_bounded(tmp_path):
    from ml_backend import store as store_module
    from ml_backend.store import write_atomic

    project = ProjectStore(tmp_path, "3")
    assert project.config() == {}
    assert project.update_config(label_config="<View/>")["label_config"] == "<View/>"
    first = project.config()
    first["label_config"] = "changed by a caller"  # a caller's copy: the cache keeps its own
    assert project.config() == {"label_config": "<View/>"}
    # a write by another process (a second server, a worker): the next read sees it
    write_atomic(project.root / "project.json", json.dumps({"label_config": "<View></View>"}).encode())
    assert ProjectStore(tmp_path, "3").config() == {"label_config": "<View></View>"}
    assert project.update_config(extra_params={"epochs": 2}) == {"label_config": "<View></View>",
                                                                   "extra_params": {"epochs": 2}}
    # 40 projects with 1 MB configs: at most MAX_BYTES stay parsed, and every read is still right
    cache = store_module._CONFIGS
    big = "x" * (2**20 - 100)
    for k in range(40):
        ProjectStore(tmp_path, f"p{k}").update_config(label_config=big + str(k))
    assert all(ProjectStore(tmp_path, f"p{k}").config()["label_config"].endswith(str(k)) for k in range(40))
    assert 0 < cache._bytes <= cache.MAX_BYTES
    assert sum(entry[1] for entry in cache._entries.values()) == cache._bytes


def test_a_ranking_of_an_older_version_never_replaces_a_newer_ones(settings):
    """Two rank jobs finishing out of order: the older version's ranking is dropped."""
    publish(settings), publish(settings)
    store = ProjectStore(settings.model_dir, "2")
    assert store.save_ranking({"model_version": "p2-v2", "tasks": [{"task": 1}]}) is True
    assert store.save_ranking({"model_version": "p2-v1", "tasks": [{"task": 9}]}) is False
    assert store.ranking()["model_version"] == "p2-v2"
    # after a rollback the older version serves, and its ranking is the one to keep
    store.rollback("p2-v1")
    assert store.save_ranking({"model_version": "p2-v1", "tasks": []}) is True
    assert store.ranking()["model_version"] == "p2-v1"


def test_concurrent_publishers_take_distinct_numbers_and_readers_see_whole_versions(settings):
    import threading

    names, problems, done = [], [], threading.Event()
    store = ProjectStore(settings.model_dir, "2")

    def read() -> None:  # a serving process: every version it lists loads
        while not done.is_set():
            for version in store.list():
                try:
                    store.load(version["version"], donors=False)
                except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
                    problems.append(repr(exc))

    def write() -> None:
        for _ in range(4):
            names.append(publish(settings))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write) for _ in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert sorted(names, key=lambda n: int(n.rpartition("v")[2])) == [f"p2-v{i}" for i in range(1, 17)]
    assert problems == []
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".staging-")]
    assert store.current() in names
