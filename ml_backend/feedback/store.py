"""Durable, idempotent store of Label Studio annotations: a SQLite file, or PostgreSQL (DATABASE_URL).

Keyed by (project id, annotation id). Webhooks arrive unordered and may repeat, so an
upsert only replaces a stored annotation with a strictly newer ``updated_at``; a repeated
delivery changes nothing. Deleted ids are remembered (tombstones) so that a late
ANNOTATION_UPDATED cannot resurrect them; a resync from Label Studio (``replace_all``),
the source of truth, clears the tombstones of ids Label Studio still has.

Secrets: the store takes only the ``annotation`` and ``task`` dicts of a webhook, never the
webhook's ``project`` object (it holds the project ``token`` and ``task_data_password``).
As a guard, a ``project`` key holding an object inside either dict is stored as its id.
Task data itself is stored unchanged.

One implementation, two engines: the contract and its SQL are written once, here;
``feedback.database`` holds what differs (SQLite: WAL, synchronous=FULL, a connection per
thread and process; PostgreSQL: a psycopg pool, synchronous_commit on). Every write transaction
excludes the other writers of every process and host (SQLite's BEGIN IMMEDIATE, an advisory
lock in PostgreSQL): the updated_at rule and the tombstones read before they write.

Group commit: writes that arrive while another thread's transaction commits wait, then go
together in the next transaction, each in its own savepoint (one failing write rolls back
alone). A burst of webhooks then costs one fsync per group instead of one per annotation; every
write still returns only after the COMMIT that holds it. A group whose connection is lost before
its COMMIT (a PostgreSQL restart) runs again on a new connection, for up to BUSY_TIMEOUT_S.

Schema: versioned in the ``schema_version`` table, created on first use and brought up to date
by the steps of ``_UPGRADES`` whenever a store opens. A SQLite store made before versioning is
version 1.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

from ml_backend.feedback.database import BUSY_TIMEOUT_S, Connection, Database, DatabaseError, open_database

__all__ = ["AnnotationStore", "BUSY_TIMEOUT_S", "DatabaseError", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

# Step i brings the schema from version i to i + 1. A change to the schema appends a step (never
# edits one: stores in use ran it already). {bigint} is the engine's 64-bit integer type.
_UPGRADES: tuple[tuple[str, ...], ...] = (
    (  # 1: annotations, tombstones, revisions, quarantine
        """CREATE TABLE IF NOT EXISTS annotations (
            project_id TEXT NOT NULL,
            annotation_id {bigint} NOT NULL,
            task_id {bigint} NOT NULL,
            updated_us {bigint},
            annotation TEXT NOT NULL,
            task TEXT NOT NULL,
            PRIMARY KEY (project_id, annotation_id)
        )""",
        "CREATE INDEX IF NOT EXISTS annotations_by_task ON annotations (project_id, task_id, annotation_id)",
        """CREATE TABLE IF NOT EXISTS deleted (
            project_id TEXT NOT NULL,
            annotation_id {bigint} NOT NULL,
            PRIMARY KEY (project_id, annotation_id)
        )""",
        """CREATE TABLE IF NOT EXISTS revisions (
            project_id TEXT PRIMARY KEY,
            revision {bigint} NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS rejected (
            project_id TEXT NOT NULL,
            annotation_id {bigint} NOT NULL,
            task_id {bigint},
            reason TEXT NOT NULL,
            received_us {bigint} NOT NULL,
            PRIMARY KEY (project_id, annotation_id)
        )""",
    ),
    (  # 2: concept-level corrections: an evidence cluster marked irrelevant as a whole
        """CREATE TABLE IF NOT EXISTS cluster_corrections (
            project_id TEXT NOT NULL,
            cluster_id TEXT NOT NULL,
            version TEXT NOT NULL,
            task_ids TEXT NOT NULL,
            created_us {bigint} NOT NULL,
            PRIMARY KEY (project_id, cluster_id)
        )""",
    ),
)
SCHEMA_VERSION = len(_UPGRADES)

MAX_REASON_CHARS = 300
MAX_ID = 2 ** 63 - 1  # ids are 64-bit integer columns

Pair = tuple[dict, dict]
T = TypeVar("T")
MAX_GROUP = 256  # writes per transaction at most


class _Write:
    """One write waiting for its group's COMMIT."""

    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work: Callable[[Connection], Any]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None


class _Lost(Exception):
    """The connection went away before COMMIT: the group may run again."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class AnnotationStore:
    """Annotations and their tasks per project, surviving restarts and killed processes.

    ``database``: a SQLite file's path, a postgresql:// URL, or a ``feedback.database.Database``.
    """

    def __init__(self, database: Database | Path | str) -> None:
        self._db = database if isinstance(database, Database) else open_database(database)
        self._lock = threading.Lock()
        # One writer at a time inside the process: SQLite's own busy handler makes waiting
        # writers sleep in growing steps, which dominated webhook latency under bursts.
        self._write_lock = threading.Lock()
        self._pending: list[_Write] = []  # writes waiting for the next group (under self._lock)
        try:
            self._write(self._upgrade_schema)
        except Exception as exc:
            self._db.close()  # a pool would go on connecting in the background
            if isinstance(exc, DatabaseError):
                raise
            raise DatabaseError(f"cannot open the annotation store ({self._db.describe()}): "
                                f"{type(exc).__name__}: {exc}") from exc

    @property
    def database(self) -> Database:
        return self._db

    def _upgrade_schema(self, conn: Connection) -> int:
        """Create or upgrade the schema to SCHEMA_VERSION (inside a write transaction); the version found."""
        if not self._db.has_table(conn, "schema_version"):
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            found = 1 if self._db.has_table(conn, "annotations") else 0  # made before versioning: 1
            conn.execute("INSERT INTO schema_version VALUES (?)", (found,))
        else:
            found = row[0]
        if found > SCHEMA_VERSION:
            raise DatabaseError(f"the annotation store ({self._db.describe()}) has schema version {found}, "
                                f"newer than this release's {SCHEMA_VERSION}: upgrade ml_backend")
        for step in _UPGRADES[found:]:
            for statement in step:
                conn.execute(statement.format(bigint=self._db.bigint))
        if found < SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION,))
            log.info("annotation store (%s): schema version %d -> %d", self._db.describe(), found, SCHEMA_VERSION)
        return found

    def schema_version(self) -> int:
        """The schema version the database holds."""
        return self._read(lambda conn: conn.execute("SELECT version FROM schema_version").fetchone()[0])

    # -- connections -----------------------------------------------------------------

    def _may_retry(self, exc: BaseException, deadline: float, attempt: int) -> bool:
        """Whether to run again after ``exc``: a lost connection, with time left. Waits first."""
        if not self._db.lost(exc) or time.monotonic() >= deadline:
            return False
        log.warning("annotation store (%s): connection lost (%s); trying again", self._db.describe(),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        self._db.recover()
        time.sleep(min(0.05 * 2 ** attempt, 1.0))
        return True

    def _read(self, query: Callable[[Connection], T]) -> T:
        """``query(conn)``, again on a new connection if the connection was lost."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        for attempt in itertools.count():
            try:
                with self._db.connection() as conn:
                    return query(conn)
            except Exception as exc:
                if not self._may_retry(exc, deadline, attempt):
                    raise
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in a committed write transaction, grouped with the writes of other
        threads waiting at the same time; its exception (if any) is raised here, others' are not.
        ``work`` may run more than once (after a lost connection): it reads what it needs in it."""
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
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        try:
            for attempt in itertools.count():
                try:
                    with self._db.connection() as conn:
                        self._run_group(conn, group)
                    return
                except _Lost as lost:
                    if not self._may_retry(lost.error, deadline, attempt):
                        raise lost.error from None
                    for write in group:
                        write.result = write.error = None
        except BaseException as exc:  # nothing of the group is stored: each of its writes fails
            for write in group:
                write.error, write.result = write.error or exc, None
        finally:
            for write in group:
                write.done = True

    def _run_group(self, conn: Connection, group: list[_Write]) -> None:
        """One transaction for the group; _Lost if the connection went away before COMMIT.

        The writes run one after another without savepoints (two statements fewer each). Only if
        one of them fails is the group run again with a savepoint per write, so that its failure
        is its own: writes may run more than once, as after a lost connection."""
        if not self._try_group(conn, group, isolated=len(group) == 1):
            for write in group:
                write.result = write.error = None
            self._try_group(conn, group, isolated=True)

    def _try_group(self, conn: Connection, group: list[_Write], isolated: bool) -> bool:
        """False (all rolled back) if a write failed and the writes were not isolated."""
        committing = False
        alone = len(group) == 1  # isolated by its own transaction: no savepoint needed
        try:
            self._db.begin_write(conn)
            for write in group:
                if isolated and not alone:
                    conn.execute("SAVEPOINT one_write")
                try:
                    write.result = write.work(conn)
                except Exception as exc:
                    if self._db.lost(exc):
                        raise  # the connection's failure, not this write's
                    if not isolated:
                        conn.execute("ROLLBACK")
                        return False
                    write.error = exc
                    conn.execute("ROLLBACK" if alone else "ROLLBACK TO one_write")
                    if alone:
                        return True
                if isolated and not alone:
                    conn.execute("RELEASE one_write")
            committing = True
            conn.execute("COMMIT")
            return True
        except BaseException as exc:
            try:
                if self._db.in_transaction(conn):
                    conn.execute("ROLLBACK")
            except Exception:  # a lost connection: its transaction is gone with it
                pass
            if not self._db.lost(exc):
                raise
            if committing:  # the COMMIT may have been applied: running the group again could tell lies
                raise DatabaseError(f"annotation store ({self._db.describe()}): the connection was lost while "
                                    "committing; the write may or may not be stored") from exc
            raise _Lost(exc) from exc

    def close(self) -> None:
        """Close every connection this store opened (in this process); it opens new ones if used again."""
        self._db.close()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------

    def upsert(self, project_id: str, annotation: dict, task: dict) -> bool:
        """Store or update one annotation; True if the stored data changed."""
        row = _row(annotation, task)
        project_id = str(project_id)

        def work(conn: Connection) -> bool:
            changed = _apply(conn, project_id, row)
            if changed:
                _bump(conn, project_id)
            conn.execute("DELETE FROM rejected WHERE project_id=? AND annotation_id=? AND NOT EXISTS "
                         "(SELECT 1 FROM deleted WHERE project_id=? AND annotation_id=?)",
                         (project_id, row["annotation_id"], project_id, row["annotation_id"]))
            return changed

        return self._write(work)

    def reject(self, project_id: str, annotation_id: int, task_id: Optional[int], reason: str) -> None:
        """Quarantine a malformed annotation: kept out of training, listed with its reason. A
        stored version of it is removed (its newer form replaced it in Label Studio)."""
        project_id = str(project_id)
        annotation_id = _record_id(annotation_id, "annotation")
        task_id = None if task_id is None else _record_id(task_id, "task")
        reason = _plain_text(reason[:MAX_REASON_CHARS])
        received = int(datetime.now(timezone.utc).timestamp() * 1_000_000)

        def work(conn: Connection) -> None:
            conn.execute("INSERT INTO rejected VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, annotation_id) "
                         "DO UPDATE SET task_id=excluded.task_id, reason=excluded.reason, "
                         "received_us=excluded.received_us", (project_id, annotation_id, task_id, reason, received))
            if conn.execute("DELETE FROM annotations WHERE project_id=? AND annotation_id=?",
                            (project_id, annotation_id)).rowcount:
                _bump(conn, project_id)

        self._write(work)

    def rejected(self, project_id: str, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """(how many of the project's annotations are quarantined, the latest with their reasons)."""
        def query(conn: Connection) -> tuple[int, list]:
            count = conn.execute("SELECT COUNT(*) FROM rejected WHERE project_id=?", (str(project_id),)).fetchone()[0]
            rows = conn.execute("SELECT annotation_id, task_id, reason, received_us FROM rejected WHERE project_id=? "
                                "ORDER BY received_us DESC LIMIT ?", (str(project_id), limit)).fetchall()
            return count, rows

        count, rows = self._read(query)
        return count, [{"annotation": a, "task": t, "reason": r, "received_at": us / 1e6} for a, t, r, us in rows]

    def add_cluster_correction(self, project_id: str, cluster_id: str, version: str, task_ids: Iterable[int]) -> bool:
        """Record an evidence cluster marked irrelevant (its tasks' evidence is a shortcut); True if
        it was not recorded yet. A change to training data: the project's revision moves."""
        project_id, cluster_id, version = str(project_id), _plain_text(str(cluster_id)), _plain_text(str(version))
        ids = json.dumps(sorted({_record_id(int(i), "task") for i in task_ids}))
        created = int(datetime.now(timezone.utc).timestamp() * 1_000_000)

        def work(conn: Connection) -> bool:
            added = conn.execute("INSERT INTO cluster_corrections VALUES (?, ?, ?, ?, ?) "
                                 "ON CONFLICT (project_id, cluster_id) DO NOTHING RETURNING 1",
                                 (project_id, cluster_id, version, ids, created)).fetchone() is not None
            if added:
                _bump(conn, project_id)
            return added

        return self._write(work)

    def remove_cluster_correction(self, project_id: str, cluster_id: str) -> bool:
        """Undo a cluster correction; True if there was one."""
        project_id = str(project_id)

        def work(conn: Connection) -> bool:
            removed = conn.execute("DELETE FROM cluster_corrections WHERE project_id=? AND cluster_id=?",
                                   (project_id, str(cluster_id))).rowcount > 0
            if removed:
                _bump(conn, project_id)
            return removed

        return self._write(work)

    def cluster_corrections(self, project_id: str) -> list[dict[str, Any]]:
        """The project's cluster corrections, oldest first: cluster id, version, task ids, time."""
        rows = self._read(lambda conn: conn.execute(
            "SELECT cluster_id, version, task_ids, created_us FROM cluster_corrections WHERE project_id=? "
            "ORDER BY created_us, cluster_id", (str(project_id),)).fetchall())
        return [{"cluster": c, "version": v, "task_ids": json.loads(t), "created_at": us / 1e6}
                for c, v, t, us in rows]

    def delete(self, project_id: str, annotation_ids: Iterable[int]) -> int:
        """Delete annotations by id (remembering the ids); returns how many were stored."""
        project_id = str(project_id)
        ids = [_record_id(int(i), "annotation") for i in annotation_ids]

        def work(conn: Connection) -> int:
            removed = 0
            for annotation_id in ids:
                removed += conn.execute(
                    "DELETE FROM annotations WHERE project_id=? AND annotation_id=?", (project_id, annotation_id)
                ).rowcount
                conn.execute("INSERT INTO deleted VALUES (?, ?) ON CONFLICT DO NOTHING", (project_id, annotation_id))
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

        def work(conn: Connection) -> dict[str, int]:
            counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0}
            keep = {row["annotation_id"] for row in rows}
            stored = [
                r[0] for r in conn.execute("SELECT annotation_id FROM annotations WHERE project_id=?",
                                           (project_id,)).fetchall()
            ]
            stored_ids = set(stored)
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
                if not _apply(conn, project_id, row):
                    counts["unchanged"] += 1
                else:
                    counts["added" if row["annotation_id"] not in stored_ids else "updated"] += 1
            if counts["added"] or counts["updated"] or counts["removed"]:
                _bump(conn, project_id)
            return counts

        return self._write(work)

    # -- reads -----------------------------------------------------------------------

    def get(self, project_id: str, annotation_id: int) -> Optional[Pair]:
        """(annotation, task) for one annotation id, or None."""
        key = (str(project_id), _record_id(int(annotation_id), "annotation"))
        row = self._read(lambda conn: conn.execute(
            "SELECT annotation, task FROM annotations WHERE project_id=? AND annotation_id=?", key).fetchone())
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def list(self, project_id: str) -> list[Pair]:
        """Every (annotation, task) of the project, ordered by task id then annotation id."""
        rows = self._read(lambda conn: conn.execute(
            "SELECT annotation, task FROM annotations WHERE project_id=? ORDER BY task_id, annotation_id",
            (str(project_id),)).fetchall())
        return [(json.loads(a), json.loads(t)) for a, t in rows]

    def count(self, project_id: str) -> int:
        return self._read(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM annotations WHERE project_id=?", (str(project_id),)).fetchone()[0])

    def has_at_least(self, project_id: str, n: int) -> bool:
        """Whether the project holds ``n`` annotations or more: reads n rows at most, where ``count``
        reads them all (every webhook asks this)."""
        if n <= 0:
            return True
        return self._read(lambda conn: conn.execute(
            "SELECT 1 FROM annotations WHERE project_id=? LIMIT 1 OFFSET ?", (str(project_id), n - 1)).fetchone()
        ) is not None

    def revisions(self) -> dict[str, int]:
        """Every project's revision."""
        return dict(self._read(lambda conn: conn.execute("SELECT project_id, revision FROM revisions").fetchall()))

    def revision(self, project_id: str) -> int:
        """Monotonic counter, bumped by every change to the project's annotations (0 = none yet)."""
        row = self._read(lambda conn: conn.execute(
            "SELECT revision FROM revisions WHERE project_id=?", (str(project_id),)).fetchone())
        return row[0] if row else 0


def _row(annotation: dict, task: dict) -> dict[str, Any]:
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise ValueError("annotation and task must be JSON objects")
    annotation_id = annotation.get("id")
    if not isinstance(annotation_id, int) or isinstance(annotation_id, bool):
        raise ValueError(f"annotation needs an integer 'id', got {_shown(annotation_id)}")
    task_id = task.get("id", annotation.get("task"))
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError(f"task needs an integer 'id' (or the annotation a 'task'), got {_shown(task_id)}")
    annotation, task = _without_project_object(annotation), _without_project_object(task)
    return {
        "annotation_id": _record_id(annotation_id, "annotation"),
        "task_id": _record_id(task_id, "task"),
        "updated_us": _timestamp_us(annotation.get("updated_at")),
        "annotation": _canonical(annotation, "annotation"),
        "task": _canonical(task, "task"),
    }


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _record_id(value: int, what: str) -> int:
    """``value`` if a 64-bit integer column holds it; ValueError otherwise."""
    if not -MAX_ID - 1 <= value <= MAX_ID:
        raise ValueError(f"{what} id {_shown(value)} does not fit a 64-bit integer")
    return value


def _plain_text(text: str) -> str:
    """``text`` as both engines store it: no NUL (PostgreSQL refuses it), no lone surrogate."""
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


def _without_project_object(obj: dict) -> dict:
    project = obj.get("project")
    if isinstance(project, dict):
        obj = {**obj, "project": project.get("id")}
    return obj


def _canonical(obj: dict, what: str) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds text that is not valid UTF-8 (a lone surrogate)") from None
    return text


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


def _apply(conn: Connection, project_id: str, row: dict) -> bool:
    """Insert, or replace by the updated_at rule, unless the annotation was deleted; True if
    the stored row changed. One statement: a webhook's write is a few round trips, not seven."""
    changed = conn.execute(
        "INSERT INTO annotations (task_id, updated_us, annotation, task, project_id, annotation_id) "
        "SELECT CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), "
        "CAST(? AS BIGINT) WHERE NOT EXISTS (SELECT 1 FROM deleted WHERE project_id=? AND annotation_id=?) "
        "ON CONFLICT (project_id, annotation_id) DO UPDATE SET task_id=excluded.task_id, "
        "updated_us=excluded.updated_us, annotation=excluded.annotation, task=excluded.task "
        # a repeated or stale delivery, or the same content, changes nothing
        "WHERE (annotations.updated_us IS NULL OR excluded.updated_us IS NULL "
        "OR excluded.updated_us > annotations.updated_us) "
        "AND (annotations.annotation <> excluded.annotation OR annotations.task <> excluded.task) "
        "RETURNING 1",
        (row["task_id"], row["updated_us"], row["annotation"], row["task"], project_id, row["annotation_id"],
         project_id, row["annotation_id"]),
    ).fetchone()
    return changed is not None


def _bump(conn: Connection, project_id: str) -> None:
    conn.execute(
        "INSERT INTO revisions VALUES (?, 1) ON CONFLICT (project_id) DO UPDATE SET revision = revisions.revision + 1",
        (project_id,),
    )
