"""Durable, idempotent store of Label Studio annotations (SQLite, WAL, synchronous=FULL).

Keyed by (project id, annotation id). Webhooks arrive unordered and may repeat, so an
upsert only replaces a stored annotation with a strictly newer ``updated_at``; a repeated
delivery changes nothing. Deleted ids are remembered (tombstones) so that a late
ANNOTATION_UPDATED cannot resurrect them; a resync from Label Studio (``replace_all``),
the source of truth, clears the tombstones of ids Label Studio still has.

Secrets: the store takes only the ``annotation`` and ``task`` dicts of a webhook, never the
webhook's ``project`` object (it holds the project ``token`` and ``task_data_password``).
As a guard, a ``project`` key holding an object inside either dict is stored as its id.
Task data itself is stored unchanged.

Thread- and process-safe: one connection per thread (and per process after a fork), writes
in ``BEGIN IMMEDIATE`` transactions, and a busy timeout for concurrent writers.

Group commit: writes that arrive while another thread's transaction commits wait, then go
together in the next transaction, each in its own savepoint (one failing write rolls back
alone). A burst of webhooks then costs one fsync per group instead of one per annotation; every
write still returns only after the COMMIT that holds it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    project_id TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    updated_us INTEGER,
    annotation TEXT NOT NULL,
    task TEXT NOT NULL,
    PRIMARY KEY (project_id, annotation_id)
);
CREATE INDEX IF NOT EXISTS annotations_by_task ON annotations (project_id, task_id, annotation_id);
CREATE TABLE IF NOT EXISTS deleted (
    project_id TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    PRIMARY KEY (project_id, annotation_id)
);
CREATE TABLE IF NOT EXISTS revisions (
    project_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    project_id TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER,
    reason TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    PRIMARY KEY (project_id, annotation_id)
);
"""

MAX_REASON_CHARS = 300

Pair = tuple[dict, dict]
T = TypeVar("T")
MAX_GROUP = 256  # writes per transaction at most


class _Write:
    """One write waiting for its group's COMMIT."""

    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None


class AnnotationStore:
    """Annotations and their tasks per project, surviving restarts and killed processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One writer at a time inside the process: SQLite's own busy handler makes waiting
        # writers sleep in growing steps, which dominated webhook latency under bursts.
        self._write_lock = threading.Lock()
        self._pending: list[_Write] = []  # writes waiting for the next group (under self._lock)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
        conn.executescript(_SCHEMA)

    # -- connections -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=FULL")  # per connection: an acknowledged commit is on disk
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._connections.append(conn)
        return conn

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in a committed write transaction, grouped with the writes of other
        threads waiting at the same time; its exception (if any) is raised here, others' are not."""
        mine = _Write(work)
        with self._lock:
            self._pending.append(mine)
        with self._write_lock:
            if not mine.done:  # no group took it yet: lead the next one, mine first
                with self._lock:
                    self._pending.remove(mine)
                    group = [mine, *self._pending[:MAX_GROUP - 1]]
                    del self._pending[:MAX_GROUP - 1]
                self._commit(group)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _commit(self, group: list[_Write]) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
            try:
                alone = len(group) == 1  # no savepoint: its transaction is its own (fewer statements)
                for write in group:
                    if not alone:
                        conn.execute("SAVEPOINT one_write")
                    try:
                        write.result = write.work(conn)
                    except Exception as exc:
                        write.error = exc
                        conn.execute("ROLLBACK" if alone else "ROLLBACK TO one_write")
                        if alone:
                            return
                    if not alone:
                        conn.execute("RELEASE one_write")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:  # nothing of the group is stored: each of its writes fails
            for write in group:
                write.error, write.result = write.error or exc, None
        finally:
            for write in group:
                write.done = True

    def close(self) -> None:
        """Close every connection this store opened (in this process)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # opened by another thread; it goes with that thread
                pass
        self._local = threading.local()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------

    def upsert(self, project_id: str, annotation: dict, task: dict) -> bool:
        """Store or update one annotation; True if the stored data changed."""
        row = _row(annotation, task)
        project_id = str(project_id)

        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                "SELECT 1 FROM deleted WHERE project_id=? AND annotation_id=?", (project_id, row["annotation_id"])
            ).fetchone():
                return False
            change = _apply(conn, project_id, row)
            if change:
                _bump(conn, project_id)
            conn.execute("DELETE FROM rejected WHERE project_id=? AND annotation_id=?", (project_id, row["annotation_id"]))
            return change is not None

        return self._write(work)

    def reject(self, project_id: str, annotation_id: int, task_id: Optional[int], reason: str) -> None:
        """Quarantine a malformed annotation: kept out of training, listed with its reason. A
        stored version of it is removed (its newer form replaced it in Label Studio)."""
        project_id = str(project_id)
        received = int(datetime.now(timezone.utc).timestamp() * 1_000_000)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?)",
                         (project_id, annotation_id, task_id, reason[:MAX_REASON_CHARS], received))
            if conn.execute("DELETE FROM annotations WHERE project_id=? AND annotation_id=?",
                            (project_id, annotation_id)).rowcount:
                _bump(conn, project_id)

        self._write(work)

    def rejected(self, project_id: str, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """(how many of the project's annotations are quarantined, the latest with their reasons)."""
        conn = self._conn()
        count = conn.execute("SELECT COUNT(*) FROM rejected WHERE project_id=?", (str(project_id),)).fetchone()[0]
        rows = conn.execute("SELECT annotation_id, task_id, reason, received_us FROM rejected WHERE project_id=? "
                            "ORDER BY received_us DESC LIMIT ?", (str(project_id), limit)).fetchall()
        return count, [{"annotation": a, "task": t, "reason": r, "received_at": us / 1e6} for a, t, r, us in rows]

    def delete(self, project_id: str, annotation_ids: Iterable[int]) -> int:
        """Delete annotations by id (remembering the ids); returns how many were stored."""
        project_id = str(project_id)
        ids = [int(i) for i in annotation_ids]

        def work(conn: sqlite3.Connection) -> int:
            removed = 0
            for annotation_id in ids:
                removed += conn.execute(
                    "DELETE FROM annotations WHERE project_id=? AND annotation_id=?", (project_id, annotation_id)
                ).rowcount
                conn.execute("INSERT OR IGNORE INTO deleted VALUES (?, ?)", (project_id, annotation_id))
                conn.execute("DELETE FROM rejected WHERE project_id=? AND annotation_id=?", (project_id, annotation_id))
            if removed:
                _bump(conn, project_id)
            return removed

        return self._write(work)

    def replace_all(self, project_id: str, pairs: Iterable[Pair]) -> dict[str, int]:
        """Full resync: make the project hold exactly these annotations.

        Annotations absent from ``pairs`` are removed; the rest are upserted with the usual
        ``updated_at`` rule, so a webhook newer than the snapshot is kept. One transaction.
        """
        project_id = str(project_id)
        rows = [_row(annotation, task) for annotation, task in pairs]

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0}
            keep = {row["annotation_id"] for row in rows}
            stored = [
                r[0] for r in conn.execute("SELECT annotation_id FROM annotations WHERE project_id=?", (project_id,))
            ]
            for annotation_id in stored:
                if annotation_id not in keep:
                    conn.execute(
                        "DELETE FROM annotations WHERE project_id=? AND annotation_id=?", (project_id, annotation_id)
                    )
                    counts["removed"] += 1
            for row in rows:
                conn.execute(
                    "DELETE FROM deleted WHERE project_id=? AND annotation_id=?", (project_id, row["annotation_id"])
                )
                counts[_apply(conn, project_id, row) or "unchanged"] += 1
            if counts["added"] or counts["updated"] or counts["removed"]:
                _bump(conn, project_id)
            return counts

        return self._write(work)

    # -- reads -----------------------------------------------------------------------

    def get(self, project_id: str, annotation_id: int) -> Optional[Pair]:
        """(annotation, task) for one annotation id, or None."""
        row = (
            self._conn()
            .execute(
                "SELECT annotation, task FROM annotations WHERE project_id=? AND annotation_id=?",
                (str(project_id), int(annotation_id)),
            )
            .fetchone()
        )
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def list(self, project_id: str) -> list[Pair]:
        """Every (annotation, task) of the project, ordered by task id then annotation id."""
        rows = self._conn().execute(
            "SELECT annotation, task FROM annotations WHERE project_id=? ORDER BY task_id, annotation_id",
            (str(project_id),),
        )
        return [(json.loads(a), json.loads(t)) for a, t in rows]

    def count(self, project_id: str) -> int:
        return (
            self._conn()
            .execute("SELECT COUNT(*) FROM annotations WHERE project_id=?", (str(project_id),))
            .fetchone()[0]
        )

    def has_at_least(self, project_id: str, n: int) -> bool:
        """Whether the project holds ``n`` annotations or more: reads n rows at most, where ``count``
        reads them all (every webhook asks this)."""
        if n <= 0:
            return True
        return self._conn().execute("SELECT 1 FROM annotations WHERE project_id=? LIMIT 1 OFFSET ?",
                                    (str(project_id), n - 1)).fetchone() is not None

    def revisions(self) -> dict[str, int]:
        """Every project's revision."""
        return dict(self._conn().execute("SELECT project_id, revision FROM revisions").fetchall())

    def revision(self, project_id: str) -> int:
        """Monotonic counter, bumped by every change to the project's annotations (0 = none yet)."""
        row = self._conn().execute("SELECT revision FROM revisions WHERE project_id=?", (str(project_id),)).fetchone()
        return row[0] if row else 0


def _row(annotation: dict, task: dict) -> dict[str, Any]:
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise ValueError("annotation and task must be JSON objects")
    annotation_id = annotation.get("id")
    if not isinstance(annotation_id, int) or isinstance(annotation_id, bool):
        raise ValueError(f"annotation needs an integer 'id', got {annotation_id!r}")
    task_id = task.get("id", annotation.get("task"))
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError(f"task needs an integer 'id' (or the annotation a 'task'), got {task_id!r}")
    annotation, task = _without_project_object(annotation), _without_project_object(task)
    return {
        "annotation_id": annotation_id,
        "task_id": task_id,
        "updated_us": _timestamp_us(annotation.get("updated_at")),
        "annotation": _canonical(annotation),
        "task": _canonical(task),
    }


def _without_project_object(obj: dict) -> dict:
    project = obj.get("project")
    if isinstance(project, dict):
        obj = {**obj, "project": project.get("id")}
    return obj


def _canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _timestamp_us(value: Any) -> Optional[int]:
    """ISO 8601 (LS sends e.g. 2024-05-01T10:00:00.123456Z) -> microseconds since the epoch."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _apply(conn: sqlite3.Connection, project_id: str, row: dict) -> Optional[str]:
    """Insert or replace by the updated_at rule; "added", "updated" or None (unchanged)."""
    stored = conn.execute(
        "SELECT updated_us, annotation, task FROM annotations WHERE project_id=? AND annotation_id=?",
        (project_id, row["annotation_id"]),
    ).fetchone()
    values = (row["task_id"], row["updated_us"], row["annotation"], row["task"], project_id, row["annotation_id"])
    if stored is None:
        conn.execute(
            "INSERT INTO annotations (task_id, updated_us, annotation, task, project_id, annotation_id) VALUES (?,?,?,?,?,?)",
            values,
        )
        return "added"
    old_us, old_annotation, old_task = stored
    if old_us is not None and row["updated_us"] is not None and row["updated_us"] <= old_us:
        return None  # a repeated or stale delivery
    if (old_annotation, old_task) == (row["annotation"], row["task"]):
        return None
    conn.execute(
        "UPDATE annotations SET task_id=?, updated_us=?, annotation=?, task=? WHERE project_id=? AND annotation_id=?",
        values,
    )
    return "updated"


def _bump(conn: sqlite3.Connection, project_id: str) -> None:
    conn.execute(
        "INSERT INTO revisions VALUES (?, 1) ON CONFLICT(project_id) DO UPDATE SET revision = revision + 1",
        (project_id,),
    )
