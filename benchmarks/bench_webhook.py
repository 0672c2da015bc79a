"""Benchmark (not a test): webhook acknowledgement latency under 100 concurrent deliveries.

The real server (``ml-backend serve`` with its defaults: granian, one worker process of 8 app
threads, MODEL_DIR in a temporary directory) receives ANNOTATION_CREATED webhooks shaped like Label Studio 1.23.2's (contract
§2.3: annotation, task and the full project object, distinct annotation ids, text tasks with a
Choices label and an "Irrelevant" span) from a pool of 100 sender threads on loopback, each
delivery on a new connection like Label Studio's ``requests.post``. Bounded by a count and a
time limit. Latency is client-side (send to full response); the server-side view comes from
the backend's own Prometheus histogram (time inside Flask, without the HTTP server's queueing).

Scenarios:
- embedded queue, training running: the project holds PRIME annotations and has trained once;
  with no debounce, training jobs (child processes of the serving process, JOB_NICE below it)
  run back to back while the deliveries go on, and the share of the run they covered is reported;
- embedded queue, no training (XIL_MIN_ANNOTATIONS above the count): the persist path alone;
- Redis (RQ): ``redis-server`` started here (no persistence), jobs go to RQ with no worker
  running, so only the enqueue cost is in the serving process.

    .venv/bin/python -m benchmarks.bench_webhook [--quick] [--count N] [--no-redis]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from benchmarks import _common as C
from benchmarks.machine import describe, markdown

NAME = "bench_webhook"
PROJECT = 3
PRIME = 200  # annotations the project holds before the deliveries of the training scenario
AIMS = ["Webhook acknowledgement p99 < 100 ms under 100 concurrent deliveries (Label Studio's own webhook "
        "timeout is 1 s)."]


def _result(i: int, text: str) -> list[dict]:
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+", text)]
    start, end = words[i % len(words)]
    return [
        {"id": f"c{i}", "from_name": "label", "to_name": "text", "type": "choices", "origin": "manual",
         "value": {"choices": ["Positive" if i % 2 else "Negative"]}},
        {"id": f"s{i}", "from_name": "evidence", "to_name": "text", "type": "labels", "origin": "manual",
         "value": {"start": start, "end": end, "text": text[start:end], "labels": ["Irrelevant"]}},
    ]


def bodies(count: int, first_id: int, label_config: str) -> list[bytes]:
    out = []
    for k in range(count):
        i = first_id + k
        text = C.TEXTS[i % len(C.TEXTS)] + f" (review {i})"
        out.append(json.dumps(C.annotation_webhook(i, 100000 + i, PROJECT, label_config, {"text": text},
                                                   _result(i, text))).encode())
    return out


def deliver(url: str, payloads: list[bytes], concurrency: int, time_limit: float) -> dict[str, Any]:
    """POST every payload from ``concurrency`` threads; stop starting new ones after ``time_limit``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.perf_counter() + time_limit
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    skipped = 0

    def send(body: bytes) -> None:
        nonlocal skipped
        if time.perf_counter() > deadline:
            with lock:
                skipped += 1
            return
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request("POST", "/webhook", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = str(response.status)
            conn.close()
        except OSError as exc:
            status = type(exc).__name__
        dt = time.perf_counter() - t0
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                latencies.append(dt)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sender") as pool:
        list(pool.map(send, payloads))
    wall = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "skipped_time_limit": skipped, "wall_s": wall}


def server_histogram(url: str, route: str = "/webhook") -> dict[str, Any]:
    """The backend's own request-latency histogram for ``route`` (Prometheus text format)."""
    status, text = C.http_json("GET", url + "/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    buckets: dict[float, float] = {}
    total_sum = count = 0.0
    for line in text.splitlines():
        if not line.startswith("ml_backend_request_seconds") or f'route="{route}"' not in line \
                or 'status="200"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("ml_backend_request_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float("inf") if le == "+Inf" else float(le)] = value
        elif line.startswith("ml_backend_request_seconds_sum"):
            total_sum = value
        elif line.startswith("ml_backend_request_seconds_count"):
            count = value
    if not count:
        return {}
    under_100ms = buckets.get(0.1, 0.0) / count

    def bound(q: float) -> float:
        for le in sorted(buckets):
            if buckets[le] >= q * count:
                return le * 1000
        return float("inf")

    return {"count": count, "mean_ms": total_sum / count * 1000, "share_under_100ms": under_100ms,
            "p50_bucket_ms": bound(0.5), "p99_bucket_ms": bound(0.99)}


def train_jobs(url: str) -> list[dict[str, Any]]:
    """The bench project's training jobs, from /status."""
    status, body = C.http_json("GET", url + "/status")
    if status != 200 or not isinstance(body, dict):
        return []
    return [job for project in body.get("projects") or [] if str(project.get("project")) == str(PROJECT)
            for job in project.get("jobs") or [] if job.get("kind") == "train"]


def wait_trained(url: str, timeout: float = 300.0) -> None:
    """Until a training job of the bench project has finished: the job processes are warm."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(job.get("status") == "finished" for job in train_jobs(url)):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no training job finished within {timeout:.0f} s")


def training_share(url: str, start: float, end: float) -> float:
    """Share of [start, end] during which a training job of the bench project was running."""
    spans = sorted((job["started_at"], job.get("ended_at") or end) for job in train_jobs(url) if job.get("started_at"))
    covered, reached = 0.0, start
    for a, b in spans:
        a, b = max(a, reached), min(b, end)
        if b > a:
            covered += b - a
            reached = b
    return covered / (end - start) if end > start else 0.0


def fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.splitlines()[-1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def scenario(name: str, env: dict[str, str], tmp: Path, payloads: list[bytes], args: argparse.Namespace,
             label_config: str, training: bool = False) -> dict[str, Any]:
    """``training``: the project already holds PRIME annotations and has trained once (the job
    processes are warm); the deliveries start, and training jobs run back to back meanwhile."""
    log = tmp / f"server-{len(os.listdir(tmp))}.log"
    share = None
    with C.Server(env, log, cpus=args.server_cpus) as server:
        status, answer = C.http_json("POST", server.url + "/setup", C.setup_body(PROJECT, label_config))
        if status != 200:
            raise RuntimeError(f"/setup answered {status}: {answer}")
        warm = bodies(PRIME if training else 5, 10**6, label_config)  # first requests import and open the store
        deliver(server.url, warm, 5, 60)
        if training:
            wait_trained(server.url)
        start = time.time()
        out = deliver(server.url, payloads, args.concurrency, args.time_limit)
        if training:
            share = training_share(server.url, start, time.time())
        hist = server_histogram(server.url)
        worker = server.worker_pids()
        hwm = C.vm_kib(worker[0], "VmHWM") / 1024 if worker else None
    s = C.summary_ms(out["latencies"])
    sent = len(payloads) - out["skipped_time_limit"]
    print(f"  {name}: {sent} sent, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, statuses {out['statuses']}"
          + (f", training ran {share:.0%} of the time" if share is not None else ""), flush=True)
    return {"scenario": name, **s, "sent": sent, "statuses": out["statuses"], "training_share": share,
            "skipped_time_limit": out["skipped_time_limit"], "wall_s": out["wall_s"],
            "throughput_per_s": sent / out["wall_s"] if out["wall_s"] else None, "server": hist,
            "worker_peak_mib": hwm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer deliveries (about 1-2 minutes)")
    parser.add_argument("--device", default="cpu", help="DEVICE for the server's in-process training")
    parser.add_argument("--count", type=int, help="deliveries per scenario (default 400 quick / 3000 full)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--time-limit", type=float, help="seconds per scenario (default 40 quick / 180 full)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis scenario")
    parser.add_argument("--only", help="run the scenarios whose name holds this text")
    parser.add_argument("--tmp", type=Path, help="parent directory of MODEL_DIR (default: the system's temp dir)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not give the server CPU 0 and the senders the other CPUs (taskset)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpus = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        args.server_cpus = str(cpus[0])
        os.sched_setaffinity(0, set(cpus[1:]))  # the 100 sender threads: every CPU but the server's
    args.count = args.count or (400 if args.quick else 3000)
    args.time_limit = args.time_limit or (40.0 if args.quick else 180.0)
    label_config = (C.LABEL_CONFIGS / "text_classification_evidence.xml").read_text()
    started = time.time()
    runs = []
    if args.tmp:
        os.environ["TMPDIR"] = str(args.tmp)
    import tempfile

    tempfile.tempdir = None
    base = {"DEVICE": args.device, "LOG_LEVEL": "INFO"}
    with C.temp_dir("bench-webhook-") as tmp:
        fs = fs_type(tmp)
        plans: list[tuple[str, dict[str, str], Optional[bool]]] = [
            # no debounce: a training job starts as soon as the last one ends, for the whole run
            ("embedded queue, training running", {"TRAIN_DEBOUNCE_SECONDS": "0"}, None),
            ("embedded queue, no training (persist only)", {"XIL_MIN_ANNOTATIONS": str(10**6)}, None),
        ]
        if not args.no_redis:
            plans.append(("Redis (RQ), no worker: enqueue only", {}, True))
        plans = [plan for plan in plans if not args.only or args.only in plan[0]]
        for k, (name, extra, redis) in enumerate(plans):
            model_dir = tmp / f"models-{k}"
            payloads = bodies(args.count, 1 + k * 10**5, label_config)
            env = {**base, **extra, "MODEL_DIR": str(model_dir)}
            if redis:
                try:
                    with C.RedisServer(tmp / "redis.log") as rs:
                        runs.append(scenario(name, {**env, "REDIS_URL": rs.url}, tmp, payloads, args, label_config))
                except FileNotFoundError:
                    print("  redis-server not found: Redis scenario skipped", flush=True)
            else:
                runs.append(scenario(name, env, tmp, payloads, args, label_config, training=name.startswith("embedded queue, training")))
    # only now: describe() imports torch, whose threads in this process (the senders') added 30 ms
    # to the client-side p99 while training ran (65 -> 97 ms, same server)
    machine = describe("cpu")
    rows = [[r["scenario"], r["sent"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"], r["throughput_per_s"],
             (r["server"] or {}).get("mean_ms"), (r["server"] or {}).get("p99_bucket_ms"),
             (r["server"] or {}).get("share_under_100ms"),
             "-" if r.get("training_share") is None else f"{r['training_share']:.0%} of the run",
             ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))] for r in runs]
    tables = [{
        "title": f"ANNOTATION_CREATED acknowledgement, {args.concurrency} concurrent senders (ms)",
        "caption": f"Client-side latency per delivery (new TCP connection each, loopback), {args.count} deliveries per "
                   f"scenario at most, {args.time_limit:.0f} s at most; MODEL_DIR on {fs}. 'server' columns: the "
                   "backend's Prometheus histogram for /webhook (time inside the app, no queueing in the HTTP server; p99 is "
                   "the upper edge of its bucket). `ml-backend serve` defaults: granian, 1 worker, 8 threads. "
                   + (f"CPUs: the server (and its training process) on CPU {args.server_cpus}, the senders on the "
                      "others (taskset)." if args.server_cpus is not None else "CPUs: shared by the server and the "
                      "senders."),
        "markdown": C.md_table(["scenario", "delivered", "p50", "p95", "p99", "max", "deliveries/s", "server mean",
                                "server p99 (bucket)", "server share <= 100 ms", "training ran", "HTTP statuses"],
                               rows, "l" + "r" * 10 + "l")}]
    notes = [f"Aim p99 < 100 ms: " + "; ".join(f"{r['scenario']}: p99 {r['p99_ms']:.0f} ms "
                                                 f"({'meets' if r['p99_ms'] < 100 else 'misses'})" for r in runs),
             "Training runs in a child process of the serving process (JOBS_IN_SUBPROCESS, the default) at "
             "JOB_NICE (19) below it, so it takes the CPU the server leaves and never holds its interpreter lock.",
             "The senders' process imports torch (describe()) only after the runs: torch's threads in it had added "
             "about 30 ms to the client-side p99 of earlier runs.",
             f"Run took {time.time() - started:.0f} s; {'--quick: preliminary' if args.quick else 'full run'}."]
    C.print_report("Webhook acknowledgement latency", markdown(machine), tables, notes)
    path = C.write_results(NAME, {"name": NAME, "title": "Webhook acknowledgement under 100 concurrent deliveries",
                                  "command": C.command_line(), "quick": args.quick, "machine": machine, "aims": AIMS,
                                  "tables": tables, "notes": notes, "data": {"runs": runs, "fs": fs},
                                  "seconds": time.time() - started})
    print(f"\nresults: {path.relative_to(C.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
