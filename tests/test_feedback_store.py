"""AnnotationStore: idempotent, ordered by updated_at, deletions, resync, durability, concurrency,
schema versions. Every contract test runs on both engines: a SQLite file and a real PostgreSQL
server (tests.support.postgres)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ml_backend.feedback import store as store_module
from ml_backend.feedback.database import DatabaseError, PostgresDatabase, SqliteDatabase
from ml_backend.feedback.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "postgresql"]


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


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path) -> str:
    """Where a store lives: a SQLite file's path, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite3")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(target):
    with AnnotationStore(target) as s:
        yield s


def raw_rows(target: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` read past the store, straight from its database."""
    if "://" in target:
        import psycopg

        with psycopg.connect(target) as conn:
            return conn.execute(sql).fetchall()
    conn = sqlite3.connect(target)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


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


def test_project_objects_are_never_stored(store, target, tmp_path):
    secret_project = {"id": 2, "token": "s3cr3t-token", "task_data_password": "hunter2"}
    a = {**ann(1, 10), "project": secret_project}
    t = {**task(10), "project": secret_project}
    store.upsert("2", a, t)
    assert store.get("2", 1)[0]["project"] == 2 and store.get("2", 1)[1]["project"] == 2
    assert a["project"] is secret_project  # the caller's dicts are not mutated
    store.close()
    if "://" in target:
        raw = json.dumps(raw_rows(target, "SELECT * FROM annotations")).encode()
    else:
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.sqlite3*"))
    assert b"s3cr3t-token" not in raw and b"hunter2" not in raw


def test_invalid_input_is_rejected(store):
    with pytest.raises(ValueError, match="integer 'id'"):
        store.upsert("2", {"id": "x"}, task(1))
    with pytest.raises(ValueError, match="task needs"):
        store.upsert("2", {"id": 1}, {"data": {}})
    with pytest.raises(ValueError, match="does not fit a 64-bit integer"):
        store.upsert("2", ann(2 ** 63, 10), task(10))
    with pytest.raises(ValueError, match="does not fit a 64-bit integer"):
        store.delete("2", [-2 ** 64])
    with pytest.raises(ValueError, match="not valid UTF-8"):
        store.upsert("2", {**ann(1, 10), "result": [{"value": {"text": ["\ud800"]}}]}, task(10))
    assert store.count("2") == 0 and store.revision("2") == 0


def test_quarantine_lists_and_clears(store):
    store.upsert("2", ann(1, 10), task(10))
    store.reject("2", 1, 10, "unknown label 'a\x00b'")  # a NUL from the annotation, which PostgreSQL refuses
    store.reject("2", 2, None, "x" * 1000)
    store.reject("2", 2, 11, "second reason")  # the latest reason replaces the first
    count, recent = store.rejected("2")
    assert count == 2 and store.count("2") == 0  # the stored form of a quarantined annotation is gone
    assert {r["annotation"]: (r["task"], r["reason"]) for r in recent} == {
        1: (10, "unknown label 'a\\0b'"), 2: (11, "second reason")}
    assert store.upsert("2", ann(1, 10, "Class B", "2024-06-01T00:00:00Z"), task(10)) is True
    store.delete("2", [2])
    assert store.rejected("2") == (0, [])


def test_sqlite_is_wal_with_full_sync(tmp_path):
    with AnnotationStore(tmp_path / "feedback.sqlite3") as store:
        with store.database.connection() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_postgres_commits_synchronously_whatever_the_database_default(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with AnnotationStore(postgres_url) as store:
        assert isinstance(store.database, PostgresDatabase)
        with store.database.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from ml_backend.feedback.store import AnnotationStore
store = AnnotationStore(sys.argv[1])
ok = store.upsert("2", {"id": 1, "task": 10, "updated_at": "2024-05-01T10:00:00Z", "result": []},
                  {"id": 10, "data": {"image": "x.png"}})
assert ok
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_write_survives_sigkill(target):
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, target], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with AnnotationStore(target) as reopened:
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


def test_two_store_objects_share_the_database(target):
    with AnnotationStore(target) as a, AnnotationStore(target) as b:
        a.upsert("2", ann(1, 10), task(10))
        assert b.get("2", 1) == (ann(1, 10), task(10))
        assert b.upsert("2", ann(1, 10), task(10)) is False
        assert b.revision("2") == 1
    assert [json.loads(raw)["id"] for raw, in raw_rows(target, "SELECT annotation FROM annotations")] == [1]


_WRITER = """
import sys
from pathlib import Path
from ml_backend.feedback.store import AnnotationStore
store = AnnotationStore(sys.argv[1])
base = int(sys.argv[2])
for i in range(30):
    store.upsert("2", {"id": base + i, "task": base + i, "updated_at": "2024-05-01T10:00:00Z", "result": []},
                 {"id": base + i, "data": {}})
"""


def test_concurrent_writers_from_processes(target):
    procs = [  # each creates the schema if it is first: opening is safe side by side
        subprocess.Popen([sys.executable, "-c", _WRITER, target, str(base)], cwd=REPO, stderr=subprocess.PIPE)
        for base in (0, 1000, 2000)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with AnnotationStore(target) as store:
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


# -- schema versions ------------------------------------------------------------------

# The schema as the store created it before schema versions (no schema_version table).
_UNVERSIONED_SCHEMA = """
CREATE TABLE annotations (project_id TEXT NOT NULL, annotation_id INTEGER NOT NULL, task_id INTEGER NOT NULL,
    updated_us INTEGER, annotation TEXT NOT NULL, task TEXT NOT NULL, PRIMARY KEY (project_id, annotation_id));
CREATE INDEX annotations_by_task ON annotations (project_id, task_id, annotation_id);
CREATE TABLE deleted (project_id TEXT NOT NULL, annotation_id INTEGER NOT NULL, PRIMARY KEY (project_id, annotation_id));
CREATE TABLE revisions (project_id TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE rejected (project_id TEXT NOT NULL, annotation_id INTEGER NOT NULL, task_id INTEGER,
    reason TEXT NOT NULL, received_us INTEGER NOT NULL, PRIMARY KEY (project_id, annotation_id));
INSERT INTO annotations VALUES ('2', 1, 10, 1714557600000000,
    '{"id":1,"result":[],"task":10,"updated_at":"2024-05-01T10:00:00Z"}', '{"data":{},"id":10}');
INSERT INTO deleted VALUES ('2', 5);
INSERT INTO revisions VALUES ('2', 7);
"""


def test_a_store_made_before_schema_versions_opens_as_version_1_and_is_upgraded(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_UNVERSIONED_SCHEMA)
    conn.close()
    with AnnotationStore(path) as store:
        assert store.schema_version() == store_module.SCHEMA_VERSION == 2  # found at 1, upgraded
        assert store.cluster_corrections("2") == []
        assert store.get("2", 1) == ({"id": 1, "result": [], "task": 10, "updated_at": "2024-05-01T10:00:00Z"},
                                     {"data": {}, "id": 10})
        assert store.revision("2") == 7
        assert store.upsert("2", ann(5, 12), task(12)) is False  # its tombstones hold
        assert store.upsert("2", ann(2, 11), task(11)) is True and store.revision("2") == 8
    assert raw_rows(str(path), "SELECT version FROM schema_version") == [(2,)]


def test_a_new_store_is_created_at_the_latest_version(store, target):
    assert store.schema_version() == store_module.SCHEMA_VERSION
    assert raw_rows(target, "SELECT version FROM schema_version") == [(store_module.SCHEMA_VERSION,)]


def test_opening_runs_the_upgrade_steps_a_store_has_not_run(target, monkeypatch):
    with AnnotationStore(target) as store:
        store.upsert("2", ann(1, 10), task(10))
    step = ("CREATE TABLE labels_seen (project_id TEXT NOT NULL, label TEXT NOT NULL, n {bigint} NOT NULL)",
            "INSERT INTO labels_seen SELECT project_id, 'Class A', COUNT(*) FROM annotations GROUP BY project_id")
    monkeypatch.setattr(store_module, "_UPGRADES", (*store_module._UPGRADES, step))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(store_module._UPGRADES))
    with AnnotationStore(target) as store, AnnotationStore(target) as again:  # the second finds nothing to do
        assert store.schema_version() == again.schema_version() == len(store_module._UPGRADES)
        assert store.get("2", 1) == (ann(1, 10), task(10))
    assert raw_rows(target, "SELECT project_id, label, n FROM labels_seen") == [("2", "Class A", 1)]


def test_a_store_newer_than_the_code_is_refused(target):
    AnnotationStore(target).close()
    if "://" in target:
        import psycopg

        with psycopg.connect(target) as conn:
            conn.execute("UPDATE schema_version SET version = 99")
    else:
        with sqlite3.connect(target) as conn:
            conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(DatabaseError, match=r"schema version 99, newer than this release's " + str(store_module.SCHEMA_VERSION) + ": upgrade ml_backend"):
        AnnotationStore(target)


# -- which store the settings name ------------------------------------------------------

def test_the_settings_name_the_store(tmp_path, postgres_url):
    from ml_backend.config import Settings
    from ml_backend.store import annotation_store_path, open_annotation_store

    embedded = open_annotation_store(Settings(model_dir=tmp_path / "models"))
    assert isinstance(embedded.database, SqliteDatabase)
    assert embedded.database.path == annotation_store_path(tmp_path / "models").resolve()
    assert open_annotation_store(Settings(model_dir=tmp_path / "models")) is embedded  # one per process

    shared = open_annotation_store(Settings(model_dir=tmp_path / "models", database_url=postgres_url))
    assert isinstance(shared.database, PostgresDatabase)
    shared.upsert("2", ann(1, 10), task(10))
    shared.close()  # closing gives the connections back; the store opens new ones when used again
    assert open_annotation_store(Settings(model_dir=tmp_path / "other", database_url=postgres_url)) is shared
    assert shared.count("2") == 1 and embedded.count("2") == 0
    shared.close()


def test_an_unreadable_database_url_is_a_clear_error_without_the_password():
    with pytest.raises(DatabaseError) as caught:
        AnnotationStore("postgresql://user:hunter2@db.example:5432/xil?sslmode=sometimes")
    assert "hunter2" not in str(caught.value) and "db.example:5432/xil" in str(caught.value)
    with pytest.raises(DatabaseError, match="must be a postgresql:// URL, not mysql://") as caught:
        AnnotationStore("mysql://user:hunter2@db.example/xil")
    assert "hunter2" not in str(caught.value)


# -- PostgreSQL restarts ----------------------------------------------------------------

def test_a_postgres_restart_loses_no_acknowledged_write(postgres_server):
    url = postgres_server.new_database()
    acknowledged: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            ann_id = worker * 100_000 + i
            try:
                store.upsert("2", ann(ann_id, ann_id), task(ann_id))
                acknowledged.append(ann_id)
            except Exception as exc:  # surfaced below
                errors.append(exc)
            time.sleep(0.002)

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(acknowledged) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acknowledged) >= n, (len(acknowledged), errors[:3])

    with AnnotationStore(url) as store:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(30)
            postgres_server.restart()  # every session is terminated mid-way, the server comes back
            wait_for(len(acknowledged) + 60)  # the pool reconnected: writes go on
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        # A write fails only if the connection died during its COMMIT (it may be stored or not);
        # none of those counts as acknowledged.
        assert all(isinstance(e, DatabaseError) and "while committing" in str(e) for e in errors), errors[:3]
        stored = {a["id"] for a, _ in store.list("2")}
        assert set(acknowledged) <= stored
        assert store.revision("2") == store.count("2") == len(stored)
    with AnnotationStore(url) as reopened:  # another process's view after the restart
        assert {a["id"] for a, _ in reopened.list("2")} == stored


def test_reads_wait_out_a_postgres_restart(postgres_server):
    url = postgres_server.new_database()
    with AnnotationStore(url) as store:
        store.upsert("2", ann(1, 10), task(10))
        assert store.count("2") == 1  # a pooled connection now exists
        postgres_server.restart()
        assert store.get("2", 1) == (ann(1, 10), task(10))
        assert store.has_at_least("2", 1) and store.revisions() == {"2": 1}


def test_a_forked_child_writes_on_its_own_connections(store, caplog):
    store.upsert("2", ann(1, 1), task(1))  # the parent's connections are open
    pid = os.fork()
    if pid == 0:  # the child: a job forked from a serving process
        code = 1
        try:
            code = 0 if store.upsert("2", ann(2, 2), task(2)) and store.count("2") == 2 else 1
            store.close()
            gc.collect()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the child ended none of the parent's sessions: nothing had to reconnect
    assert store.upsert("2", ann(3, 3), task(3)) is True
    assert "connection lost" not in caplog.text
    assert store.count("2") == 3 and store.revision("2") == 3


def test_an_unreachable_postgres_is_a_clear_error_after_the_wait(monkeypatch):
    from ml_backend.feedback import database
    from tests.support.postgres import free_port

    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 1.0)
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=rf"cannot open the annotation store \(PostgreSQL at 127.0.0.1:{port}/xil\)") \
            as caught:
        AnnotationStore(f"postgresql://xil:hunter2@127.0.0.1:{port}/xil")
    assert "hunter2" not in str(caught.value)
    assert time.monotonic() - started < 20


def test_a_cluster_correction_is_recorded_once_listed_and_undone(target):
    with AnnotationStore(target) as store:
        store.upsert("2", ann(1, 10), task(10))
        before = store.revision("2")
        assert store.add_cluster_correction("2", "v3-c1", "2-v3", [12, 10, 10, 11]) is True
        assert store.add_cluster_correction("2", "v3-c1", "2-v3", [99]) is False  # recorded already
        assert store.revision("2") == before + 1  # training data changed: a training is due
        assert store.cluster_corrections("3") == []
    with AnnotationStore(target) as store:  # durable: another process reads it
        [correction] = store.cluster_corrections("2")
        assert (correction["cluster"], correction["version"], correction["task_ids"]) == ("v3-c1", "2-v3", [10, 11, 12])
        assert correction["created_at"] > 0
        assert store.remove_cluster_correction("2", "v3-c1") is True
        assert store.remove_cluster_correction("2", "v3-c1") is False
        assert store.cluster_corrections("2") == [] and store.revision("2") == before + 2
