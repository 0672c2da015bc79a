"""Connections for the annotation store: SQLite or PostgreSQL behind one small interface.

The store (``feedback.store``) writes its SQL once, in the spelling both engines accept (``?``
placeholders, ``INSERT ... ON CONFLICT``). A ``Database`` is what differs: how a connection is
had, how a write transaction begins so that it excludes every other writer, the name of a 64-bit
integer column, how a table is looked up, and which errors mean the connection was lost (so the
transaction may run again on a new one).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

from ml_backend.config import database_url_problem

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0  # how long an operation waits for the database (a lock, a connection, a restart)
POOL_MAX_SIZE = 10  # PostgreSQL connections per process: one writer at a time, the rest read
# pg_advisory_xact_lock key that serialises the store's write transactions across processes and hosts
# (as BEGIN IMMEDIATE does in SQLite): the updated_at rule reads before it writes
WRITE_LOCK_KEY = int.from_bytes(b"xilannot", "big")


class DatabaseError(RuntimeError):
    """The annotation store's database cannot be opened or used (the message names it, never a password)."""


class Connection(Protocol):
    """A DB-API-like connection: ``execute`` with ``?`` placeholders returns a cursor."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


class Database(ABC):
    """What differs between SQL engines. Subclasses: SqliteDatabase, PostgresDatabase."""

    bigint = "INTEGER"  # a 64-bit integer column

    @abstractmethod
    def connection(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection in autocommit mode for the length of the block."""
        ...

    @abstractmethod
    def begin_write(self, conn: Connection) -> None:
        """Begin a transaction that no other writer runs beside (in any process)."""
        ...

    @abstractmethod
    def in_transaction(self, conn: Connection) -> bool:
        ...

    @abstractmethod
    def has_table(self, conn: Connection, name: str) -> bool:
        ...

    def lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection (or the server) went away: nothing of the transaction
        was kept, and it may run again on a new connection."""
        return False

    def recover(self) -> None:
        """After a lost connection: drop the others that went with it."""

    def close(self) -> None:
        """Close this process's connections; the database opens new ones when used again."""

    @abstractmethod
    def describe(self) -> str:
        """What and where, for messages (never a password)."""
        ...


class SqliteDatabase(Database):
    """A SQLite file (WAL, synchronous=FULL): one connection per thread, and per process after a fork."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wal = False

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=FULL")  # per connection: an acknowledged commit is on disk
            if not self._wal:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
                self._wal = True
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    def begin_write(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks

    def in_transaction(self, conn: Connection) -> bool:
        return conn.in_transaction  # type: ignore[attr-defined]

    def has_table(self, conn: Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # opened by another thread; it goes with that thread
                pass
        self._local = threading.local()

    def describe(self) -> str:
        return f"SQLite file {self.path}"


class _PostgresConnection:
    """A psycopg connection that takes the store's ``?`` placeholders."""

    __slots__ = ("raw",)
    _translated: dict[str, str] = {}

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not params:
            return self.raw.execute(sql)
        query = self._translated.get(sql)
        if query is None:  # the store's SQL has no literal '?' or '%'
            query = self._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return self.raw.execute(query, params)


class PostgresDatabase(Database):
    """A PostgreSQL database through a psycopg connection pool, one pool per process."""

    bigint = "BIGINT"

    def __init__(self, url: str) -> None:
        import psycopg.conninfo

        self.url = url
        self._where = describe_url(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:  # libpq's message can quote the URL, and with it the password
            raise DatabaseError(f"DATABASE_URL is not a PostgreSQL URL libpq can read ({self._where})") from None
        self._pool_: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _pool(self) -> Any:
        pool = self._pool_
        if pool is not None and self._pid == os.getpid():
            return pool
        from psycopg_pool import ConnectionPool

        with self._lock:
            if self._pid != os.getpid():
                # A forked child shares the parent's sockets: closing the inherited pool would end the
                # parent's sessions. It is dropped (psycopg finishes no connection of another process).
                self._pool_, self._pid = None, os.getpid()
            if self._pool_ is None:
                self._pool_ = ConnectionPool(self.url, min_size=1, max_size=POOL_MAX_SIZE, open=True,
                                             kwargs={"autocommit": True}, configure=_configure,
                                             timeout=BUSY_TIMEOUT_S, name="annotation-store")
            return self._pool_

    @contextlib.contextmanager
    def connection(self) -> Iterator[_PostgresConnection]:
        with self._pool().connection() as raw:
            yield _PostgresConnection(raw)

    def begin_write(self, conn: Connection) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))

    def in_transaction(self, conn: Connection) -> bool:
        from psycopg.pq import TransactionStatus

        return conn.raw.info.transaction_status != TransactionStatus.IDLE  # type: ignore[attr-defined]

    def has_table(self, conn: Connection, name: str) -> bool:
        return conn.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]

    def lost(self, exc: BaseException) -> bool:
        import psycopg

        # OperationalError: the connection or server went away (also the pool's PoolTimeout, and a
        # rolled-back transaction's serialization failure): the whole transaction can run again
        return isinstance(exc, psycopg.OperationalError)

    def recover(self) -> None:
        pool = self._pool_
        if pool is not None and self._pid == os.getpid():
            pool.check()  # after a server restart every idle connection is dead: replace them at once

    def close(self) -> None:
        with self._lock:
            pool, self._pool_ = self._pool_, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def describe(self) -> str:
        return f"PostgreSQL at {self._where}"


def _configure(conn: Any) -> None:
    # as SQLite's synchronous=FULL: a commit returns once it is durable, whatever the server's default
    conn.execute("SET synchronous_commit TO on")


def describe_url(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL, for messages: no user, password or query."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port
    except ValueError:
        return "an unreadable URL"
    return f"{host}{f':{port}' if port else ''}{parts.path or '/'}"


def open_database(target: Path | str) -> Database:
    """PostgreSQL for a postgresql:// URL, else the SQLite file at ``target``."""
    if isinstance(target, str) and "://" in target:
        problem = database_url_problem(target)
        if problem:
            raise DatabaseError(f"DATABASE_URL {problem}")
        return PostgresDatabase(target)
    return SqliteDatabase(Path(target))
