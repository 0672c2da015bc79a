"""Benchmark (not a test): how fast the ranking job scores unlabeled image tasks with MC dropout.

For N unlabeled 64x64 RGB tasks and T MC-dropout samples with ``ImageCNN``, it measures tasks
scored per second and peak memory of ``mc_dropout_probs`` (one feature pass + T head passes) and,
on a smaller N, of the naive approach (T full forward passes with dropout on). Inputs are random
and generated batch by batch, so no run ever holds all N images; each configuration runs in its
own subprocess so that its peak RSS is its own.

    .venv/bin/python benchmarks/bench_ranking.py [--quick] [--device cpu|cuda|auto]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _child(method: str, n: int, T: int, device: str, batch_size: int, image_size: int) -> dict:
    """One measured run; returns a JSON-able dict."""
    import numpy as np
    import torch

    from ml_backend.models.cnn import ImageCNN
    from ml_backend.ranking.acquisition import BALD, Entropy, ls_scores
    from ml_backend.models.sampling import _modes, mc_dropout_probs

    torch.manual_seed(0)
    dev = torch.device(device)
    # as the ranking job loads it: NHWC weights and inputs
    model = ImageCNN(n_classes=10, image_size=image_size).to(dev, memory_format=torch.channels_last).eval()
    gen_time = 0.0

    def batches(count: int):
        nonlocal gen_time
        g = torch.Generator().manual_seed(1)
        for i in range(0, count, batch_size):
            t0 = time.perf_counter()
            xb = torch.randn(min(batch_size, count - i), 3, image_size, image_size, generator=g)
            gen_time += time.perf_counter() - t0
            yield xb

    def naive(xs) -> np.ndarray:
        out = []
        with torch.no_grad(), _modes(model, dropout=True):
            for xb in xs:
                xb = xb.to(dev)
                out.append(torch.stack([torch.softmax(model(xb), -1) for _ in range(T)]).cpu().numpy())
        return np.concatenate(out, axis=1)

    def score(xs) -> np.ndarray:
        return mc_dropout_probs(model, xs, T=T, batch_size=batch_size) if method == "mc" else naive(xs)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    score(batches(min(batch_size, n)))  # warm-up (allocator, kernels)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    gen_time = 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    mc = score(batches(n))
    sync()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    t1 = time.perf_counter()
    ls = ls_scores(BALD().scores(mc_probs=mc))
    Entropy().scores(mc_probs=mc)
    acq_time = time.perf_counter() - t1
    assert mc.shape == (T, n, 10) and ls.shape == (n,)
    return dict(
        method=method, n=n, T=T, wall_s=wall, gen_s=gen_time, score_s=wall - gen_time,
        tasks_per_s=n / (wall - gen_time), cpu_s=cpu, acq_ms=acq_time * 1000,
        rss_before_mib=rss_before, peak_rss_mib=_rss_mib(),
        gpu_peak_mib=torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    )


def _run(method: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--_child", method, str(n), "--T", str(args.T),
           "--device", args.device, "--batch-size", str(args.batch_size),
           "--image-size", str(args.image_size)] + (["--threads", str(args.threads)] if args.threads else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _evidence_groups_seconds(n: int, seed: int = 0) -> dict:
    """The evidence share cap's own cost (``ranking.evidence_share``): grouping N tasks' 64-dim evidence
    descriptors (two classes, three modes each) and the capped order, as ``Scorer.order`` does."""
    import numpy as np

    from ml_backend.discovery.evidence import CONTENT_DIMS
    from ml_backend.ranking.evidence_share import evidence_groups, rank_by_class_and_evidence

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, CONTENT_DIMS)).astype(np.float32)
    mode = rng.integers(0, 6, n)
    content = centres[mode] + 0.3 * rng.standard_normal((n, CONTENT_DIMS)).astype(np.float32)
    predicted, scores = mode // 3, rng.random(n)
    started = time.perf_counter()
    groups = evidence_groups(content, predicted)
    grouped = time.perf_counter() - started
    rank_by_class_and_evidence(scores, predicted, 0.5, groups, 0.5)
    return {"n": n, "groups": int(len(np.unique(groups))), "group_s": grouped,
            "total_s": time.perf_counter() - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N (a few seconds)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--T", type=int, default=10, help="MC-dropout samples")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--sizes", type=int, nargs="*", help="N values for the MC runs")
    ap.add_argument("--naive-n", type=int, help="N for the naive comparison")
    ap.add_argument("--_child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    if args._child:
        method, n = args._child[0], int(args._child[1])
        print(json.dumps(_child(method, n, args.T, args.device, args.batch_size, args.image_size)))
        return

    sizes = args.sizes or ([200, 500, 1000] if args.quick else [1000, 5000, 10000])
    naive_n = args.naive_n or (200 if args.quick else 1000)
    rows = [_run("mc", n, args) for n in sizes]
    rows.append(_run("mc", naive_n, args) if naive_n not in sizes else None)
    rows.append(_run("naive", naive_n, args))
    rows = [r for r in rows if r is not None]

    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"Machine: {platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
          f"device {args.device} ({dev_name})")
    print(f"ImageCNN(n_classes=10, default width 16, channels_last), {args.image_size}x{args.image_size} RGB, T = {args.T}, "
          f"batch {args.batch_size}; inputs generated per batch (generation time excluded);\n"
          f"CPU s = process CPU time incl. generation (robust to other load on shared cores)\n")
    gpu = args.device.startswith("cuda")
    head = "| method | N | tasks/s | scoring s | CPU s | acquisition ms | RSS before MiB | peak RSS MiB |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if gpu:
        head += " GPU peak MiB |"
        sep += "---:|"
    print(head)
    print(sep)
    for r in rows:
        name = "features once + T heads" if r["method"] == "mc" else "naive: T full passes"
        line = (f"| {name} | {r['n']} | {r['tasks_per_s']:.0f} | {r['score_s']:.2f} | {r['cpu_s']:.1f} | {r['acq_ms']:.1f} "
                f"| {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
        if gpu:
            line += f" {r['gpu_peak_mib']:.0f} |"
        print(line)
    mc_same = next((r for r in rows if r["method"] == "mc" and r["n"] == naive_n), None)
    nv = rows[-1]
    if mc_same:
        print(f"\nSpeed-up over naive at N = {naive_n}: {mc_same['tasks_per_s'] / nv['tasks_per_s']:.1f}x")
    print("\nThe evidence share cap (XIL_MAX_EVIDENCE_SHARE) on top: grouping N tasks' 64-dim evidence descriptors "
          "(two classes, three modes each) and the capped order, after scoring (the region features' extra "
          "forward pass is part of a ranking job's time, not of this table)\n")
    print("| N | groups found | grouping s | grouping + order s |\n|---:|---:|---:|---:|")
    for n in ([1000, 5000] if args.quick else [10000, 100000]):
        r = _evidence_groups_seconds(n)
        print(f"| {r['n']} | {r['groups']} | {r['group_s']:.2f} | {r['total_s']:.2f} |")


if __name__ == "__main__":
    main()
