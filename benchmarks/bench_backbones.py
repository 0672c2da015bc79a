"""Benchmark (not a test): /predict cost of pretrained backbones beside the default CNN, in process.

Three image models in one run, each on the same 480 x 640 photo (a data: URI PNG):

- the default CNN (``ImageCNN`` at its 64 px input);
- a ResNet-18-size backbone (``ResNetConfig`` basic blocks 2-2-2-2, 64-512 channels) and
- a ViT-small-size backbone (384 wide, 12 layers, 6 heads, patch 16),

both randomly initialised, saved with ``save_pretrained`` with an image processor at 224 px and
loaded through the backend's offline path (``project.make_context``), frozen.

For each: decode + processor (``data.prepare.prepare_task``), forward (the kind's ``probs``: what
serving runs without evidence) and ``rendering.render_predictions`` (what /predict runs: forward,
evidence, regions at the original size, results). The evidence overhead is
(render_predictions - forward) / forward, p50 over repetitions taken in turns (aim <= 1.5x).

    .venv/bin/python -m benchmarks.bench_backbones [--quick] [--reps N] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import _common as C
from benchmarks.machine import describe, markdown

NAME = "bench_backbones"
AIM = 1.5


def save_backbones(root: Path) -> dict[str, Path]:
    import torch
    import transformers as T

    torch.manual_seed(0)
    out = {}
    specs = {
        "ResNet-18 size, 224 px": (T.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                                  depths=[2, 2, 2, 2], layer_type="basic"),
                                   T.ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875)),
        "ViT-small size, 224 px": (T.ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                                               num_attention_heads=6, intermediate_size=1536),
                                   T.ViTImageProcessorPil(size={"height": 224, "width": 224})),
    }
    for label, (config, processor) in specs.items():
        directory = root / label.split(",")[0].replace(" ", "-").lower()
        T.AutoModel.from_config(config).save_pretrained(directory)
        processor.save_pretrained(directory)
        out[label] = directory
    return out


def stages(label_config: str, settings: Any, task: dict) -> Callable[[], dict[str, float]]:
    import torch

    from ml_backend.config import Settings
    from ml_backend.data.fetch import Fetcher
    from ml_backend.data.prepare import prepare_task
    from ml_backend.project import make_context, new_model
    from ml_backend.rendering import render_predictions
    from ml_backend.store import LoadedModel

    ctx = make_context("bench", label_config, settings)
    model = new_model(ctx)
    model.network.eval()
    loaded = LoadedModel("v1", model, ctx.schema.classes)
    fetcher = Fetcher(Settings())

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        item = prepare_task(ctx.schema, model, task, fetcher)
        t1 = time.perf_counter()
        x = item.tensor[None].contiguous(memory_format=torch.channels_last)
        model.probs(x)
        t2 = time.perf_counter()
        render_predictions(ctx, loaded, [item])
        t3 = time.perf_counter()
        return {"prepare": t1 - t0, "forward": t2 - t1, "render_predictions": t3 - t2}

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="only cpu is measured here")
    args = parser.parse_args(argv)
    import torch

    from ml_backend.config import ProjectSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 5 if args.quick else args.reps
    started = time.perf_counter()
    label_config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
    task = C.ls_task(1, {"image": C.data_uri(C.sample_image(640, 0)[:480])})
    with tempfile.TemporaryDirectory(prefix="backbones-") as tmp:
        dirs = save_backbones(Path(tmp))
        steps = {"default CNN, 64 px": stages(label_config, ProjectSettings(), task)}
        for label, directory in dirs.items():
            steps[label] = stages(label_config, ProjectSettings(backbone=str(directory), train_mode="frozen"), task)
        for step in steps.values():
            step()  # warm-up
        times: dict[str, dict[str, list[float]]] = {k: {} for k in steps}
        for _ in range(reps):  # in turns: load from elsewhere spreads over the rows
            for key, step in steps.items():
                for stage, value in step().items():
                    times[key].setdefault(stage, []).append(value)
    rows, data = [], []
    for key, t in times.items():
        p50 = {stage: C.pct(values, 50) * 1000 for stage, values in t.items()}
        ratios = [(r - f) / f for r, f in zip(t["render_predictions"], t["forward"]) if f > 0]
        ratio = C.pct(ratios, 50)
        rows.append([key, reps, p50["prepare"], p50["forward"], p50["render_predictions"], ratio,
                     "meets" if ratio <= AIM else "misses"])
        data.append({"model": key, "reps": reps, **{f"{k}_p50_ms": v for k, v in p50.items()},
                     "evidence_overhead_ratio": ratio})
    table = C.md_table(["model", "reps", "decode + processor ms", "forward ms", "render_predictions ms",
                        "(render - forward) / forward", f"aim <= {AIM}x"], rows, "lrrrrrl")
    machine = describe("cpu")
    tables = [{"title": "p50 per stage, one 480 x 640 photo",
               "caption": "Frozen, randomly initialised backbones at 224 px; the CNN at its 64 px input. Rows are "
                          "measured in turns.", "markdown": table}]
    aims = [f"/predict evidence overhead (render_predictions - forward) / forward <= {AIM}x, for a ResNet-18-size "
            "and a ViT-small-size backbone at 224 px beside the default CNN (issue 14)."]
    notes = ["Not measured yet (the per-task feature cache is still to come): seconds from the last annotation to "
             "a served version for 1,000 tasks with a frozen backbone, and ranking throughput with and without "
             "the cache."]
    C.print_report("/predict with pretrained backbones (in process)", markdown(machine), tables, notes)
    C.write_results(NAME, {"name": NAME, "title": "/predict with pretrained backbones beside the default CNN",
                           "command": C.command_line(), "quick": args.quick, "machine": machine, "aims": aims,
                           "tables": tables, "notes": notes, "rows": data, "seconds": time.perf_counter() - started})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
