"""Benchmark (not a test): the annotation store on SQLite and on PostgreSQL, side by side.

For each store (the SQLite file under MODEL_DIR, and a throwaway PostgreSQL server started here,
``DATABASE_URL``), in one run:

- webhook acknowledgement under 100 concurrent deliveries: ``ml-backend serve`` with its defaults
  (bench_webhook's senders, payloads and server pinning), persist only (XIL_MIN_ANNOTATIONS above
  the count), so the store's write path is what is measured;
- the training job's annotation read for 100,000 annotations of one project: what ``train_project``
  calls (``revision`` then ``list``), timed in this process, several times;
- ``GET /status`` with 100 projects, each with a published version and 100 annotations.

    .venv/bin/python -m benchmarks.bench_store [--quick] [--count N] [--annotations N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import _common as C
from benchmarks import bench_webhook as W
from benchmarks.machine import describe, markdown

NAME = "bench_store"
READ_PROJECT = "900"
STATUS_PROJECTS = 100
AIMS = ["Webhook acknowledgement p99 <= 100 ms under 100 concurrent deliveries, on SQLite and on PostgreSQL.",
        "The training job's annotation read for 100,000 annotations, and /status with 100 projects, on both."]


def _pair(project: str, i: int) -> tuple[dict, dict]:
    text = C.TEXTS[i % len(C.TEXTS)] + f" (review {i})"
    body = C.annotation_webhook(i, 10**6 + i, int(project), "", {"text": text}, W._result(i, text))
    return body["annotation"], {k: v for k, v in body["task"].items() if k != "annotations"}


def fill(store: Any, project: str, n: int) -> float:
    """``n`` annotations into ``project`` in one replace (what a resync does); its seconds."""
    t0 = time.perf_counter()
    store.replace_all(project, (_pair(project, i) for i in range(1, n + 1)))
    return time.perf_counter() - t0


def read_scenario(store: Any, n: int, repeats: int) -> dict[str, Any]:
    filled = fill(store, READ_PROJECT, n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        store.revision(READ_PROJECT)
        pairs = store.list(READ_PROJECT)
        times.append(time.perf_counter() - t0)
        assert len(pairs) == n, len(pairs)
    return {"annotations": n, "fill_s": filled, "read_s_min": min(times), "read_s_median": sorted(times)[len(times) // 2],
            "read_s_max": max(times), "repeats": repeats}


def prepare_status(settings: Any, store: Any, label_config: str) -> None:
    """100 projects, each with a config, a published (tiny) version and 100 annotations."""
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.store import ProjectStore

    model = adapt(ImageCNN(2, image_size=16))  # /status reads versions' meta, not their kind
    for p in range(1, STATUS_PROJECTS + 1):
        project = str(1000 + p)
        projects = ProjectStore(settings.model_dir, project)
        projects.update_config(label_config=label_config, extra_params={})
        projects.publish(model, ("Positive", "Negative"), {"bench": True})
        store.replace_all(project, (_pair(project, p * 1000 + i) for i in range(100)))


def status_scenario(url: str, requests_n: int) -> dict[str, Any]:
    times = []
    for _ in range(requests_n):
        t0 = time.perf_counter()
        status, body = C.http_json("GET", url + "/status")
        times.append(time.perf_counter() - t0)
        assert status == 200 and len(body["projects"]) >= STATUS_PROJECTS, (status, str(body)[:200])
    return {"requests": requests_n, **C.summary_ms(times)}


def run_store(name: str, database_url: str, tmp: Path, args: argparse.Namespace,
              label_config: str) -> dict[str, Any]:
    from ml_backend.config import Settings
    from ml_backend.store import open_annotation_store

    model_dir = tmp / f"models-{name}"
    settings = Settings(model_dir=model_dir, database_url=database_url)
    store = open_annotation_store(settings)
    print(f"  {name}: annotation read of {args.annotations} ...", flush=True)
    read = read_scenario(store, args.annotations, args.repeats)
    print(f"  {name}: read {read['read_s_median']:.2f} s (fill {read['fill_s']:.1f} s)", flush=True)
    prepare_status(settings, store, label_config)
    env = {"MODEL_DIR": str(model_dir), "LOG_LEVEL": "INFO", "XIL_MIN_ANNOTATIONS": str(10**6),
           "DATABASE_URL": database_url}
    env = {k: v for k, v in env.items() if v}
    payloads = W.bodies(args.count, 1, label_config)
    log = tmp / f"server-{name}.log"
    with C.Server(env, log, cpus=args.server_cpus) as server:
        status, answer = C.http_json("POST", server.url + "/setup", C.setup_body(W.PROJECT, label_config))
        if status != 200:
            raise RuntimeError(f"/setup answered {status}: {answer}")
        W.deliver(server.url, W.bodies(20, 10**6, label_config), 5, 60)  # first requests open the store
        out = W.deliver(server.url, payloads, args.concurrency, args.time_limit)
        hist = W.server_histogram(server.url)
        status_run = status_scenario(server.url, args.status_requests)
    ack = C.summary_ms(out["latencies"])
    print(f"  {name}: webhook p50 {ack['p50_ms']:.1f} ms, p99 {ack['p99_ms']:.1f} ms, statuses {out['statuses']}; "
          f"/status p50 {status_run['p50_ms']:.1f} ms", flush=True)
    return {"store": name, "webhook": {**ack, "statuses": out["statuses"], "wall_s": out["wall_s"],
                                       "sent": len(payloads) - out["skipped_time_limit"], "server": hist},
            "read": read, "status": status_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer deliveries and annotations")
    parser.add_argument("--device", default="cpu", help="unused: nothing here trains")
    parser.add_argument("--count", type=int, help="webhook deliveries per store (default 400 quick / 2000 full)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds of deliveries per store at most")
    parser.add_argument("--annotations", type=int, help="annotations read (default 10,000 quick / 100,000 full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--status-requests", type=int, default=30)
    parser.add_argument("--no-pin", action="store_true", help="no taskset: server and senders share the CPUs")
    args = parser.parse_args()
    args.count = args.count or (400 if args.quick else 2000)
    args.annotations = args.annotations or (10_000 if args.quick else 100_000)
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpus = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        args.server_cpus = str(cpus[0])
    label_config = (C.LABEL_CONFIGS / "text_classification_evidence.xml").read_text()
    started = time.time()
    load_at_start = os.getloadavg()[0]
    runs = []
    from tests.support.postgres import PostgresServer

    postgres: Optional[PostgresServer] = None
    with C.temp_dir("bench-store-") as tmp:
        try:
            runs.append(run_store("SQLite", "", tmp, args, label_config))
            postgres = PostgresServer().start()
            runs.append(run_store("PostgreSQL", postgres.new_database(), tmp, args, label_config))
        finally:
            if postgres is not None:
                postgres.stop()
    machine = describe("cpu")
    rows = [[r["store"], r["webhook"]["sent"], r["webhook"]["p50_ms"], r["webhook"]["p99_ms"], r["webhook"]["max_ms"],
             (r["webhook"]["server"] or {}).get("p99_bucket_ms"), r["read"]["read_s_median"], r["read"]["read_s_max"],
             r["read"]["fill_s"], r["status"]["p50_ms"], r["status"]["p99_ms"],
             ", ".join(f"{k}: {v}" for k, v in sorted(r["webhook"]["statuses"].items()))] for r in runs]
    tables = [{
        "title": "The annotation store: SQLite and PostgreSQL",
        "caption": f"Webhooks: {args.count} ANNOTATION_CREATED deliveries per store from {args.concurrency} concurrent "
                   "senders (new connection each, loopback), persist only; client-side ms, 'server p99' from the "
                   "backend's histogram (bucket edge). Read: `revision` + `list` of one project's "
                   f"{args.annotations:,} annotations, seconds (median and worst of {args.repeats}); fill: the same "
                   f"annotations written by one `replace_all`. /status: {args.status_requests} sequential requests with "
                   f"{STATUS_PROJECTS} projects, each with a version and 100 annotations, ms. PostgreSQL "
                   "(Debian's package) runs on the same machine with fsync off (as the tests' server); SQLite's file "
                   "is in a temporary directory. "
                   + (f"The server on CPU {args.server_cpus}, the senders on every CPU (taskset)."
                      if args.server_cpus is not None else ""),
        "markdown": C.md_table(["store", "delivered", "ack p50", "ack p99", "ack max", "server p99", "read (s)",
                                "read worst (s)", "fill (s)", "/status p50", "/status p99", "HTTP statuses"],
                               rows, "l" + "r" * 10 + "l")}]
    notes = ["Aim ack p99 <= 100 ms: " + "; ".join(
                 f"{r['store']}: {r['webhook']['p99_ms']:.0f} ms ({'meets' if r['webhook']['p99_ms'] <= 100 else 'misses'})"
                 for r in runs),
             "PostgreSQL with fsync off measures the protocol and the queries, not a disk's flush; a production "
             "server with fsync on adds its commit latency to each group commit (one per batch of webhooks).",
             f"Run took {time.time() - started:.0f} s; {'--quick: preliminary' if args.quick else 'full run'}."]
    load = max(load_at_start, os.getloadavg()[0])
    if load > len(cpus) / 2:  # other work on the machine: client-side latencies include its queueing
        notes.insert(0, f"Measured on a busy machine (load average {load:.1f} on {len(cpus)} CPUs): "
                        "client-side latencies include waiting for a CPU; re-run on a quiet machine to compare "
                        "with bench_webhook.")
    C.print_report("The annotation store, SQLite and PostgreSQL", markdown(machine), tables, notes)
    path = C.write_results(NAME, {"name": NAME, "title": "The annotation store: SQLite and PostgreSQL side by side",
                                  "command": C.command_line(), "quick": args.quick, "machine": machine, "aims": AIMS,
                                  "tables": tables, "notes": notes, "data": {"runs": runs},
                                  "seconds": time.time() - started})
    print(f"\nresults: {path.relative_to(C.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
