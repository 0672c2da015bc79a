"""The feature cache shared by processes (serving processes, workers on other hosts, one volume):
concurrent writers and evictors never give a reader a torn or wrong entry, and what a killed
writer leaves behind is cleaned up."""
from __future__ import annotations

import multiprocessing
import os
import time

import torch

from ml_backend.models.feature_cache import TMP_STALE_S, FeatureCache


def _entry(i: int) -> dict[str, torch.Tensor]:
    return {"pooled": torch.full((256,), float(i))}


def _churn(root: str, seed: int, rounds: int, errors) -> None:
    cache = FeatureCache(root, max_mb=0.05, memory_mb=0)  # about 40 entries: eviction runs all the time
    for n in range(rounds):
        i = (seed * 7 + n) % 120
        cache.put("ns", f"{i:040d}", _entry(i))
        j = (seed * 13 + n * 3) % 120
        got = FeatureCache(root, max_mb=0.05, memory_mb=0).get("ns", f"{j:040d}")
        if got is not None and not torch.equal(got["pooled"], _entry(j)["pooled"]):
            errors.put(f"key {j} read back wrong")


def test_writers_and_evictors_in_several_processes_never_tear_an_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    workers = [context.Process(target=_churn, args=(str(tmp_path), seed, 300, errors)) for seed in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert errors.empty()
    cache = FeatureCache(tmp_path, max_mb=0.05)
    cache.evict()
    assert cache.disk_bytes() <= 0.05 * 2**20


def test_eviction_removes_temporary_files_a_killed_writer_left(tmp_path):
    cache = FeatureCache(tmp_path, max_mb=1)
    cache.put("ns", "ab" + "0" * 38, _entry(1))
    old = tmp_path / "ns" / "ab" / ".tmp-killed"
    old.write_bytes(b"x" * 100)
    fresh = tmp_path / "ns" / "ab" / ".tmp-writing"
    fresh.write_bytes(b"x" * 100)
    past = time.time() - TMP_STALE_S - 10
    os.utime(old, (past, past))
    cache.evict()
    assert not old.exists() and fresh.exists()  # a live writer's file stays
    assert cache.get("ns", "ab" + "0" * 38) is not None
