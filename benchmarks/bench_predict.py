"""Benchmark (not a test): /predict latency per image and per text, for every attribution method.

Three parts, all with the project's real code:

1. **Stage breakdown, in process** (one task at a time): decode + resize (data: URI -> tensor),
   forward (the model kind's ``probs``, what serving runs without evidence), attribution
   (the kind's ``relevance``, a pass of its own), evidence (``evidence_regions``: mask and regions), RLE encode
   (``brush_result``), and the whole ``rendering.render_predictions``, what /predict runs (the served evidence fused
   with the forward pass). The overhead ratio
   is (attribution + evidence + RLE) / forward, all p50 of the same model in the same run.
2. **End to end over HTTP**: ``ml-backend serve`` (granian, the production command) with a
   published model, one task per POST /predict (data: URI PNG), client-side p50/p95 latency,
   and as a ratio to the in-process bare forward p50 of part 1. Plus batches of 16 for the
   default method (latency / 16).
3. **Peak memory**: a fresh server per row; VmHWM of its worker process after one warm-up
   task and after one /predict of 64 tasks at 224x224.

Image size = the original (task) image's side; model input = the side the backend resizes
it to (the model's ``image_size``, default ``XIL_IMAGE_SIZE`` = 64). Rows read "224 -> 64".
Weights are random (seeded): latency does not depend on them.

    .venv/bin/python -m benchmarks.bench_predict [--quick] [--device cuda] [--methods gradcam saliency]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks import _common as C
from benchmarks.machine import describe, markdown

NAME = "bench_predict"
METHODS = ("gradcam", "saliency", "input_x_gradient", "integrated_gradients", "deeplift")
DEFAULT_METHOD = "gradcam"
IMAGE_CASES = ((64, 64), (224, 64), (512, 64), (224, 224))  # (original side, model input side)
PROJECT_FOR_INPUT = {64: "64", 224: "224"}
TEXT_PROJECT = "7"
AIMS = [
    "Default method (gradcam): attribution + evidence regions + RLE at most 1.5x the bare forward pass "
    "at 224x224 (rows 224 -> 224 and 224 -> 64 of the stage breakdown).",
    "Report p50 and p95 /predict latency per image (64, 224, 512) and per text, for each method, and peak "
    "memory of the serving process for a batch of 64.",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


_CPU: dict[str, float] = {}  # stage -> process CPU seconds of the latest _timed call


def _timed(fn: Callable[[], Any], device: torch.device, stage: str = "") -> tuple[Any, float]:
    """(result, wall seconds); the process CPU seconds go to _CPU[stage] (robust to load from other
    processes on shared cores, though it counts OpenMP spin-waiting)."""
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync(device)
    wall = time.perf_counter() - t0
    if stage:
        _CPU[stage] = time.process_time() - c0
    return out, wall


def _with_cpu(walls: dict[str, float]) -> dict[str, float]:
    out = dict(walls)
    for stage in walls:
        if stage in _CPU:
            out["cpu_" + stage] = _CPU[stage]
    _CPU.clear()
    return out


# --- part 1: stages in process ------------------------------------------------------------

def _image_model(model_side: int, device: torch.device):
    from ml_backend.models.cnn import ImageCNN

    from ml_backend.models import adapt

    torch.manual_seed(0)
    model = adapt(ImageCNN(n_classes=2, image_size=model_side)).to(device)
    model.network.eval()
    return model


def _text_model(device: torch.device):
    from ml_backend.models.text import TextCNN

    from ml_backend.models import adapt

    torch.manual_seed(0)
    model = adapt(TextCNN(n_classes=2)).to(device)
    model.network.eval()
    return model


def _context(config_path: Path, method: str):
    from ml_backend.config import Settings
    from ml_backend.project import make_context

    settings = Settings().project.with_overrides({"attribution": method})
    return make_context("bench", config_path.read_text(), settings)


def image_stages(orig: int, model_side: int, method: str, device: torch.device) -> Callable[[], dict[str, float]]:
    from ml_backend.config import Settings
    from ml_backend.data.fetch import Fetcher
    from ml_backend.explain.regions import evidence_regions
    from ml_backend.labelstudio.results import brush_result, choices_result
    from ml_backend.data.prepare import prepare_task
    from ml_backend.rendering import render_predictions
    from ml_backend.store import LoadedModel

    ctx = _context(C.LABEL_CONFIGS / "image_classification_evidence.xml", method)
    model = _image_model(model_side, device)
    loaded = LoadedModel("v1", model, ctx.schema.classes)
    fetcher = Fetcher(Settings())
    task = C.ls_task(1, {"image": C.data_uri(C.sample_image(orig))})
    s = ctx.settings

    def step() -> dict[str, float]:
        item, t_decode = _timed(lambda: prepare_task(ctx.schema, model, task, fetcher), device,
                                "decode_resize")
        x = torch.stack([item.tensor]).to(device).contiguous(memory_format=torch.channels_last)
        (confidence, targets), t_forward = _timed(lambda: model.probs(x).max(dim=1), device, "forward")
        relevance, t_attr = _timed(lambda: model.relevance(x, targets, s.attribution).detach().cpu().numpy(),
                                   device, "attribution")

        def regions():
            return evidence_regions(relevance[0], s.evidence_mass, s.evidence_regions, out_shape=item.image_size,
                                    slic_image=item.image, slic_segments=s.slic_segments)

        found, t_regions = _timed(regions, device, "regions")
        t0 = time.perf_counter()
        result = [choices_result(ctx.schema, ctx.schema.classes[int(targets[0])], float(confidence[0]))]
        result += [brush_result(ctx.schema, region, score, f"evidence-0-{k}") for k, (region, score) in enumerate(found)]
        t_rle = time.perf_counter() - t0
        t0 = time.perf_counter()
        json.dumps({"results": [{"model_version": "v1", "score": float(confidence[0]), "result": result}]})
        t_json = time.perf_counter() - t0
        _, t_render = _timed(lambda: render_predictions(ctx, loaded, [item]), device, "render_predictions")
        return _with_cpu({"decode_resize": t_decode, "forward": t_forward, "attribution": t_attr,
                          "regions": t_regions, "rle": t_rle, "json": t_json, "render_predictions": t_render})

    return step


def text_stages(method: str, device: torch.device) -> Callable[[], dict[str, float]]:
    from ml_backend.data.fetch import Fetcher
    from ml_backend.config import Settings
    from ml_backend.explain.regions import token_spans
    from ml_backend.labelstudio.results import choices_result, span_result
    from ml_backend.data.prepare import prepare_task
    from ml_backend.rendering import render_predictions
    from ml_backend.store import LoadedModel

    ctx = _context(C.LABEL_CONFIGS / "text_classification_evidence.xml", method)
    model = _text_model(device)
    loaded = LoadedModel("v1", model, ctx.schema.classes)
    fetcher = Fetcher(Settings())
    task = C.ls_task(1, {"text": C.TEXTS[0]})
    s = ctx.settings

    def step() -> dict[str, float]:
        item, t_decode = _timed(lambda: prepare_task(ctx.schema, model, task, fetcher), device,
                                "decode_resize")
        x = torch.stack([item.tensor]).to(device)
        (confidence, targets), t_forward = _timed(lambda: model.probs(x).max(dim=1), device, "forward")
        relevance, t_attr = _timed(lambda: model.relevance(x, targets, s.attribution).detach().cpu().numpy(),
                                   device, "attribution")
        n = min(len(item.tokens), relevance.shape[1])
        spans, t_regions = _timed(lambda: token_spans(relevance[0, :n], item.tokens[:n], s.evidence_mass,
                                                      text=item.text), device, "regions")
        t0 = time.perf_counter()
        result = [choices_result(ctx.schema, ctx.schema.classes[int(targets[0])], float(confidence[0]))]
        result += [span_result(ctx.schema, item.text, a, b, sc, f"evidence-0-{k}") for k, (a, b, sc) in enumerate(spans)]
        t_results = time.perf_counter() - t0
        t0 = time.perf_counter()
        json.dumps({"results": [{"model_version": "v1", "score": float(confidence[0]), "result": result}]})
        t_json = time.perf_counter() - t0
        _, t_render = _timed(lambda: render_predictions(ctx, loaded, [item]), device, "render_predictions")
        return _with_cpu({"decode_resize": t_decode, "forward": t_forward, "attribution": t_attr,
                          "regions": t_regions, "rle": t_results, "json": t_json, "render_predictions": t_render})

    return step


def round_robin(steps: dict[Any, Callable[[], dict[str, float]]], reps: int, budget_s: float,
                min_reps: int = 3) -> dict[Any, dict[str, list[float]]]:
    """One warm-up each, then repetitions taken in turns across all rows, so that a burst of load
    from elsewhere spreads over the rows instead of spoiling one; a row whose time is spent
    (``budget_s`` of its own measured time) drops out after ``min_reps``."""
    out: dict[Any, dict[str, list[float]]] = {key: {} for key in steps}
    spent = {key: 0.0 for key in steps}
    for step in steps.values():
        step()
    for i in range(reps):
        active = [k for k in steps if i < min_reps or spent[k] < budget_s]
        if not active:
            break
        for key in active:
            t0 = time.perf_counter()
            for stage, value in steps[key]().items():
                out[key].setdefault(stage, []).append(value)
            spent[key] += time.perf_counter() - t0
    return out


def _p50(values: list[float]) -> float:
    return C.pct(values, 50) * 1000


def _ratios(t: dict[str, list[float]], prefix: str = "") -> list[float]:
    """Per repetition: (attribution + regions + RLE) / forward (RLE has no CPU entry: wall used)."""
    out = []
    for i in range(len(t["forward"])):
        rle = t["rle"][i]
        overhead = t[prefix + "attribution"][i] + t[prefix + "regions"][i] + rle
        forward = t[prefix + "forward"][i]
        if forward > 0:
            out.append(overhead / forward)
    return out


def stage_rows(stages: dict[tuple[str, str], dict[str, list[float]]]) -> tuple[str, list[dict[str, Any]]]:
    rows, data = [], []
    for (case, method), t in stages.items():
        p = {k: _p50(v) for k, v in t.items()}
        overhead = p["attribution"] + p["regions"] + p["rle"]
        ratio = C.pct(_ratios(t), 50)
        cpu_ratio = C.pct(_ratios(t, "cpu_"), 50) if "cpu_forward" in t else float("nan")
        render_ratio = C.pct([(r - f) / f for r, f in zip(t["render_predictions"], t["forward"]) if f > 0], 50)
        data.append({"case": case, "method": method, "reps": len(t["forward"]),
                     **{f"{k}_p50_ms": v for k, v in p.items()},
                     **{f"{k}_p95_ms": C.pct(v, 95) * 1000 for k, v in t.items()},
                     "overhead_ms": overhead, "overhead_ratio": ratio, "overhead_ratio_cpu": cpu_ratio,
                     "render_overhead_ratio": render_ratio})
        rows.append([case, method, len(t["forward"]), p["decode_resize"], p["forward"], p["attribution"],
                     p["regions"], p["rle"], p["json"], p["render_predictions"], ratio, cpu_ratio, render_ratio])
    headers = ["image -> model input", "method", "reps", "decode+resize", "forward", "attribution",
               "evidence mask+regions", "RLE / results", "JSON", "render_predictions", "overhead / forward",
               "same, CPU time", "(render - forward) / forward"]
    return C.md_table(headers, rows, "ll" + "r" * 11), data


# --- part 2 and 3: the real server -----------------------------------------------------

def publish_models(model_dir: Path) -> None:
    from ml_backend.labelstudio.schema import parse_label_config
    from ml_backend.store import ProjectStore

    image_schema = parse_label_config((C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text())
    text_schema = parse_label_config((C.LABEL_CONFIGS / "text_classification_evidence.xml").read_text())
    for side, key in PROJECT_FOR_INPUT.items():
        ProjectStore(model_dir, key).publish(_image_model(side, torch.device("cpu")), image_schema.classes,
                                             {"source": "benchmark"})
    ProjectStore(model_dir, TEXT_PROJECT).publish(_text_model(torch.device("cpu")), text_schema.classes,
                                                  {"source": "benchmark"})


def predict_body(tasks: list[dict], project: str, label_config: str, method: str) -> bytes:
    return json.dumps({"tasks": tasks, "project": f"{project}.1795343946", "label_config": label_config,
                       "params": {"login": None, "password": None, "context": None,
                                  "extra_params": {"attribution": method}}}).encode()


def post_raw(url: str, body: bytes, timeout: float = 300.0) -> tuple[int, bytes, float]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, raw, time.perf_counter() - t0


def _check(status: int, raw: bytes, n: int, evidence: bool = True) -> None:
    if status != 200:
        raise RuntimeError(f"/predict answered {status}: {raw[:300]!r}")
    results = json.loads(raw)["results"]
    if len(results) != n or results[0]["model_version"] == "untrained":
        raise RuntimeError(f"unexpected /predict answer: {raw[:300]!r}")
    if evidence and not any(r["type"] in ("brushlabels", "labels") for r in results[0]["result"]):
        raise RuntimeError("no evidence region in the /predict answer")


def http_latencies(server: C.Server, cases: list[tuple[str, str, str, list[dict]]], methods: list[str],
                   reps: int, budget_s: float) -> dict[tuple[str, str], list[float]]:
    """cases: (label, project, label_config, [one task]). One task per request, sequential."""
    out: dict[tuple[str, str], list[float]] = {}
    for label, project, config, tasks in cases:
        for method in methods:
            body = predict_body(tasks, project, config, method)
            for _ in range(2):
                status, raw, _ = post_raw(server.url + "/predict", body)
                _check(status, raw, len(tasks))
            times: list[float] = []
            started = time.perf_counter()
            for i in range(reps):
                status, raw, dt = post_raw(server.url + "/predict", body)
                _check(status, raw, len(tasks))
                times.append(dt / len(tasks))
                if i >= 2 and time.perf_counter() - started > budget_s:
                    break
            out[(label, method)] = times
            print(f"  http {label} {method}: p50 {C.pct(times, 50) * 1000:.1f} ms ({len(times)} reps)", flush=True)
    return out


def memory_run(model_dir: Path, log: Path, model_side: int, method: str, device: str, batch: int,
               extra_env: dict[str, str]) -> dict[str, Any]:
    config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
    project = PROJECT_FOR_INPUT[model_side]
    tasks = [C.ls_task(i + 1, {"image": C.data_uri(C.sample_image(224, i))}) for i in range(batch)]
    env = {"MODEL_DIR": str(model_dir), "DEVICE": device, "LOG_LEVEL": "WARNING", **extra_env}
    with C.Server(env, log) as server:
        status, raw, _ = post_raw(server.url + "/predict", predict_body(tasks[:1], project, config, method))
        _check(status, raw, 1)
        worker = server.worker_pids()[0]
        before = C.vm_kib(worker, "VmHWM")
        rss_before = C.vm_kib(worker, "VmRSS")
        status, raw, dt = post_raw(server.url + "/predict", predict_body(tasks, project, config, method))
        _check(status, raw, batch)
        after = C.vm_kib(worker, "VmHWM")
        rss_after = C.vm_kib(worker, "VmRSS")
        master = C.vm_kib(server.proc.pid, "VmHWM")
    return {"model_input": model_side, "method": method, "batch": batch, "hwm_warm_mib": before / 1024,
            "hwm_after_mib": after / 1024, "delta_mib": (after - before) / 1024, "rss_after_mib": rss_after / 1024,
            "rss_warm_mib": rss_before / 1024, "master_hwm_mib": master / 1024, "request_s": dt,
            "per_image_ms": dt / batch * 1000, "response_mib": len(raw) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about 2-3 minutes on 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (in-process stages and the server)")
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--reps", type=int, help="repetitions per row (default 15 quick / 60 full)")
    parser.add_argument("--budget", type=float, help="seconds per row at most (default 4 quick / 20 full)")
    parser.add_argument("--memory-methods", nargs="*", choices=METHODS,
                        help="methods for the batch-64 memory rows (default: gradcam quick / all full)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads in this process")
    args = parser.parse_args()
    C.set_threads(args.threads)
    device_name = C.resolve_device(args.device)
    device = torch.device(device_name)
    reps = args.reps or (10 if args.quick else 60)
    budget = args.budget or (1.5 if args.quick else 12.0)
    memory_methods = args.memory_methods or ([DEFAULT_METHOD] if args.quick else list(METHODS))
    machine = describe(device_name)
    started = time.time()
    server_env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}

    print("stage breakdown ...", flush=True)
    steps: dict[tuple[str, str], Callable[[], dict[str, float]]] = {}
    for orig, side in IMAGE_CASES:
        for method in args.methods:
            steps[(f"{orig} -> {side}", method)] = image_stages(orig, side, method, device)
    for method in args.methods:
        steps[("text (128 tokens)", method)] = text_stages(method, device)
    stages = round_robin(steps, reps, budget)
    stage_md, stage_data = stage_rows(stages)
    forward_p50 = {(d["case"], d["method"]): d["forward_p50_ms"] for d in stage_data}

    tables = [{"title": "Stage breakdown per image / text, in process (p50 ms, one task at a time)",
               "caption": "Image -> model input: original image side -> the side the model sees. 'overhead / forward' = "
                          "(attribution + evidence mask+regions + RLE) / forward: the issue's 1.5x aim. "
                          "render_predictions = the serving function (forward, attribution, regions, results) as a "
                          "cross-check of the sum. Text: 128-token TextCNN, ~30-word review; its 'RLE / results' "
                          "column is building the Labels spans. Rows are measured in turns (round robin). Ratios are "
                          "medians of per-repetition ratios; 'CPU time' uses process CPU time (less sensitive to other "
                          "load, but it counts OpenMP spin-waiting).",
               "markdown": stage_md}]
    data: dict[str, Any] = {"stages": stage_data}

    if not args.skip_http or not args.skip_memory:
        with C.temp_dir("bench-predict-") as tmp:
            model_dir = tmp / "models"
            publish_models(model_dir)
            if not args.skip_http:
                print("http ...", flush=True)
                image_config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
                text_config = (C.LABEL_CONFIGS / "text_classification_evidence.xml").read_text()
                cases = [(f"{orig} -> {side}", PROJECT_FOR_INPUT[side], image_config,
                          [C.ls_task(1, {"image": C.data_uri(C.sample_image(orig))})]) for orig, side in IMAGE_CASES]
                cases.append(("text (128 tokens)", TEXT_PROJECT, text_config, [C.ls_task(1, {"text": C.TEXTS[0]})]))
                env = {"MODEL_DIR": str(model_dir), "DEVICE": device_name, "LOG_LEVEL": "WARNING", **server_env}
                with C.Server(env, tmp / "server.log") as server:
                    single = http_latencies(server, cases, args.methods, reps, budget)
                    batch_cases = [(label, project, config, [
                        C.ls_task(i + 1, {"image": C.data_uri(C.sample_image(int(label.split()[0]), i))})
                        for i in range(16)]) for label, project, config, _ in cases[:-1]]
                    batch_cases.append((cases[-1][0], TEXT_PROJECT, text_config,
                                        [C.ls_task(i + 1, {"text": C.TEXTS[i % 3]}) for i in range(16)]))
                    batched = http_latencies(server, batch_cases, [DEFAULT_METHOD], max(3, reps // 3), budget)
                rows, http_data = [], []
                for (case, method), times in single.items():
                    s = C.summary_ms(times)
                    fwd = forward_p50.get((case, method), float("nan"))
                    b = C.summary_ms(batched[(case, method)]) if (case, method) in batched else None
                    http_data.append({"case": case, "method": method, **s, "forward_p50_ms": fwd,
                                      "p50_over_forward": s["p50_ms"] / fwd,
                                      "batch16_per_task_p50_ms": b["p50_ms"] if b else None})
                    rows.append([case, method, s["n"], s["p50_ms"], s["p95_ms"], fwd, s["p50_ms"] / fwd,
                                 b["p50_ms"] if b else None])
                tables.append({
                    "title": "End to end: POST /predict through `ml-backend serve` (granian), ms per image / text",
                    "caption": "One task per request (data: URI PNG), sequential, client-side wall time on loopback. "
                               "'p50 / forward' divides by the in-process bare forward p50 of the same model from the "
                               "stage table. The last column sends 16 tasks per request (default method only) and "
                               "divides the request time by 16.",
                    "markdown": C.md_table(["image -> model input", "method", "requests", "p50", "p95",
                                            "bare forward p50", "p50 / forward", "batch of 16: p50 per task"],
                                           rows, "ll" + "r" * 6)})
                data["http"] = http_data
            if not args.skip_memory:
                print("memory ...", flush=True)
                mem = []
                runs = [(64, DEFAULT_METHOD, 64), (64, DEFAULT_METHOD, 256)] + [(224, m, 64) for m in memory_methods]
                for side, method, batch in runs:
                    mem.append(memory_run(model_dir, tmp / "memory.log", side, method, device_name, batch, server_env))
                    print(f"  memory {side} {method} x{batch}: {mem[-1]['hwm_after_mib']:.0f} MiB", flush=True)
                tables.append({
                    "title": "Peak memory of the serving process: one /predict of 64 (and 256) tasks at 224x224",
                    "caption": "A fresh `ml-backend serve` per row. VmHWM (peak RSS) of the server's worker process after a "
                               "warm-up request of one task, then after one request with the whole batch (the "
                               "server's master process stays near its own small peak, listed apart). The batch of "
                               "256 shows how the peak grows with the request size (Label Studio's Retrieve "
                               "Predictions sends the whole selection in one request).",
                    "markdown": C.md_table(
                        ["image -> model input", "method", "tasks", "worker peak after warm-up MiB",
                         "worker peak after batch MiB", "batch adds MiB", "MiB per task", "worker RSS after MiB",
                         "master peak MiB", "request s", "ms per image"],
                        [[f"224 -> {m['model_input']}", m["method"], m["batch"], m["hwm_warm_mib"], m["hwm_after_mib"],
                          m["delta_mib"], m["delta_mib"] / m["batch"], m["rss_after_mib"], m["master_hwm_mib"],
                          m["request_s"], m["per_image_ms"]] for m in mem], "ll" + "r" * 9)})
                data["memory"] = mem

    default_224 = [d for d in stage_data if d["method"] == DEFAULT_METHOD and d["case"].startswith("224")]
    # The server predicts and explains in one pass (explain.attribution.predict_with_evidence), so its
    # overhead is render_predictions (forward + evidence + regions + RLE) minus a bare forward pass.
    notes = [f"Aim check ({DEFAULT_METHOD}, 224x224, as served: (render_predictions - forward) / forward): " + "; ".join(
        f"{d['case']}: {d['render_overhead_ratio']:.2f}x forward "
        f"({'meets' if d['render_overhead_ratio'] <= 1.5 else 'misses'} the 1.5x aim); "
        f"attribution timed on its own (a second pass): {d['overhead_ratio']:.2f}x" for d in default_224)]
    notes.append(f"Run took {time.time() - started:.0f} s; torch threads {torch.get_num_threads()}; "
                 f"{'--quick: few repetitions, preliminary' if args.quick else 'full run'}.")
    C.print_report("/predict latency and memory", markdown(machine), tables, notes)
    path = C.write_results(NAME, {
        "name": NAME, "title": "/predict latency per image and text, per attribution method; serving memory",
        "command": C.command_line(), "quick": args.quick, "machine": machine, "aims": AIMS, "tables": tables,
        "notes": notes, "data": data, "seconds": time.time() - started,
    })
    print(f"\nresults: {path.relative_to(C.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
