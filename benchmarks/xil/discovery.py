"""Shortcut discovery with no annotator correction (issue 25), on the XIL suite's image problems.

For each problem and seed: the default CNN trained on the labelled set without feedback (the
suite's base model) explains every training task; ``discovery.StrategyClustering`` clusters the
evidence (the call the training and ranking jobs make). Scored against the planted confounder:

- the truth: tasks whose served evidence (the brush mask /predict draws) lies mostly (>= half
  its pixels) on the confounder;
- precision and recall of the top-ranked suspicious cluster against those tasks;
- the highest shortcut score, and the number of suspicious clusters, for the base model and for
  the model trained on the same images without the confounder (on a problem with no gap, no
  cluster should look more like a shortcut than the clean model's do);
- *Mark irrelevant* on the top suspicious cluster and nothing else: the training job's
  ``apply_cluster_corrections`` marks the served evidence of the cluster's tasks, and the suite's
  fine-tuning round trains on all labelled data (warm start); test accuracy against no feedback
  and the clean bound.

    python -m benchmarks.xil.discovery --problems decoy_digits_4 background --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.xil.data import PROBLEMS
from benchmarks.xil.loop import Backend, prepare_problem, train_base
from benchmarks.xil.suite import IMAGE_PROBLEMS, METHODS, settings_for
from ml_backend.discovery.clusters import StrategyClustering
from ml_backend.discovery.describe import apply_cluster_corrections, describe_inputs, evidence_marks

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "xil_discovery.json"
GAP_MIN = 0.02


def _truth(model, backend: Backend) -> np.ndarray:
    """Per training task: whether its served evidence lies mostly on the confounder."""
    settings = backend.ctx.settings
    marks = evidence_marks(model, backend.data.train.x, settings.attribution, settings.evidence_mass)
    confounder = backend.data.train.confounder.numpy().astype(bool)
    if marks.shape[1:] != confounder.shape[1:]:
        marks = torch.nn.functional.interpolate(torch.as_tensor(marks[:, None]).float(), confounder.shape[1:],
                                                mode="nearest")[:, 0].numpy() > 0.5
    on = (marks & confounder).sum(axis=(1, 2))
    return on >= 0.5 * np.maximum(marks.sum(axis=(1, 2)), 1)


def _clusters(model, backend: Backend, seed: int):
    settings = backend.ctx.settings
    model.network.eval()
    started = time.perf_counter()
    descriptors = describe_inputs(model, backend.data.train.x, settings.attribution).result()
    described = time.perf_counter() - started
    clusters = StrategyClustering(seed=seed).fit(descriptors)
    return clusters, described, time.perf_counter() - started - described


def run(problem: str, seed: int, epochs: int, finetune_epochs: int, log=print) -> dict[str, Any]:
    data = PROBLEMS[problem](seed)
    settings = settings_for(data.image_size, METHODS["default"])
    prepared = prepare_problem(data, settings)
    backend = Backend(prepared, settings, torch.device("cpu"))
    base, _ = train_base(backend, clean=False, epochs=epochs, seed=seed)
    clean, _ = train_base(backend, clean=True, epochs=epochs, seed=seed)
    truth = _truth(base, backend)
    clusters, described_s, clustered_s = _clusters(base, backend, seed)
    clean_clusters, _, _ = _clusters(clean, backend, seed)
    top = clusters[0] if clusters and clusters[0].suspicious else None
    hit = int(truth[top.rows].sum()) if top is not None else 0
    rec: dict[str, Any] = {
        "problem": problem, "seed": seed, "tasks": len(truth), "truth": int(truth.sum()),
        "clusters": len(clusters), "suspicious": sum(c.suspicious for c in clusters),
        "max_score": max(c.repetition for c in clusters), "clean_suspicious": sum(c.suspicious for c in clean_clusters),
        "clean_max_score": max(c.repetition for c in clean_clusters),
        "top": None if top is None else {"size": len(top.rows), "classes": top.classes, "score": top.repetition,
                                         "precision": hit / len(top.rows), "recall": hit / max(int(truth.sum()), 1)},
        "describe_seconds": described_s, "cluster_seconds": clustered_s,
        "none": backend.evaluate(base)["accuracy"], "clean": backend.evaluate(clean)["accuracy"],
    }
    if top is not None:
        model = copy.deepcopy(base)
        examples = list(backend.data.label_only)
        ids = [int(examples[i].task_id) for i in top.rows]
        rec["marked_tasks"] = apply_cluster_corrections(examples, [{"task_ids": ids}], lambda _: model,
                                                        settings.attribution, settings.evidence_mass)
        torch.manual_seed(10_000 + seed)
        backend.train(model, examples, finetune_epochs, seed=seed * 100)
        rec["corrected"] = backend.evaluate(model)["accuracy"]
    gap = rec["clean"] - rec["none"]
    rec["gap"] = gap
    if "corrected" in rec and gap >= GAP_MIN:
        rec["gap_recovered"] = (rec["corrected"] - rec["none"]) / gap
    t = rec["top"]
    log(f"[{problem} seed {seed}] truth {rec['truth']}/{rec['tasks']}; {rec['clusters']} clusters, "
        f"{rec['suspicious']} suspicious (clean model: {rec['clean_suspicious']}); max score {rec['max_score']:.3f} "
        f"(clean {rec['clean_max_score']:.3f}); top: " + ("none" if t is None else
        f"P={t['precision']:.2f} R={t['recall']:.2f} n={t['size']} classes={t['classes']}") +
        f"; accuracy none {rec['none']:.3f} clean {rec['clean']:.3f} corrected {rec.get('corrected', float('nan')):.3f}"
        f"; describe {described_s:.1f}s cluster {clustered_s:.1f}s")
    return rec


def scale(n: int, seed: int = 0, log=print) -> dict[str, Any]:
    """Clustering time for ``n`` tasks (content and place drawn around 40 strategies)."""
    rng = np.random.default_rng(seed)
    from ml_backend.discovery.evidence import CONTENT_DIMS, PLACE_CELLS, Descriptors

    centres_p = np.abs(rng.standard_normal((40, PLACE_CELLS ** 2)))
    centres_c = rng.standard_normal((40, CONTENT_DIMS))
    which = rng.integers(0, 40, n)
    place = np.sqrt(np.abs(centres_p[which] + 0.3 * rng.standard_normal((n, PLACE_CELLS ** 2))))
    place /= np.linalg.norm(place, axis=1, keepdims=True)
    content = centres_c[which] + 0.5 * rng.standard_normal((n, CONTENT_DIMS))
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    d = Descriptors(place.astype(np.float32), content.astype(np.float32), np.zeros((n, 256), np.float16), which % 10)
    started = time.perf_counter()
    clusters = StrategyClustering().fit(d)
    seconds = time.perf_counter() - started
    log(f"[scale] {n} tasks: {len(clusters)} clusters in {seconds:.1f}s")
    return {"tasks": n, "seconds": seconds, "clusters": len(clusters)}


def markdown(path: Path = RESULTS) -> list[str]:
    """The discovery section of docs/xil-benchmarks.md (empty when the results do not exist)."""
    if not path.exists():
        return []
    out = json.loads(path.read_text())
    records = sorted(out.get("records", []), key=lambda r: (r["problem"], r["seed"]))
    lines = ["# Shortcut discovery with no correction (issue 25)", "",
             "Written by `python -m benchmarks.xil.discovery` to `benchmarks/results/xil_discovery.json`. The "
             "suite's base CNN (trained on the labelled set, no feedback) explains every training task; "
             "`discovery.StrategyClustering` clusters the evidence, as the training and ranking jobs do. Truth: "
             "tasks whose served evidence lies mostly on the planted confounder. *Mark irrelevant* on the top "
             "suspicious cluster only (`apply_cluster_corrections`: the served evidence of its tasks, grown over "
             "what it lies on in the same image), then the suite's fine-tuning round; recovered = share of the "
             "gap between no feedback and the clean bound (gaps under 2 points: none).", "",
             "| problem | seed | truth | top: tasks (classes) | precision | recall | score (clean model's max) "
             "| suspicious (clean) | acc none / clean / corrected | recovered |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = r.get("top")
        top = "-" if t is None else f"{t['size']} ({len(t['classes'])})"
        pr = ("-", "-") if t is None else (f"{t['precision']:.2f}", f"{t['recall']:.2f}")
        acc = f"{r['none']:.3f} / {r['clean']:.3f} / " + (f"{r['corrected']:.3f}" if "corrected" in r else "-")
        rec = f"{int(round(100 * r['gap_recovered']))}%" if r.get("gap_recovered") is not None else "-"
        lines.append(f"| {r['problem']} | {r['seed']} | {r['truth']}/{r['tasks']} | {top} | {pr[0]} | {pr[1]} | "
                     f"{r['max_score']:.3f} ({r['clean_max_score']:.3f}) | {r['suspicious']} ({r['clean_suspicious']}) "
                     f"| {acc} | {rec} |")
    scale_rows = out.get("scale", [])
    if scale_rows:
        lines += ["", "Clustering cost on synthetic descriptors (one thread): " + "; ".join(
            f"{s['tasks']:,} tasks in {s['seconds']:.1f} s" for s in scale_rows) + "."]
    for s in out.get("real_scale", []):
        lines += ["", f"{s['tasks']:,} real tasks ({s['problem']}'s images, tiled), one thread: the ranking's "
                  f"explanations take {s['explain_seconds']:.1f} s; describing them (explaining again, with the "
                  f"region features) {s['describe_seconds']:.1f} s and clustering {s['cluster_seconds']:.1f} s. "
                  "The ranking job describes the batches it explains, so discovery adds the region features "
                  "and the clustering to it."]
    notes = out.get("notes", [])
    if notes:
        lines += [""] + [n if n.startswith("  - ") else f"- {n}" for n in notes]
    return lines + [""]


def real_scale(n: int, problem: str = "decoy_digits_4", seed: int = 0, epochs: int = 20, log=print) -> dict[str, Any]:
    """Describing and clustering ``n`` real tasks' evidence: the problem's training images, tiled
    with a little noise to ``n``, explained by its base CNN (what the ranking job adds to each
    batch it explains: the region features and the descriptors; then one clustering)."""
    data = PROBLEMS[problem](seed)
    settings = settings_for(data.image_size, METHODS["default"])
    backend = Backend(prepare_problem(data, settings), settings, torch.device("cpu"))
    model, _ = train_base(backend, clean=False, epochs=epochs, seed=seed)
    model.network.eval()
    x = backend.data.train.x
    generator = torch.Generator().manual_seed(seed)
    tiled = x[torch.arange(n) % len(x)] + 0.02 * torch.randn((n, *x.shape[1:]), generator=generator)
    started = time.perf_counter()
    for start in range(0, n, 64):
        model.predict_and_explain(tiled[start:start + 64], settings.attribution, 10)
    explain_s = time.perf_counter() - started
    started = time.perf_counter()
    descriptors = describe_inputs(model, tiled, settings.attribution).result()
    describe_s = time.perf_counter() - started
    started = time.perf_counter()
    clusters = StrategyClustering(seed=seed).fit(descriptors)
    cluster_s = time.perf_counter() - started
    log(f"[real scale] {n} {problem} tasks: explaining {explain_s:.1f}s; describing (explaining again + region "
        f"features) {describe_s:.1f}s; clustering {cluster_s:.1f}s, {len(clusters)} clusters")
    return {"tasks": n, "problem": problem, "explain_seconds": explain_s, "describe_seconds": describe_s,
            "cluster_seconds": cluster_s, "clusters": len(clusters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=[p for p in IMAGE_PROBLEMS if p != "colors"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--scale", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--real-scale", nargs="*", type=int, default=[10_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"records": [], "scale": []}
    if args.out.exists():
        out = json.loads(args.out.read_text())
    for n in args.scale:
        out["scale"] = [s for s in out.get("scale", []) if s["tasks"] != n] + [scale(n)]
        args.out.write_text(json.dumps(out, indent=1, default=float))
    for n in args.real_scale:
        out["real_scale"] = [s for s in out.get("real_scale", []) if s["tasks"] != n] + [real_scale(n)]
        args.out.write_text(json.dumps(out, indent=1, default=float))
    for problem in args.problems:
        for seed in args.seeds:
            rec = run(problem, seed, args.epochs, args.finetune_epochs)
            out["records"] = [r for r in out["records"] if (r["problem"], r["seed"]) != (problem, seed)] + [rec]
            args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
