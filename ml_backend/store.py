"""The project store: the one owner of MODEL_DIR's layout. Every file has one writer, here.

Layout under MODEL_DIR::

    feedback.sqlite3                          annotations of every project (feedback.store; with
                                              DATABASE_URL they are in PostgreSQL instead)
    projects/<project>/project.json           label config + extra params (from /setup and webhooks)
    projects/<project>/versions/v3/model.pt   checkpoint (kind, config, classes, state_dict)
    projects/<project>/versions/v3/donors.pt  a few image training inputs (the counterfactual's fill)
    projects/<project>/versions/v3/meta.json  metrics and provenance
    projects/<project>/CURRENT                the serving version's directory, "v3" (replaced atomically)
    projects/<project>/queue.json             the last ranking of unlabeled tasks
    projects/<project>/pushed.json            predictions pushed to Label Studio (what is there already)
    projects/<project>/train.lock             one training job per project across serving processes
    projects/<project>/rank.lock              one ranking job per project across serving processes
                                              (both file locks: embedded queue, one host; with
                                              REDIS_URL the locks are Redis keys, see jobs.queue)
    projects/<project>/features/<backbone>/   per-task features of a frozen backbone (models.feature_cache)

Every serving process reads CURRENT on each request (one small read), so a version
published by a worker on another machine is served without a restart.

Version names. On disk a version is ``v<N>``, per project. Everywhere else (/setup, /predict,
/versions, the predictions the ranking job pushes, Label Studio's project ``model_version``) it
is named with its project, ``p<project>-v<N>`` (``<key>-v<N>`` for a non-numeric key): Label
Studio asks ``GET /versions`` with no project, so a bare ``v3`` would not say whose it is.
Methods that take a version accept either form of the project's own versions, so ``v3`` still
names it (checkpoints and CURRENT files written before the rename load unchanged).
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ml_backend.config import Settings, path_problem
from ml_backend.feedback.store import AnnotationStore
from ml_backend.models import CheckpointError, from_checkpoint, load_checkpoint_file
from ml_backend.models.base import ModelKind
from ml_backend.models.feature_cache import FeatureCache

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d+)$")  # a version's directory (and, before project-named versions, its name)
_PROJECT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = re.compile(r"[1-9]\d{0,17}")


class StoreError(Exception):
    """A project, version or checkpoint cannot be found or used."""


@dataclass
class LoadedModel:
    version: str
    model: ModelKind
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    # a few training inputs (M, *input shape) of every class: what the interactive counterfactual
    # fills a removed region with, as the counterexamples strategy does in training
    donors: Optional[torch.Tensor] = None


def version_prefix(project: str) -> str:
    """What a project's version names start with: "p3" for Label Studio's project 3."""
    return f"p{project}" if project.isdigit() else project


def version_name(project: str, number: int) -> str:
    """The public name of a project's version ``number``: "p3-v2"."""
    return f"{version_prefix(project)}-v{int(number)}"


def version_number(project: str, name: Any) -> Optional[int]:
    """The number of ``name`` if it names one of ``project``'s versions ("p3-v2" or the legacy
    "v2"); None for anything else, another project's versions included."""
    if not isinstance(name, str) or len(name) > 200:
        return None
    prefix, sep, number = name.rpartition("-v")
    if not sep:  # the legacy name
        prefix, number = (version_prefix(project), name[1:]) if name.startswith("v") else ("", "")
    if prefix != version_prefix(project) or not _NUMBER.fullmatch(number):
        return None
    return int(number)


def annotation_store_path(model_dir: Path) -> Path:
    """The SQLite annotation store under MODEL_DIR (the store when DATABASE_URL is unset)."""
    return Path(model_dir) / "feedback.sqlite3"


_ANNOTATION_STORES: dict[str, AnnotationStore] = {}
_ANNOTATION_STORES_LOCK = threading.Lock()


def open_annotation_store(settings: Settings) -> AnnotationStore:
    """The annotation store ``settings`` name: PostgreSQL with DATABASE_URL, else the SQLite file
    under MODEL_DIR. One per database in a process (its connections, pool and group commit are shared)."""
    target: Path | str = settings.database_url or annotation_store_path(settings.model_dir).resolve()
    key = str(target)
    with _ANNOTATION_STORES_LOCK:
        store = _ANNOTATION_STORES.get(key)
        if store is None:
            store = _ANNOTATION_STORES[key] = AnnotationStore(target)
        return store


def allowed_path(name: str, model_dir: Path, weights_dirs: tuple[str, ...], what: str) -> Path:
    """A user-named file or directory: relative to MODEL_DIR, or absolute under MODEL_DIR or one of
    WEIGHTS_DIRS. Anything else is a StoreError that says the same whether or not it exists."""
    problem = path_problem(name) if isinstance(name, str) else "is not a string"
    if problem:
        raise StoreError(f"{what} {problem}")
    roots = [Path(model_dir).resolve(), *(Path(d).resolve() for d in weights_dirs)]
    try:
        path = Path(name)
        path = (path if path.is_absolute() else roots[0] / path).resolve()
    except (OSError, ValueError, RuntimeError):  # a name too long under MODEL_DIR, a symlink loop
        raise StoreError(f"{what} must be under MODEL_DIR or a directory listed in WEIGHTS_DIRS") from None
    if not any(path == root or root in path.parents for root in roots):
        raise StoreError(f"{what} must be under MODEL_DIR or a directory listed in WEIGHTS_DIRS")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(directory: Path) -> None:
    """fsync every file of ``directory`` and the directory itself."""
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    _sync_dir(directory)


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class _ConfigCache:
    """Parsed project.json files, keyed by what a stat tells (a write replaces the file, so its
    inode changes): every webhook reads its project's config, and reading and parsing it was a
    tenth of a webhook's CPU. Bounded in bytes; a larger file is read each time."""

    MAX_BYTES = 16 * 2**20
    MAX_FILE_BYTES = 2**20

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[int, int, int], int, dict[str, Any]]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, path: Path) -> dict[str, Any]:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return {}
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None and entry[0] == key:
            return copy.deepcopy(entry[2])
        value = _read_json(path) or {}
        if stat.st_size <= self.MAX_FILE_BYTES:
            with self._lock:
                old = self._entries.pop(path, None)
                self._bytes -= old[1] if old else 0
                while self._entries and self._bytes + stat.st_size > self.MAX_BYTES:
                    self._bytes -= self._entries.pop(next(iter(self._entries)))[1]
                self._entries[path] = (key, stat.st_size, copy.deepcopy(value))
                self._bytes += stat.st_size
        return value


_CONFIGS = _ConfigCache()


class ProjectStore:
    """One project's state on disk: config, model versions, ranking, pushed ledger, locks."""

    def __init__(self, model_dir: Path, project: str) -> None:
        if not _PROJECT.fullmatch(project):
            raise StoreError(f"invalid project id {project[:80]!r}")
        self.model_dir = Path(model_dir)
        self.project = project
        self.root = self.model_dir / "projects" / project
        self.versions_dir = self.root / "versions"

    # config: label config and extra params -----------------------------------------
    def config(self) -> dict[str, Any]:
        return _CONFIGS.read(self.root / "project.json")

    def update_config(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into project.json (written only when something changed); the new state."""
        state = self.config()
        if {k: state.get(k) for k in fields} != fields:
            state = {**state, **fields}
            write_atomic(self.root / "project.json", json.dumps(state, sort_keys=True).encode())
        return state

    # ranking and what Label Studio already has ----------------------------------------
    def ranking(self) -> Optional[dict[str, Any]]:
        return _read_json(self.root / "queue.json")

    def save_ranking(self, ranking: dict[str, Any]) -> bool:
        """Write the ranking unless a newer version than the one it ranked serves now (a slow
        ranking of an older version must not overwrite the newer one's); whether it was written."""
        if self.superseded(ranking.get("model_version")):
            log.info("project %s: ranking of %s not saved: %s serves now", self.project,
                     ranking.get("model_version"), self.current())
            return False
        write_atomic(self.root / "queue.json", json.dumps(ranking).encode())
        return True

    def superseded(self, version: Any) -> bool:
        """Whether a newer version than ``version`` serves now (a rollback to an older one is not)."""
        number, current = version_number(self.project, version), self.current()
        return number is not None and current is not None and version_number(self.project, current) > number

    # evidence clusters, per version ------------------------------------------------------
    CLUSTER_VERSIONS_KEPT = 3

    def clusters(self, version: Optional[str] = None) -> Optional[dict[str, Any]]:
        """A version's evidence clusters (default: the serving version's), or None."""
        version = version or self.current()
        if not version or not version_number(self.project, version):
            return None
        return _read_json(self.root / "clusters" / f"{version}.json")

    def save_clusters(self, payload: dict[str, Any]) -> None:
        """Write a version's clusters whole (readers never see half a file); keep the newest few."""
        directory = self.root / "clusters"
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / f"{payload['version']}.json", json.dumps(payload).encode())
        kept = sorted(directory.glob("*.json"), key=lambda p: version_number(self.project, p.stem) or 0)
        for old in kept[:-self.CLUSTER_VERSIONS_KEPT]:
            old.unlink(missing_ok=True)

    def review(self) -> Optional[dict[str, Any]]:
        """The tasks a project manager sent to annotators (a cluster's), first in the next ranking."""
        return _read_json(self.root / "review.json")

    def save_review(self, review: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "review.json", json.dumps(review).encode())

    def pushed(self) -> dict[str, Any]:
        return _read_json(self.root / "pushed.json") or {}

    def save_pushed(self, ledger: dict[str, Any]) -> None:
        write_atomic(self.root / "pushed.json", json.dumps(ledger).encode())

    # locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def job_lock(self, kind: str = "train") -> Iterator[None]:
        """Exclusive per ``kind`` ("train", "rank") across processes on this machine (several serving
        processes without Redis). An flock: not to be relied on over a network volume, so with
        REDIS_URL the job locks are Redis keys instead."""
        path = self.root / f"{kind}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # feature cache ------------------------------------------------------------------
    def feature_cache(self, max_mb: float) -> Optional[FeatureCache]:
        """The project's cache of frozen-backbone features, at most ``max_mb`` on disk (0: none)."""
        return FeatureCache.at(self.root / "features", max_mb) if max_mb > 0 else None

    # versions --------------------------------------------------------------------
    def name(self, number: int) -> str:
        return version_name(self.project, number)

    def number(self, version: Any) -> int:
        """The number of one of this project's versions, named either way; StoreError otherwise."""
        number = version_number(self.project, version)
        if number is None or not (self.versions_dir / f"v{number}" / "model.pt").exists():
            raise StoreError(f"project {self.project} has no version {str(version)[:80]!r}")
        return number

    def current(self) -> Optional[str]:
        """The serving version's public name ("p3-v2"), or None."""
        try:
            stored = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        number = version_number(self.project, stored)
        return self.name(number) if number is not None else None

    def list(self) -> list[dict[str, Any]]:
        """Versions, oldest first, each with its meta and whether it serves."""
        if not self.versions_dir.is_dir():
            return []
        current = self.current()
        out = []
        for path in self.versions_dir.iterdir():
            match = _VERSION.match(path.name)
            if match and (path / "model.pt").exists():
                number = int(match.group(1))
                name = self.name(number)
                out.append({**self.meta(name), "version": name, "number": number, "current": name == current})
        return sorted(out, key=lambda v: v["number"])

    def meta(self, version: str) -> dict[str, Any]:
        number = version_number(self.project, version)
        if number is None:
            return {}
        try:
            meta = json.loads((self.versions_dir / f"v{number}" / "meta.json").read_text())
        except FileNotFoundError:
            return {}
        return {**meta, "version": self.name(number)}  # meta of an older release says "v3"

    def publish(self, model: ModelKind, classes: tuple[str, ...], meta: dict[str, Any],
                donors: Optional[torch.Tensor] = None) -> str:
        """Write a new version (with its ``donors``, a few training inputs, when given) and make it
        current; returns its name."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=".staging-"))
        try:
            torch.save({**model.checkpoint(classes), "multi_label": model.multi_label}, staging / "model.pt")
            if donors is not None and len(donors):
                # half precision: a fill needs no more, and a 224 px bank stays a few MB
                stored = donors.detach().cpu()
                torch.save(stored.half() if stored.is_floating_point() else stored, staging / "donors.pt")
            numbers = [v["number"] for v in self.list()]
            number = max(numbers, default=0) + 1
            while True:
                name = self.name(number)
                meta = {**meta, "version": name, "created_at": time.time(), "classes": list(classes),
                        "kind": model.name}
                (staging / "meta.json").write_text(json.dumps(meta, sort_keys=True, default=float))
                _sync_files(staging)  # on disk before the rename shows them: a crash leaves no empty model.pt
                try:  # fails if another publisher took the number (a directory rename never replaces a full one)
                    os.rename(staging, self.versions_dir / f"v{number}")
                    break
                except OSError:
                    number += 1
            _sync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # publishers of one project are serialised by the train lock; should two ever overlap, the
        # older version still never replaces a newer one in CURRENT
        if not self.superseded(name):
            self.set_current(name)
        return name

    def set_current(self, version: str) -> None:
        """Serve one of this project's own versions ("p3-v2" or "v2", never a path)."""
        # CURRENT keeps the directory name: processes of an older release read it too
        write_atomic(self.root / "CURRENT", f"v{self.number(version)}".encode())

    def rollback(self, version: Optional[str] = None) -> str:
        """Serve ``version``, or the one before the current one; returns its public name."""
        if version is None:
            names = [v["version"] for v in self.list()]
            current = self.current()
            if current not in names or names.index(current) == 0:
                raise StoreError(f"project {self.project} has no earlier version to roll back to")
            version = names[names.index(current) - 1]
        self.set_current(version)
        return self.name(self.number(version))

    def load(self, version: str, feature_cache_mb: float = 0, donors: bool = True) -> LoadedModel:
        """A version's model, reading a frozen backbone's features from the project's cache
        (``feature_cache_mb``: its size; 0, no cache); ``donors``: with its donor bank (only the
        serving process's counterfactual uses it)."""
        number = self.number(version)
        try:
            checkpoint = load_checkpoint_file(self.versions_dir / f"v{number}" / "model.pt")
            model = from_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise StoreError(str(exc)) from None
        model.use_feature_cache(self.feature_cache(feature_cache_mb))
        name = self.name(number)
        return LoadedModel(name, model, tuple(checkpoint["classes"]), self.meta(name),
                           self._donors(self.versions_dir / f"v{number}" / "donors.pt") if donors else None)

    @staticmethod
    def _donors(path: Path) -> Optional[torch.Tensor]:
        """A version's donor inputs; None for a version without them (or one that cannot be read:
        the counterfactual then fills with random values, as before donors were stored)."""
        try:
            donors = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged file must not keep the version from serving
            log.warning("%s unreadable (%s): the counterfactual fills with random values", path, exc)
            return None
        return donors.float() if isinstance(donors, torch.Tensor) and donors.is_floating_point() else None


def project_ids(model_dir: Path) -> list[str]:
    """Every project with state under MODEL_DIR."""
    root = Path(model_dir) / "projects"
    if not root.is_dir():
        return []
    return [p.name for p in sorted(root.iterdir()) if p.is_dir() and _PROJECT.fullmatch(p.name)]


def all_versions(model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {project: ProjectStore(model_dir, project).list() for project in project_ids(model_dir)}
