"""Model versions on disk: atomic publish, load the current one, list, roll back.

Layout under MODEL_DIR::

    projects/<project>/project.json          label config + extra params from /setup
    projects/<project>/versions/v3/model.pt  checkpoint (kind, config, classes, state_dict)
    projects/<project>/versions/v3/meta.json metrics and provenance
    projects/<project>/CURRENT               the serving version's name (replaced atomically)

Every serving process reads CURRENT on each request (one small read), so a version
published by a worker on another machine is served without a restart.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ml_backend.models import build_model

_VERSION = re.compile(r"^v(\d+)$")


class RegistryError(Exception):
    """A version or checkpoint cannot be found or used."""


@dataclass
class LoadedModel:
    version: str
    model: nn.Module
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def _write_atomic(path: Path, data: bytes) -> None:
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


def checkpoint_dict(model: nn.Module, classes: tuple[str, ...]) -> dict[str, Any]:
    return {"kind": model.kind, "config": dict(model.config), "classes": list(classes),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    try:
        model = build_model(checkpoint["kind"], **checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise RegistryError(f"checkpoint does not fit its model: {exc}") from None
    return model.eval()


def read_weights(path: Path) -> Any:
    """torch.load with weights_only: a user's file can hold tensors, never code to run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RegistryError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise RegistryError(f"cannot read checkpoint {path}: {exc}") from None


def is_checkpoint(value: Any) -> bool:
    return isinstance(value, dict) and {"kind", "config", "state_dict"} <= set(value)


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint written by this backend."""
    checkpoint = read_weights(path)
    if not is_checkpoint(checkpoint):
        raise RegistryError(f"{path} is not an ml_backend checkpoint (needs kind, config, classes, state_dict)")
    return checkpoint


class ProjectRegistry:
    """The versions of one project's model."""

    def __init__(self, model_dir: Path, project: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", project):
            raise RegistryError(f"invalid project id {project!r}")
        self.project = project
        self.root = Path(model_dir) / "projects" / project
        self.versions_dir = self.root / "versions"

    # project state from /setup -------------------------------------------------
    def save_project(self, state: dict[str, Any]) -> None:
        _write_atomic(self.root / "project.json", json.dumps(state, sort_keys=True).encode())

    def load_project(self) -> Optional[dict[str, Any]]:
        try:
            return json.loads((self.root / "project.json").read_text())
        except FileNotFoundError:
            return None

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

    def publish(self, model: nn.Module, classes: tuple[str, ...], meta: dict[str, Any]) -> str:
        """Write a new version and make it current; returns its name."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=".staging-"))
        try:
            torch.save(checkpoint_dict(model, classes), staging / "model.pt")
            numbers = [v["number"] for v in self.list()]
            number = max(numbers, default=0) + 1
            while True:
                name = f"v{number}"
                meta = {**meta, "version": name, "created_at": time.time(), "classes": list(classes),
                        "kind": model.kind}
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
        if not (self.versions_dir / version / "model.pt").exists():
            raise RegistryError(f"project {self.project} has no version {version!r}")
        _write_atomic(self.root / "CURRENT", version.encode())

    def rollback(self, version: Optional[str] = None) -> str:
        """Serve ``version``, or the one before the current one."""
        if version is None:
            names = [v["version"] for v in self.list()]
            current = self.current()
            if current not in names or names.index(current) == 0:
                raise RegistryError(f"project {self.project} has no earlier version to roll back to")
            version = names[names.index(current) - 1]
        self.set_current(version)
        return version

    def load(self, version: str) -> LoadedModel:
        checkpoint = load_checkpoint_file(self.versions_dir / version / "model.pt")
        return LoadedModel(version, model_from_checkpoint(checkpoint), tuple(checkpoint["classes"]), self.meta(version))


def all_versions(model_dir: Path) -> dict[str, list[dict[str, Any]]]:
    root = Path(model_dir) / "projects"
    if not root.is_dir():
        return {}
    return {p.name: ProjectRegistry(model_dir, p.name).list() for p in sorted(root.iterdir()) if p.is_dir()}
