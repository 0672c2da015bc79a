"""Benchmark (not a test): last annotation -> served version for N annotated tasks on a frozen
ResNet-18-size backbone with the feature cache (bench_backbones (b)'s cached row), split in two:

- ``to_served_s``: from the job's start to the moment the new version is published (the evidence
  clusters run after that), plus loading it as /predict does: what an annotator waits for;
- ``job_s``: the whole job, clusters included (without Label Studio the training job clusters the
  labelled tasks itself): how long the project's next training waits.

The version before (N - 1 annotations) is trained untimed, with the clusters off, to fill the cache;
its in-memory entries are dropped before the timed job, as a new worker process starts without them.
One torch thread. Run it at two commits, each in its own worktree, to compare them.

    .venv/bin/python -m benchmarks.bench_served [--tasks 1000]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from benchmarks.machine import describe

NAME = "bench_served"


def served(tasks: int) -> dict[str, Any]:
    from benchmarks import bench_backbones as B
    from ml_backend.jobs import train as J
    from ml_backend.project import project_context
    from ml_backend.serving import Predictor
    from ml_backend.store import ProjectStore, open_annotation_store

    label_config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
    published: dict[str, float] = {}
    clusters = J.publish_clusters

    def timed_clusters(*args: Any, **kwargs: Any) -> Any:  # called right after publishing
        published["at"] = time.perf_counter()
        return clusters(*args, **kwargs)

    J.publish_clusters = timed_clusters
    try:
        with tempfile.TemporaryDirectory(prefix="served-") as tmp:
            dirs = B.save_backbones(Path(tmp))
            settings = B.model_settings(Path(tmp) / "cached", str(dirs[B.RESNET]), 2048, Path(tmp))
            quiet = dataclasses.replace(settings, project=dataclasses.replace(settings.project, evidence_clusters=False))
            store = ProjectStore(settings.model_dir, B.PROJECT)
            store.update_config(label_config=label_config, extra_params={})
            annotations = open_annotation_store(settings)
            for i in range(tasks - 1):
                B.annotate(annotations, label_config, i)
            t0 = time.perf_counter()
            J.train_project(quiet, B.PROJECT)
            before = time.perf_counter() - t0
            store.feature_cache(settings.project.feature_cache_mb).forget_memory()
            B.annotate(annotations, label_config, tasks - 1)
            t0 = time.perf_counter()
            result = J.train_project(settings, B.PROJECT)
            job = time.perf_counter() - t0
            t1 = time.perf_counter()
            loaded = Predictor(settings).model(project_context(settings, B.PROJECT))
            load = time.perf_counter() - t1
            assert loaded is not None and loaded.version == result["version"], (result, loaded)
            meta = store.meta(result["version"])
    finally:
        J.publish_clusters = clusters
    return {"tasks": tasks, "to_served_s": round(published["at"] - t0 + load, 2), "job_s": round(job + load, 2),
            "fit_s": meta["train_seconds"], "previous_version_s": round(before, 1),
            "train_accuracy": meta["metrics"]["train_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    machine = describe("cpu")
    row = served(args.tasks)
    print(row)
    C.write_results(NAME, {"name": NAME, "command": C.command_line(), "machine": machine, "rows": [row]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
