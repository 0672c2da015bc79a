"""The per-task feature cache of frozen backbones: what a backbone computed for an input, kept under
the project's state and read back by training, /predict and ranking instead of a backbone pass.

An entry is a few named tensors (a backbone kind decides which) for one input, keyed by a hash of
the input's values, so the same image or text gives the same entry whatever path it came by, and
a changed input (a counterexample) simply misses. Entries live in namespaces, one per backbone
fingerprint: a namespace whose backbone directory has since changed is dropped when the new one
is claimed. Files (``<namespace>/<ab>/<key>.safetensors``) are shared by every process of the
project; each process keeps the most recent ones in memory too. The files together stay under
``max_mb``: the least recently used go first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

log = logging.getLogger(__name__)

Entry = dict[str, torch.Tensor]

MEMORY_MB = 128  # per process and project; the disk holds the rest
LOW_WATER = 0.9  # eviction frees down to this share of the cap, so it runs once per many writes
SUFFIX = ".safetensors"
TMP_STALE_S = 3600  # a temporary file this old has no writer any more (a killed process left it)


def content_key(x: torch.Tensor) -> str:
    """An input's identity: a hash of its dtype, shape and values (any device or memory layout)."""
    x = x.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}:".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:40]


def _nbytes(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class FeatureCache:
    """Entries by (namespace, key): an LRU in memory over files under ``root``, at most ``max_mb``
    on disk. One instance per directory and process (``at``); thread-safe."""

    _open: dict[Path, "FeatureCache"] = {}
    _open_lock = threading.Lock()

    def __init__(self, root: Path, max_mb: float, memory_mb: float = MEMORY_MB) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_mb * 2**20)
        self.memory_bytes = int(min(max_mb, memory_mb) * 2**20)
        self._memory: OrderedDict[tuple[str, str], tuple[Entry, int]] = OrderedDict()
        self._in_memory = 0
        self._on_disk: Optional[int] = None  # bytes, counted on the first write
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self.counts = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "written": 0, "evicted": 0}

    @classmethod
    def at(cls, root: Path, max_mb: float) -> "FeatureCache":
        """The process's cache of a directory (the cap is updated to ``max_mb``)."""
        root = Path(root).resolve()
        with cls._open_lock:
            cache = cls._open.get(root)
            if cache is None:
                cache = cls._open[root] = cls(root, max_mb)
            else:
                cache.max_bytes = int(max_mb * 2**20)
                cache.memory_bytes = int(min(max_mb, MEMORY_MB) * 2**20)
            return cache

    # namespaces ------------------------------------------------------------------------
    def claim(self, namespace: str, source: str) -> None:
        """Use ``namespace`` for entries computed by ``source`` (a backbone directory); any other
        namespace of the same source is stale (the backbone changed) and is dropped."""
        if namespace in self._claimed:
            return
        directory = self.root / namespace
        directory.mkdir(parents=True, exist_ok=True)
        _write_whole(directory / "source.json", json.dumps({"source": source}).encode())
        for other in self.root.iterdir():
            if other.name == namespace or not other.is_dir():
                continue
            try:
                stale = json.loads((other / "source.json").read_text()).get("source") == source
            except (OSError, ValueError, AttributeError):
                stale = False
            if stale:
                log.info("feature cache %s: %s changed; dropping its old features", self.root, source)
                shutil.rmtree(other, ignore_errors=True)
                with self._lock:
                    for key in [k for k in self._memory if k[0] == other.name]:
                        self._in_memory -= self._memory.pop(key)[1]
                    self._on_disk = None  # recount on the next write
        self._claimed.add(namespace)

    def path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / (key + SUFFIX)

    # entries ---------------------------------------------------------------------------
    def get(self, namespace: str, key: str) -> Optional[Entry]:
        with self._lock:
            found = self._memory.get((namespace, key))
            if found is not None:
                self._memory.move_to_end((namespace, key))
                self.counts["memory_hits"] += 1
        path = self.path(namespace, key)
        if found is not None:
            _touch(path)  # the files' modification times are the LRU order across processes
            return found[0]
        try:
            entry = load_file(path)
            _touch(path)
        except (OSError, ValueError, RuntimeError, SafetensorError):  # absent, evicted meanwhile, or damaged
            with self._lock:
                self.counts["misses"] += 1
            return None
        with self._lock:
            self.counts["disk_hits"] += 1
            self._remember(namespace, key, entry)
        return entry

    def put(self, namespace: str, key: str, entry: Entry) -> None:
        entry = {name: t.detach().to("cpu").contiguous() for name, t in entry.items()}
        data = save(entry)
        with self._lock:
            self._remember(namespace, key, entry)
        if len(data) > self.max_bytes * LOW_WATER:
            return
        path = self.path(namespace, key)
        try:
            _write_whole(path, data)
            _touch(path)
        except OSError as exc:
            log.warning("feature cache %s: cannot write an entry (%s)", self.root, exc)
            return
        with self._lock:
            self.counts["written"] += 1
            if self._on_disk is None:
                self._on_disk = self._scan_size()
            else:
                self._on_disk += len(data)
            over = self._on_disk > self.max_bytes
        if over:
            self.evict()

    def lookup(self, namespace: str, x: torch.Tensor, compute: Callable[[torch.Tensor], Entry],
               need: Sequence[str], store: bool = True) -> Optional[Entry]:
        """The ``need``ed tensors of each row of ``x``, stacked, on ``x``'s device: from the cache,
        and the rows that miss computed together (``compute`` on those rows) and, if ``store``,
        stored. None when ``compute`` gives some row no tensor of a needed name."""
        keys = [content_key(row) for row in x.detach().to("cpu").contiguous()]
        entries = [self.get(namespace, key) for key in keys]
        missing = [i for i, e in enumerate(entries) if e is None or any(n not in e for n in need)]
        if missing:
            computed = compute(x[missing])
            for j, i in enumerate(missing):
                entries[i] = {name: t[j].clone() for name, t in computed.items()}
                if store:
                    self.put(namespace, keys[i], entries[i])
        if any(n not in e for e in entries for n in need):
            return None
        return {n: torch.stack([e[n] for e in entries]).to(x.device) for n in need}

    def forget_memory(self) -> None:
        """Drop the in-memory entries (what a new process starts with); the files stay."""
        with self._lock:
            self._memory.clear()
            self._in_memory = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def disk_bytes(self) -> int:
        return self._scan_size()

    # bounds ----------------------------------------------------------------------------
    def _remember(self, namespace: str, key: str, entry: Entry) -> None:
        """Into the memory LRU (the caller holds the lock)."""
        size = _nbytes(entry)
        if size > self.memory_bytes:
            return
        old = self._memory.pop((namespace, key), None)
        if old is not None:
            self._in_memory -= old[1]
        self._memory[(namespace, key)] = (entry, size)
        self._in_memory += size
        while self._in_memory > self.memory_bytes:
            self._in_memory -= self._memory.popitem(last=False)[1][1]

    def _files(self) -> list[tuple[int, int, Path]]:
        """(modification time, size, path) of every entry file."""
        out = []
        for path in self.root.glob(f"*/*/*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((stat.st_mtime_ns, stat.st_size, path))
        return out

    def _scan_size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def evict(self) -> None:
        """Remove the least recently used files until the rest fit under the cap (with room to spare),
        and temporary files a killed writer left behind. Safe with other processes evicting or
        writing meanwhile: a file already gone is skipped, and a reader of a removed file misses."""
        stale = time.time() - TMP_STALE_S
        for tmp in [*self.root.glob("*/.tmp-*"), *self.root.glob("*/*/.tmp-*")]:
            try:
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
            except OSError:
                continue
        files = sorted(self._files(), key=lambda f: f[0])
        total = sum(size for _, size, _ in files)
        target = self.max_bytes * LOW_WATER
        removed = 0
        for _, size, path in files:
            if total <= target:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
        with self._lock:
            self._on_disk = total
            self.counts["evicted"] += removed


def _write_whole(path: Path, data: bytes) -> None:
    """Readers (any process) see the whole file or none; no fsync: it is a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _touch(path: Path) -> None:
    """Mark a file used now (the clock's own resolution: file systems stamp in coarse ticks)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass
