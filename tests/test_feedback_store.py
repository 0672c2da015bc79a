"""AnnotationStore: idempotent, ordered by updated_at, deletions, resync, durability, concurrency."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ml_backend.feedback.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]


def ann(ann_id: int, task_id: int, label: str = "Class A", updated: str = "2024-05-01T10:00:00.000000Z") -> dict:
    return {
        "id": ann_id,
        "task": task_id,
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}],
        "was_cancelled": False,
        "updated_at": updated,
        "project": 2,
    }


def task(task_id: int) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/2/{task_id}.png"}, "project": 2}


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "feedback.sqlite3") as s:
        yield s


def test_upsert_is_idempotent(store):
    assert store.upsert("2", ann(1, 10), task(10)) is True
    rev = store.revision("2")
    assert rev == 1
    assert store.upsert("2", ann(1, 10), task(10)) is False  # repeated delivery
    assert store.count("2") == 1 and store.revision("2") == rev
    assert store.get("2", 1) == (ann(1, 10), task(10))
    assert store.get("2", 99) is None


def test_update_replaces_and_stale_or_equal_updates_are_ignored(store):
    store.upsert("2", ann(1, 10, "Class A", "2024-05-01T10:00:00Z"), task(10))
    assert store.upsert("2", ann(1, 10, "Class B", "2024-05-01T10:00:01.5Z"), task(10)) is True
    assert store.get("2", 1)[0]["result"][0]["value"]["choices"] == ["Class B"]
    rev = store.revision("2")
    # older (even written in another offset), and equal timestamps with new content: nothing changes
    assert store.upsert("2", ann(1, 10, "Class A", "2024-05-01T12:00:00+02:00"), task(10)) is False
    assert store.upsert("2", ann(1, 10, "Class A", "2024-05-01T10:00:01.500000Z"), task(10)) is False
    assert store.get("2", 1)[0]["result"][0]["value"]["choices"] == ["Class B"]
    assert store.revision("2") == rev

    # without timestamps, identical content is a repeat and different content replaces
    plain = {"id": 2, "task": 11, "result": []}
    assert store.upsert("2", plain, task(11)) is True
    assert store.upsert("2", plain, task(11)) is False
    assert store.upsert("2", {**plain, "result": [{"from_name": "x"}]}, task(11)) is True


def test_projects_are_separate(store):
    store.upsert("2", ann(1, 10), task(10))
    store.upsert(3, ann(1, 10, "Class B"), task(10))  # int ids are the same project as their string
    assert store.count("2") == 1 and store.count("3") == 1
    assert store.get("3", 1)[0]["result"][0]["value"]["choices"] == ["Class B"]
    assert store.revision("4") == 0 and store.list("4") == []


def test_has_at_least_counts_one_project(store):
    for i in range(1, 4):
        store.upsert("1", ann(i, i), task(i))
    store.upsert("2", ann(9, 9), task(9))
    assert [store.has_at_least("1", n) for n in (0, 1, 3, 4)] == [True, True, True, False]
    assert store.has_at_least("2", 1) and not store.has_at_least("2", 2) and not store.has_at_least("3", 1)
    store.delete("1", [2])
    assert not store.has_at_least("1", 3) and store.count("1") == 2


def test_list_is_ordered_by_task_id(store):
    for ann_id, task_id in [(5, 30), (6, 10), (7, 20), (4, 10)]:
        store.upsert("2", ann(ann_id, task_id), task(task_id))
    assert [(a["id"], t["id"]) for a, t in store.list("2")] == [(4, 10), (6, 10), (7, 20), (5, 30)]


def test_delete_removes_and_blocks_late_updates(store):
    store.upsert("2", ann(1, 10), task(10))
    store.upsert("2", ann(2, 11), task(11))
    rev = store.revision("2")
    assert store.delete("2", [1, 99]) == 1
    assert store.revision("2") == rev + 1
    assert store.get("2", 1) is None and store.count("2") == 1
    assert store.delete("2", [1]) == 0 and store.revision("2") == rev + 1
    # an ANNOTATION_UPDATED delivered after the deletion does not resurrect it
    assert store.upsert("2", ann(1, 10, "Class B", "2030-01-01T00:00:00Z"), task(10)) is False
    assert store.get("2", 1) is None


def test_replace_all_resyncs(store):
    store.upsert("2", ann(1, 10), task(10))
    store.upsert("2", ann(2, 11), task(11))
    store.upsert("2", ann(3, 12, "Class B", "2024-06-01T00:00:00Z"), task(12))
    store.delete("2", [4])  # tombstone for an id Label Studio still has
    rev = store.revision("2")
    snapshot = [
        (ann(2, 11, "Class B", "2024-05-02T00:00:00Z"), task(11)),  # updated in LS
        (ann(3, 12, "Class A", "2024-05-15T00:00:00Z"), task(12)),  # older than a webhook we already have
        (ann(4, 13), task(13)),
        (ann(5, 14), task(14)),
    ]
    counts = store.replace_all("2", snapshot)
    assert counts == {"added": 2, "updated": 1, "removed": 1, "unchanged": 1}
    assert [a["id"] for a, _ in store.list("2")] == [2, 3, 4, 5]
    assert store.get("2", 2)[0]["result"][0]["value"]["choices"] == ["Class B"]
    assert store.get("2", 3)[0]["result"][0]["value"]["choices"] == ["Class B"]
    assert store.revision("2") > rev
    rev = store.revision("2")
    assert store.replace_all("2", snapshot) == {"added": 0, "updated": 0, "removed": 0, "unchanged": 4}
    assert store.revision("2") == rev
    assert store.replace_all("2", []) == {"added": 0, "updated": 0, "removed": 4, "unchanged": 0}
    assert store.count("2") == 0


def test_project_objects_are_never_stored(store, tmp_path):
    secret_project = {"id": 2, "token": "s3cr3t-token", "task_data_password": "hunter2"}
    a = {**ann(1, 10), "project": secret_project}
    t = {**task(10), "project": secret_project}
    store.upsert("2", a, t)
    assert store.get("2", 1)[0]["project"] == 2 and store.get("2", 1)[1]["project"] == 2
    assert a["project"] is secret_project  # the caller's dicts are not mutated
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.sqlite3*"))
    assert b"s3cr3t-token" not in raw and b"hunter2" not in raw


def test_invalid_input_is_rejected(store):
    with pytest.raises(ValueError, match="integer 'id'"):
        store.upsert("2", {"id": "x"}, task(1))
    with pytest.raises(ValueError, match="task needs"):
        store.upsert("2", {"id": 1}, {"data": {}})
    assert store.count("2") == 0


def test_wal_and_full_sync(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from ml_backend.feedback.store import AnnotationStore
store = AnnotationStore(Path(sys.argv[1]))
ok = store.upsert("2", {"id": 1, "task": 10, "updated_at": "2024-05-01T10:00:00Z", "result": []},
                  {"id": 10, "data": {"image": "x.png"}})
assert ok
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_write_survives_sigkill(tmp_path):
    path = tmp_path / "killed.sqlite3"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with AnnotationStore(path) as reopened:
        assert reopened.count("2") == 1
        assert reopened.get("2", 1)[1] == {"id": 10, "data": {"image": "x.png"}}
        assert reopened.revision("2") == 1


def test_concurrent_writers_from_threads(store):
    n_threads, per_thread = 4, 25
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(per_thread):
                ann_id = worker * 1000 + i
                store.upsert("2", ann(ann_id, ann_id), task(ann_id))
                store.upsert("2", ann(ann_id, ann_id), task(ann_id))  # a duplicate delivery
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count("2") == n_threads * per_thread
    assert store.revision("2") == n_threads * per_thread  # duplicates bumped nothing


def _held_group(store: AnnotationStore, writes: list) -> tuple[list, int]:
    """Run ``writes`` (callables) in threads while the store's write lock is held, so that they
    all wait; then release it. Returns (each write's result or exception, how many commits ran)."""
    commits = []
    commit = store._commit
    store._commit = lambda group: (commits.append(len(group)), commit(group))[1]
    results: list = [None] * len(writes)

    def run(k: int) -> None:
        try:
            results[k] = writes[k]()
        except Exception as exc:  # compared below
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(writes))]
    with store._write_lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(store._pending) < len(writes) and time.monotonic() < deadline:
            time.sleep(0.005)
    for t in threads:
        t.join(10)
    return results, len(commits)


def test_writes_waiting_together_share_one_commit(store):
    writes = [lambda i=i: store.upsert("2", ann(i, i), task(i)) for i in range(8)]
    results, commits = _held_group(store, writes)
    assert results == [True] * 8
    assert commits == 1  # one transaction, one fsync, for the eight annotations
    assert store.count("2") == 8 and store.revision("2") == 8
    assert [a["id"] for a, _ in store.list("2")] == list(range(8))


def test_a_failing_write_in_a_group_rolls_back_alone(store):
    def failing() -> None:
        def work(conn):
            conn.execute("INSERT INTO deleted VALUES ('2', 5)")
            raise ValueError("this write fails after it wrote")

        store._write(work)

    writes = [lambda: store.upsert("2", ann(1, 1), task(1)), failing, lambda: store.upsert("2", ann(2, 2), task(2))]
    results, commits = _held_group(store, writes)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], ValueError)
    assert commits == 1
    assert store.count("2") == 2
    # the failed write's own row was rolled back: id 5 is not a tombstone
    assert store.upsert("2", ann(5, 5), task(5)) is True


def test_two_store_objects_share_the_file(tmp_path):
    path = tmp_path / "shared.sqlite3"
    with AnnotationStore(path) as a, AnnotationStore(path) as b:
        a.upsert("2", ann(1, 10), task(10))
        assert b.get("2", 1) == (ann(1, 10), task(10))
        assert b.upsert("2", ann(1, 10), task(10)) is False
        assert b.revision("2") == 1
    raw = sqlite3.connect(path).execute("SELECT annotation FROM annotations").fetchone()[0]
    assert json.loads(raw)["id"] == 1


_WRITER = """
import sys
from pathlib import Path
from ml_backend.feedback.store import AnnotationStore
store = AnnotationStore(Path(sys.argv[1]))
base = int(sys.argv[2])
for i in range(30):
    store.upsert("2", {"id": base + i, "task": base + i, "updated_at": "2024-05-01T10:00:00Z", "result": []},
                 {"id": base + i, "data": {}})
"""


def test_concurrent_writers_from_processes(tmp_path):
    path = tmp_path / "multi.sqlite3"
    AnnotationStore(path).close()  # create the schema first
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(base)], cwd=REPO, stderr=subprocess.PIPE)
        for base in (0, 1000, 2000)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with AnnotationStore(path) as store:
        assert store.count("2") == 90
        assert store.revision("2") == 90


def test_a_failing_write_alone_leaves_nothing_and_the_store_goes_on(store):
    def work(conn):
        conn.execute("INSERT INTO deleted VALUES ('2', 7)")
        raise ValueError("fails after it wrote")

    with pytest.raises(ValueError, match="fails after it wrote"):
        store._write(work)
    assert store.upsert("2", ann(7, 7), task(7)) is True  # no tombstone was left
    assert store.count("2") == 1
