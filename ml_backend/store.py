"""The project store: the one owner of MODEL_DIR's layout. Every file has one writer, here.

Layout under MODEL_DIR::

    feedback.sqlite3                          annotations of every project (feedback.store)
    projects/<project>/project.json           label config + extra params (from /setup and webhooks)
    projects/<project>/versions/v3/model.pt   checkpoint (kind, config, classes, state_dict)
    projects/<project>/versions/v3/meta.json  metrics and provenance
    projects/<project>/CURRENT                the serving version's name (replaced atomically)
    projects/<project>/queue.json             the last ranking of unlabeled tasks
    projects/<project>/pushed.json            predictions pushed to Label Studio (what is there already)
    projects/<project>/train.lock             one training job per project across serving processes
    projects/<project>/features/<backbone>/   per-task features of a frozen backbone (models.feature_cache)

Every serving process reads CURRENT on each request (one small read), so a version
published by a worker on another machine is served without a restart.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ml_backend.models import CheckpointError, from_checkpoint, load_checkpoint_file
from ml_backend.models.base import ModelKind
from ml_backend.models.feature_cache import FeatureCache

_VERSION = re.compile(r"^v(\d+)$")
_PROJECT = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StoreError(Exception):
    """A project, version or checkpoint cannot be found or used."""


@dataclass
class LoadedModel:
    version: str
    model: ModelKind
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def annotation_store_path(model_dir: Path) -> Path:
    return Path(model_dir) / "feedback.sqlite3"


def allowed_path(name: str, model_dir: Path, weights_dirs: tuple[str, ...], what: str) -> Path:
    """A user-named file or directory: relative to MODEL_DIR, or absolute under MODEL_DIR or one of
    WEIGHTS_DIRS. Anything else is a StoreError that says the same whether or not it exists."""
    roots = [Path(model_dir).resolve(), *(Path(d).resolve() for d in weights_dirs)]
    path = Path(name)
    path = (path if path.is_absolute() else roots[0] / path).resolve()
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


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


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
        return _read_json(self.root / "project.json") or {}

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

    def save_ranking(self, ranking: dict[str, Any]) -> None:
        write_atomic(self.root / "queue.json", json.dumps(ranking).encode())

    def pushed(self) -> dict[str, Any]:
        return _read_json(self.root / "pushed.json") or {}

    def save_pushed(self, ledger: dict[str, Any]) -> None:
        write_atomic(self.root / "pushed.json", json.dumps(ledger).encode())

    # locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def train_lock(self) -> Iterator[None]:
        """Exclusive across processes on this machine (several serving processes without Redis)."""
        path = self.root / "train.lock"
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
    def current(self) -> Optional[str]:
        try:
            name = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def list(self) -> list[dict[str, Any]]:
        """Versions, oldest first, each with its meta and whether it serves."""
        if not self.versions_dir.is_dir():
            return []
        current = self.current()
        out = []
        for path in self.versions_dir.iterdir():
            match = _VERSION.match(path.name)
            if match and (path / "model.pt").exists():
                meta = self.meta(path.name)
                out.append({"version": path.name, "number": int(match.group(1)),
                            "current": path.name == current, **meta})
        return sorted(out, key=lambda v: v["number"])

    def meta(self, version: str) -> dict[str, Any]:
        try:
            return json.loads((self.versions_dir / version / "meta.json").read_text())
        except FileNotFoundError:
            return {}

    def publish(self, model: ModelKind, classes: tuple[str, ...], meta: dict[str, Any]) -> str:
        """Write a new version and make it current; returns its name."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=".staging-"))
        try:
            torch.save(model.checkpoint(classes), staging / "model.pt")
            numbers = [v["number"] for v in self.list()]
            number = max(numbers, default=0) + 1
            while True:
                name = f"v{number}"
                meta = {**meta, "version": name, "created_at": time.time(), "classes": list(classes),
                        "kind": model.name}
                (staging / "meta.json").write_text(json.dumps(meta, sort_keys=True, default=float))
                try:
                    os.rename(staging, self.versions_dir / name)  # fails if another publisher took the name
                    break
                except OSError:
                    number += 1
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.set_current(name)
        return name

    def set_current(self, version: str) -> None:
        """Serve one of this project's own versions (a name like v3, never a path)."""
        if not (isinstance(version, str) and _VERSION.fullmatch(version)
                and (self.versions_dir / version / "model.pt").exists()):
            raise StoreError(f"project {self.project} has no version {str(version)[:80]!r}")
        write_atomic(self.root / "CURRENT", version.encode())

    def rollback(self, version: Optional[str] = None) -> str:
        """Serve ``version``, or the one before the current one."""
        if version is None:
            names = [v["version"] for v in self.list()]
            current = self.current()
            if current not in names or names.index(current) == 0:
                raise StoreError(f"project {self.project} has no earlier version to roll back to")
            version = names[names.index(current) - 1]
        self.set_current(version)
        return version

    def load(self, version: str, feature_cache_mb: float = 0) -> LoadedModel:
        """A version's model, reading a frozen backbone's features from the project's cache
        (``feature_cache_mb``: its size; 0, no cache)."""
        if not (isinstance(version, str) and _VERSION.fullmatch(version)):
            raise StoreError(f"project {self.project} has no version {version[:80]!r}")
        try:
            checkpoint = load_checkpoint_file(self.versions_dir / version / "model.pt")
            model = from_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise StoreError(str(exc)) from None
        model.use_feature_cache(self.feature_cache(feature_cache_mb))
        return LoadedModel(version, model, tuple(checkpoint["classes"]), self.meta(version))


def project_ids(model_dir: Path) -> list[str]:
    """Every project with state under MODEL_DIR."""
    root = Path(model_dir) / "projects"
    if not root.is_dir():
        return []
    return [p.name for p in sorted(root.iterdir()) if p.is_dir() and _PROJECT.fullmatch(p.name)]


def all_versions(model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {project: ProjectStore(model_dir, project).list() for project in project_ids(model_dir)}
