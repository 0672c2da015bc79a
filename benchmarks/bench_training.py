"""Benchmark (not a test): how soon feedback is served, and what an RRR training step costs.

(a) **Last annotation -> served version.** ``ml-backend serve`` (granian, embedded queue, CPU,
    MODEL_DIR in a temporary directory, default settings: ImageCNN at 64x64, counterexamples, 30 epochs),
    /setup with ``label_config/image_classification_evidence.xml``, then N ANNOTATION_CREATED
    webhooks for image tasks (64x64 PNG data: URIs of scikit-learn digits 0 and 1 as "Class A" /
    "Class B"; every other annotation also paints an "Irrelevant" brush region, RLE from the
    Label Studio SDK), sent one after another as fast as they are acknowledged. /setup is then
    polled until its ``model_version`` changes from "untrained", and /versions until a version
    trained on all N annotations serves. Twice: with the default ``min_annotations`` = 1 (the
    first webhook starts a job at once and later ones fold into a follow-up job) and with
    ``XIL_MIN_ANNOTATIONS`` = N (one job, started by the last webhook).
(b) **RRR step / cross-entropy step.** One optimizer step (``training.losses.xil_loss``, backward,
    AdamW step, as ``trainer.fit`` runs it) with ``rrr_lambda`` = 10 and half the batch carrying
    an irrelevant mask, against ``rrr_lambda`` = 0 (plain cross-entropy), batch 32: ImageCNN at
    64x64 and 224x224, TextCNN (128 tokens). CE and RRR steps alternate, and the ratio is the
    median of per-pair ratios, which cancels slow drifts in machine load.

    .venv/bin/python -m benchmarks.bench_training [--quick] [--device cuda] [--n 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from benchmarks import _common as C
from benchmarks.machine import describe, markdown

NAME = "bench_training"
PROJECT = 4
AIMS = ["(a) Seconds from the last annotation to a served new version (default image model): reported, no "
        "numeric aim given.",
        "(b) Cost of an RRR step as a ratio to a plain cross-entropy step, CPU and (with --device cuda) GPU: "
        "reported, no numeric aim given."]


# --- (a) ------------------------------------------------------------------------------------

def digit_tasks(n: int) -> list[tuple[np.ndarray, int]]:
    """n (64x64 RGB uint8 image, class index) pairs: scikit-learn digits 0 and 1, alternating."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pools = {c: np.flatnonzero(digits.target == c) for c in (0, 1)}
    out = []
    for i in range(n):
        label = i % 2
        img = digits.images[pools[label][(i // 2) % len(pools[label])]]
        gray = np.clip(img * 16, 0, 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.NEAREST))
        out.append((np.stack([big] * 3, axis=-1), label))
    return out


def irrelevant_brush(size: int = 64) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[: size // 4, : size // 4] = 255  # a corner "watermark" the model must not use
    return {"id": "irr", "from_name": "evidence", "to_name": "image", "type": "brushlabels", "origin": "manual",
            "original_width": size, "original_height": size, "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask)], "brushlabels": ["Irrelevant"]}}


def annotation_bodies(n: int, label_config: str) -> list[bytes]:
    classes = ("Class A", "Class B")
    brush = irrelevant_brush()
    out = []
    for i, (img, label) in enumerate(digit_tasks(n), start=1):
        result = [{"id": f"c{i}", "from_name": "label", "to_name": "image", "type": "choices", "origin": "manual",
                   "value": {"choices": [classes[label]]}}]
        if i % 2:
            result.append(brush)
        out.append(json.dumps(C.annotation_webhook(i, 1000 + i, PROJECT, label_config, {"image": C.data_uri(img)},
                                                   result)).encode())
    return out


def served_after_feedback(n: int, extra_env: dict[str, str], tmp: Path, device: str, timeout: float,
                          server_env: dict[str, str]) -> dict[str, Any]:
    label_config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
    payloads = annotation_bodies(n, label_config)
    env = {"MODEL_DIR": str(tmp / f"models-{len(list(tmp.iterdir()))}"), "DEVICE": device, "LOG_LEVEL": "INFO",
           **server_env, **extra_env}
    setup = C.setup_body(PROJECT, label_config)
    with C.Server(env, tmp / "server.log") as server:
        status, answer = C.http_json("POST", server.url + "/setup", setup)
        assert status == 200 and answer["model_version"] == "untrained", answer
        acks = []
        t_first_webhook = time.perf_counter()
        for body in payloads:
            t0 = time.perf_counter()
            status, answer = C.post_bytes(server.url + "/webhook", body)
            acks.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"/webhook answered {status}: {answer[:500]!r}")
        t_last = time.perf_counter()
        first: Optional[tuple[str, float]] = None
        complete: Optional[tuple[str, float, dict]] = None
        deadline = t_last + timeout
        polls = 0
        while time.perf_counter() < deadline and complete is None:
            status, answer = C.http_json("POST", server.url + "/setup", setup)
            polls += 1
            version = answer.get("model_version") if status == 200 else None
            now = time.perf_counter()
            if version and version != "untrained":
                if first is None:
                    first = (version, now - t_last)
                status, listed = C.http_json("GET", server.url + f"/versions?project={PROJECT}")
                meta = next((v for v in listed["projects"][str(PROJECT)] if v["version"] == version), {})
                if meta.get("examples") == n:
                    complete = (version, now - t_last, meta)
                    break
            time.sleep(0.1)
        status, listed = C.http_json("GET", server.url + f"/versions?project={PROJECT}")
    versions = listed.get("projects", {}).get(str(PROJECT), []) if isinstance(listed, dict) else []
    meta = complete[2] if complete else {}
    return {
        "n": n, "env": extra_env, "sending_s": t_last - t_first_webhook, "ack_p50_ms": C.pct(acks, 50) * 1000,
        "ack_max_ms": max(acks) * 1000,
        "first_version": first[0] if first else None, "first_version_s": first[1] if first else None,
        "complete_version": complete[0] if complete else None, "complete_s": complete[1] if complete else None,
        "train_seconds": meta.get("train_seconds"), "epochs": meta.get("epochs"),
        "examples": meta.get("examples"), "holdout": meta.get("holdout"),
        "versions": [{"version": v["version"], "examples": v.get("examples"), "train_seconds": v.get("train_seconds"),
                      "epochs": v.get("epochs")} for v in versions],
        "timed_out": complete is None, "polls": polls,
    }


# --- (b) ------------------------------------------------------------------------------------

def step_costs(kind: str, side: int, batch: int, device: torch.device, reps: int, budget_s: float,
               rrr_lambda: float = 10.0, min_pairs: int = 3) -> dict[str, Any]:
    from ml_backend.config import ProjectSettings
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.models.text import TextCNN
    from ml_backend.training.sets import Batch
    from ml_backend.training.strategies.rrr import RRR
    from ml_backend.training.trainer import batch_loss

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if kind == "image":
        model = ImageCNN(n_classes=2, image_size=side)
        x = torch.rand(batch, 3, side, side, generator=g)
        irrelevant = torch.zeros(batch, side, side, dtype=torch.bool)
        irrelevant[::2, : side // 4, : side // 4] = True
    else:
        model = TextCNN(n_classes=2)
        side = model.config["max_len"]
        x = torch.randint(1, model.config["n_buckets"], (batch, side), generator=g)
        x[:, 100:] = 0  # padding, as in a ~100-token text
        irrelevant = torch.zeros(batch, side, dtype=torch.bool)
        irrelevant[::2, 10:20] = True
    y = torch.randint(0, 2, (batch,), generator=g)
    model.to(device).train()
    x, y, irrelevant = x.to(device), y.to(device), irrelevant.to(device)
    has_irrelevant = irrelevant.flatten(1).any(dim=1)
    relevant = torch.zeros_like(irrelevant)
    has_relevant = torch.zeros_like(has_irrelevant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    adapter, batch_of = adapt(model), Batch(x, y, irrelevant, has_irrelevant, relevant, has_relevant)

    def step(lam: float) -> tuple[float, float, dict]:
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        # the training loop's own loss (trainer.batch_loss) with RRR as the strategy
        loss, parts = batch_loss(adapter, batch_of, [RRR(lam)], ProjectSettings(), len(y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0, parts

    _, _, parts = step(rrr_lambda)
    assert "rrr" in parts, "the RRR term was not active"
    step(0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ce, rrr, ce_cpu, rrr_cpu = [], [], [], []
    started = time.perf_counter()
    for i in range(reps):
        w, c, _ = step(0.0)
        ce.append(w)
        ce_cpu.append(c)
        w, c, _ = step(rrr_lambda)
        rrr.append(w)
        rrr_cpu.append(c)
        if i + 1 >= min_pairs and time.perf_counter() - started > budget_s:
            break
    return {
        "model": "ImageCNN" if kind == "image" else "TextCNN", "input": f"{side}x{side}" if kind == "image" else
        f"{side} tokens", "batch": batch, "reps": len(ce), "ce_p50_ms": C.pct(ce, 50) * 1000,
        "rrr_p50_ms": C.pct(rrr, 50) * 1000, "ce_p95_ms": C.pct(ce, 95) * 1000, "rrr_p95_ms": C.pct(rrr, 95) * 1000,
        "ratio": C.pct([r / c for r, c in zip(rrr, ce)], 50),
        "ratio_cpu": C.pct([r / c for r, c in zip(rrr_cpu, ce_cpu) if c > 0], 50) if device.type == "cpu" else None,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto: the training steps and the server")
    parser.add_argument("--n", type=int, default=20, help="annotations in part (a)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a served version")
    parser.add_argument("--skip-served", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-steps", action="store_true", help="skip part (b)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads here and (OMP_NUM_THREADS) in the server")
    args = parser.parse_args()
    C.set_threads(args.threads)
    device_name = C.resolve_device(args.device)
    device = torch.device(device_name)
    machine = describe(device_name)
    started = time.time()
    tables, notes, data = [], [], {}

    if not args.skip_served:
        print("served after feedback ...", flush=True)
        runs = []
        with C.temp_dir("bench-training-") as tmp:
            for label, env in ((f"min_annotations = 1 (default)", {}),
                               (f"min_annotations = {args.n}", {"XIL_MIN_ANNOTATIONS": str(args.n)})):
                run = served_after_feedback(args.n, env, tmp, device_name, args.timeout,
                                            {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
                run["scenario"] = label
                runs.append(run)
                print(f"  {label}: first {run['first_version']} after {run['first_version_s']} s, all {args.n} in "
                      f"{run['complete_version']} after {run['complete_s']} s", flush=True)
        data["served"] = runs
        tables.append({
            "title": f"(a) Last annotation -> served version, {args.n} image annotations (seconds)",
            "caption": "Measured from the last webhook's acknowledgement. 'first version' = /setup first answers a "
                       "model_version other than 'untrained'; 'version with all N' = the first served version whose "
                       "meta says it was trained on all N annotations (holdout included). Training time is the "
                       "job's own fit time from the version's meta.",
            "markdown": C.md_table(
                ["scenario", "sending N webhooks s", "ack p50 ms", "first version", "first version s",
                 "version with all N", "version with all N s", "its fit s", "its epochs", "versions published"],
                [[r["scenario"], r["sending_s"], r["ack_p50_ms"], r["first_version"], r["first_version_s"],
                  r["complete_version"] or "timed out", r["complete_s"], r["train_seconds"], r["epochs"],
                  len(r["versions"])] for r in runs], "l" + "r" * 9)})

    if not args.skip_steps:
        print("training steps ...", flush=True)
        reps = 8 if args.quick else 40
        budget = 8.0 if args.quick else 60.0
        rows = []
        for kind, side in (("image", 64), ("image", 224), ("text", 0)):
            r = step_costs(kind, side, 32, device, reps, budget, min_pairs=2 if args.quick else 5)
            rows.append(r)
            print(f"  {r['model']} {r['input']}: CE {r['ce_p50_ms']:.1f} ms, RRR {r['rrr_p50_ms']:.1f} ms, "
                  f"ratio {r['ratio']:.2f}", flush=True)
        data["steps"] = rows
        headers = ["model", "input", "batch", "pairs", "CE step p50 ms", "RRR step p50 ms", "CE p95 ms", "RRR p95 ms",
                   "RRR / CE"]
        if device.type == "cpu":
            headers.append("RRR / CE, CPU time")
        else:
            headers.append("GPU peak MiB")
        tables.append({
            "title": f"(b) One training step, RRR (lambda 10) vs cross-entropy, on {device_name}",
            "caption": "Forward, loss, backward and AdamW step, as trainer.fit runs it. RRR differentiates the "
                       "input gradient of the log-probabilities (a double backward).",
            "markdown": C.md_table(headers, [[r["model"], r["input"], r["batch"], r["reps"], r["ce_p50_ms"],
                                              r["rrr_p50_ms"], r["ce_p95_ms"], r["rrr_p95_ms"], r["ratio"],
                                              r["ratio_cpu"] if device.type == "cpu" else r["gpu_peak_mib"]]
                                             for r in rows], "ll" + "r" * 8)})

    notes.append(f"Run took {time.time() - started:.0f} s; torch threads {torch.get_num_threads()}; "
                 f"{'--quick: preliminary' if args.quick else 'full run'}.")
    C.print_report("Training: feedback to served version; RRR step cost", markdown(machine), tables, notes)
    path = C.write_results(NAME, {"name": NAME, "title": "Training: feedback to served version; RRR step cost",
                                  "command": C.command_line(), "quick": args.quick, "machine": machine, "aims": AIMS,
                                  "tables": tables, "notes": notes, "data": data, "seconds": time.time() - started})
    print(f"\nresults: {path.relative_to(C.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
