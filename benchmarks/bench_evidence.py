"""Benchmark (not a test): which served evidence for the CNN resolves the regions annotators mark.

The CNN's served evidence was Grad-CAM on its last block, fused with the prediction's forward
pass. At the XIL benchmark's 28 px input that block's map is 3x3, too coarse for a 4x4-px decoy
swatch: the mass on the swatch read ~0.07 whether or not the model used it. This compares
candidate maps, each from ONE forward and ONE backward pass fused with the prediction (hooks on
the layers it needs, ``torch.autograd.grad`` w.r.t. those layers or the input only), on:

- **Resolution.** Decoy digits with the swatch in all four corners (``benchmarks.xil.data``), read
  into tensors and confounder masks the way the backend reads tasks and marks
  (``benchmarks.xil.loop.prepare_problem``). Two CNNs per seed, trained by ``fit_examples`` as
  ``loop.train_base`` does: (a) on the confounded training set (it uses the swatch) and (b) on
  its clean twin (it never saw one). On the same confounded test images: the evidence mass on the
  swatch (``explain.quality.irrelevant_mass``) for each, and the ratio (b)/(a): a method that
  shows what the model uses gives a small ratio (the aim: <= 0.3 on every seed), one that cannot
  resolve the swatch ~1. Repeated at 64 px (the default input) and, one seed each, for every
  other image problem, beside occlusion (many passes, not servable: the causal reference) and how
  much each model relies on the confounder (drop of its predicted-class probability when the
  confounder's pixels are zeroed): where the confounded model does not use the confounder more
  than the clean one, no method can (or should) show a drop.
- **Faithfulness.** Deletion curves: the top-k% pixels by each map (ties broken at random) are
  replaced by 0 or by the image's channel mean, k = 0, 5, ..., 100; the area under the predicted
  class's probability (lower = the map finds what the model needs sooner), for (a) on its
  confounded test images and (b) on clean test images, against a random order.
- **Cost.** Each method's fused predict+explain of a batch of 64 against the plain forward pass
  (``CNNKind.probs``), same batch, CPU time, channels-last as served, at 28 px and 64 px; and
  bench_predict's /predict aim, one task at a time: (render_predictions - forward) / forward for
  the served evidence now and before this change.

    .venv/bin/python -m benchmarks.bench_evidence [--quick] [--seeds 3] [--epochs 15] [--seeds-64 1]
"""
from __future__ import annotations

import argparse
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.explain.attribution import gaussian_blur as _blur, predict_with_gradcam
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.models.cnn import EVIDENCE_SMOOTH, CNNKind, ImageCNN
from ml_backend.models.common import fill_empty_with_saliency

from benchmarks import _common as C
from benchmarks.machine import describe, markdown
from benchmarks.xil.data import PROBLEMS
from benchmarks.xil.loop import Backend, PreparedProblem, prepare_problem, train_base
from benchmarks.xil.suite import METHODS, settings_for

NAME = "evidence"
TITLE = "Served evidence for the CNN: resolution, faithfulness, cost"
AIMS = ["After feedback, the served evidence mass on the confounder falls to <= 0.3x of its value before, on "
        "every image problem (here: a model trained on the clean twin against one trained on the confounded "
        "set, same confounded test images).",
        "The /predict overhead aim stays <= 1.5x the forward pass."]
PRIMARY = "decoy_digits_4"
OTHERS = ("decoy_digits", "edge_stripe", "random_patch", "stamp", "background", "colors")
DELETION_STEPS = 20
OCCLUSION_PATCH = 4


# --- candidate maps, each from one fused forward + backward pass --------------------------------

def conv_blocks(network: ImageCNN) -> list[nn.Module]:
    """The ReLU that ends each conv block, first to last (block 4 is ``cam_layer``)."""
    return [m for m in network.body if isinstance(m, nn.ReLU)]


@dataclass
class Pass:
    probs: torch.Tensor
    acts: dict[int, torch.Tensor]  # block -> its output (N, C, h, w)
    grads: dict[int, torch.Tensor]  # block -> d logit_pred / d output
    x: torch.Tensor
    x_grad: Optional[torch.Tensor]  # d logit_pred / d input


def fused_pass(network: ImageCNN, x: torch.Tensor, blocks: tuple[int, ...], input_grad: bool) -> Pass:
    """One forward pass for the prediction, one backward pass to the blocks (and input) asked for."""
    relus, acts = conv_blocks(network), {}
    handles = [relus[b - 1].register_forward_hook(lambda _m, _i, out, b=b: acts.__setitem__(b, out)) for b in blocks]
    network.eval()
    try:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(input_grad)
            logits = network(xx)
            target = logits.argmax(1)
            wrt = [acts[b] for b in blocks] + ([xx] if input_grad else [])
            grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), wrt)
    finally:
        for h in handles:
            h.remove()
    return Pass(torch.softmax(logits.detach(), 1), {b: acts[b].detach() for b in blocks},
                dict(zip(blocks, grads)), x, grads[-1] if input_grad else None)


def _up(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _norm(m: torch.Tensor) -> torch.Tensor:
    return m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    return _blur(m[:, None], sigma)[:, 0]


def gradcam(p: Pass, b: int) -> torch.Tensor:
    a, g = p.acts[b], p.grads[b]
    return _up(torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)), tuple(p.x.shape[-2:]))


def layercam(p: Pass, b: int) -> torch.Tensor:
    return _up((torch.relu(p.grads[b]) * p.acts[b]).sum(1), tuple(p.x.shape[-2:]))


def _smoothing_px(p: Pass) -> float:
    """The served evidence's smoothing, in input pixels: the same share of the side at every size."""
    return EVIDENCE_SMOOTH * min(p.x.shape[-2:])


def smooth_ixg(p: Pass) -> torch.Tensor:
    """ReLU of the smoothed *signed* input x gradient: +/- contributions within ~sigma cancel first."""
    return torch.relu(gaussian_blur((p.x * p.x_grad).sum(1), _smoothing_px(p)))


def smooth_gxa(p: Pass, b: int) -> torch.Tensor:
    """The same at block b's output: signed gradient x activation, smoothed (sigma in its cells)."""
    stride = 2 ** (b - 1)
    share = gaussian_blur((p.grads[b] * p.acts[b]).sum(1), _smoothing_px(p) / stride)
    return _up(torch.relu(share), tuple(p.x.shape[-2:]))


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    blocks: tuple[int, ...]
    input_grad: bool
    combine: Callable[[Pass], torch.Tensor]


CANDIDATES = (
    Candidate("gradcam_b4", "Grad-CAM, block 4 (served before)", (4,), False, lambda p: gradcam(p, 4)),
    Candidate("gradcam_b3", "Grad-CAM, block 3", (3,), False, lambda p: gradcam(p, 3)),
    Candidate("gradcam_b2", "Grad-CAM, block 2", (2,), False, lambda p: gradcam(p, 2)),
    Candidate("layercam_b3", "Layer-CAM, block 3", (3,), False, lambda p: layercam(p, 3)),
    Candidate("gradcam_mean_234", "mean of Grad-CAMs, blocks 2-4", (2, 3, 4), False,
              lambda p: (_norm(gradcam(p, 2)) + _norm(gradcam(p, 3)) + _norm(gradcam(p, 4))) / 3),
    Candidate("layercam_prod_234", "Layer-CAM b2 x Layer-CAM b3 x Grad-CAM b4", (2, 3, 4), False,
              lambda p: _norm(layercam(p, 2)) * _norm(layercam(p, 3)) * _norm(gradcam(p, 4))),
    Candidate("gxa_b3_smooth_sq", "gradient x activation, block 3, smoothed, squared", (3,), False,
              lambda p: _norm(smooth_gxa(p, 3)) ** 2),
    Candidate("gxa_b2_smooth_sq", "gradient x activation, block 2, smoothed, squared", (2,), False,
              lambda p: _norm(smooth_gxa(p, 2)) ** 2),
    Candidate("ixg", "input x gradient (abs)", (), True, lambda p: (p.x * p.x_grad).abs().sum(1)),
    Candidate("ixg_smooth", "input x gradient, smoothed", (), True, smooth_ixg),
    Candidate("ixg_smooth_x_gradcam_b3", "input x gradient, smoothed, x Grad-CAM block 3", (3,), True,
              lambda p: _norm(smooth_ixg(p)) * _norm(gradcam(p, 3))),
    Candidate("ixg_smooth_sq", "input x gradient, smoothed, squared", (), True, lambda p: _norm(smooth_ixg(p)) ** 2),
)
SERVED = "served"  # CNNKind.predict_and_explain(x, "gradcam"), as /predict runs it


def candidate_maps(network: ImageCNN, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(probs, {candidate: (N, H, W) map}) for every candidate, plus the served map."""
    p = fused_pass(network, x, (2, 3, 4), True)
    maps = {c.key: c.combine(p).clamp_min(0) for c in CANDIDATES}
    _, maps[SERVED] = CNNKind(network).predict_and_explain(x, "gradcam")
    return p.probs, maps


def run_candidate(network: ImageCNN, x: torch.Tensor, c: Candidate) -> torch.Tensor:
    """What serving the candidate would cost: its own fused pass and its map."""
    return c.combine(fused_pass(network, x, c.blocks, c.input_grad))


@torch.no_grad()
def occlusion(network: ImageCNN, x: torch.Tensor, patch: int = OCCLUSION_PATCH) -> torch.Tensor:
    """ReLU of the predicted-class logit drop when each patch x patch square is zeroed."""
    network.eval()
    logits = network(x)
    target = logits.argmax(1)[:, None]
    base = logits.gather(1, target)[:, 0]
    rel = torch.zeros(x.shape[0], *x.shape[-2:])
    for r in range(0, x.shape[-2], patch):
        for c in range(0, x.shape[-1], patch):
            x0 = x.clone()
            x0[:, :, r:r + patch, c:c + patch] = 0
            rel[:, r:r + patch, c:c + patch] = (base - network(x0).gather(1, target)[:, 0])[:, None, None]
    return rel.clamp_min(0)


# --- measures -------------------------------------------------------------------------------

@torch.no_grad()
def deletion_auc(network: ImageCNN, x: torch.Tensor, rel: Optional[torch.Tensor], fill: str, seed: int = 0) -> float:
    """Mean over images of the area under p(predicted class) as the top-ranked pixels are deleted.

    ``rel`` None: a random order. Ties (flat or zero regions of a map) are broken at random.
    """
    network.eval()
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(h * w, generator=gen)
    if rel is None:
        order = perm.expand(n, -1)
    else:
        order = perm[torch.argsort(-rel.flatten(1)[:, perm], dim=1, stable=True)]
    probs = torch.softmax(network(x), 1)
    target = probs.argmax(1)[:, None]
    curve = [probs.gather(1, target)[:, 0]]
    value = torch.zeros_like(x) if fill == "zero" else x.mean((2, 3), keepdim=True).expand_as(x)
    for k in range(1, DELETION_STEPS + 1):
        cut = int(round(k / DELETION_STEPS * h * w))
        deleted = torch.zeros(n, h * w, dtype=torch.bool)
        deleted.scatter_(1, order[:, :cut], True)
        xd = torch.where(deleted.view(n, 1, h, w), value, x)
        curve.append(torch.softmax(network(xd), 1).gather(1, target)[:, 0])
    ys = torch.stack(curve, 1).numpy()
    return float(np.trapezoid(ys, dx=1.0 / DELETION_STEPS, axis=1).mean())


@torch.no_grad()
def reliance(network: ImageCNN, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean drop of the predicted class's probability when the confounder's pixels are zeroed."""
    network.eval()
    probs = torch.softmax(network(x), 1)
    target = probs.argmax(1)[:, None]
    zeroed = torch.softmax(network(x * (~mask[:, None]).to(x.dtype)), 1)
    return float((probs.gather(1, target) - zeroed.gather(1, target)).mean())


def trained_pair(problem_name: str, seed: int, epochs: int, image_size: Optional[int] = None
                 ) -> tuple[PreparedProblem, ImageCNN, ImageCNN]:
    """(prepared problem, CNN trained on the confounded set, CNN trained on the clean twin)."""
    problem = PROBLEMS[problem_name](seed)
    settings = settings_for(image_size or problem.image_size, METHODS["none"])
    prepared = prepare_problem(problem, settings)
    backend = Backend(prepared, settings, torch.device("cpu"))
    confounded, _ = train_base(backend, clean=False, epochs=epochs, seed=seed)
    clean, _ = train_base(backend, clean=True, epochs=epochs, seed=seed)
    return prepared, confounded.network.eval(), clean.network.eval()


def masses(network: ImageCNN, x: torch.Tensor, mask: torch.Tensor, patch: int) -> dict[str, float]:
    _, maps = candidate_maps(network, x)
    maps["occlusion"] = occlusion(network, x, patch)
    return {k: irrelevant_mass(m.detach(), mask) for k, m in maps.items()}


def resolution_record(prepared: PreparedProblem, conf: ImageCNN, clean: ImageCNN, patch: int) -> dict[str, Any]:
    x, mask = prepared.test.x, prepared.test.confounder
    return {"area_share": float(mask.float().mean()), "image_size": int(x.shape[-1]),
            "confounded": masses(conf, x, mask, patch), "clean": masses(clean, x, mask, patch),
            "reliance_confounded": reliance(conf, x, mask), "reliance_clean": reliance(clean, x, mask)}


def _cpu_ms(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()  # this process only: the machine's other load does not count
    fn()
    return 1000 * (time.process_time() - t0)


def time_costs(side: int, batch: int, reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per candidate (and served): median of per-pair (predict+explain) / forward ratios, and ms."""
    torch.manual_seed(seed)
    kind = CNNKind(ImageCNN(10, image_size=side)).to(torch.device("cpu"))
    network = kind.network.eval()
    x = torch.rand(batch, 3, side, side)
    runners: dict[str, Callable[[], Any]] = {c.key: (lambda c=c: run_candidate(network, x, c)) for c in CANDIDATES}
    runners[SERVED] = lambda: kind.predict_and_explain(x, "gradcam")
    out = {}
    for key, fn in runners.items():
        for _ in range(3):  # warm-up: allocator, oneDNN primitives
            kind.probs(x)
            fn()
        fwd, exp = [], []
        for _ in range(reps):
            fwd.append(_cpu_ms(lambda: kind.probs(x)))
            exp.append(_cpu_ms(fn))
        out[key] = {"forward_ms": float(np.median(fwd)), "explain_ms": float(np.median(exp)),
                    "ratio": float(np.median(np.array(exp) / np.array(fwd)))}
    return out


def _served_before(kind: CNNKind, x: torch.Tensor, method: str, mc_samples: int = 10
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CNNKind.predict_and_explain as it was: Grad-CAM on the last block, fused."""
    probs, cam = predict_with_gradcam(kind.network, x)
    return probs, fill_empty_with_saliency(kind.network, x, probs.argmax(dim=1), cam)


def served_overhead(orig: int, side: int, reps: int) -> dict[str, float]:
    """bench_predict's aim, one task at a time: (render_predictions - forward) / forward, now and before."""
    from ml_backend.config import Settings
    from ml_backend.data.fetch import Fetcher
    from ml_backend.data.prepare import prepare_task
    from ml_backend.rendering import render_predictions
    from ml_backend.store import LoadedModel

    from benchmarks.bench_predict import _context, _image_model

    ctx = _context(C.LABEL_CONFIGS / "image_classification_evidence.xml", "gradcam")
    now, before = _image_model(side, torch.device("cpu")), _image_model(side, torch.device("cpu"))
    before.predict_and_explain = types.MethodType(_served_before, before)  # this instance only
    item = prepare_task(ctx.schema, now, C.ls_task(1, {"image": C.data_uri(C.sample_image(orig))}), Fetcher(Settings()))
    x = item.tensor[None].contiguous(memory_format=torch.channels_last)
    loaded = {k: LoadedModel("v1", m, ctx.schema.classes) for k, m in (("now", now), ("before", before))}
    runs = {"forward": lambda: now.probs(x).max(dim=1),
            **{k: (lambda k=k: render_predictions(ctx, loaded[k], [item])) for k in loaded}}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(reps + 3):
        for k, fn in runs.items():
            ms = _cpu_ms(fn)
            if rep >= 3:
                times[k].append(ms)
    fwd = np.array(times["forward"])
    out = {"forward_ms": float(np.median(fwd))}
    for k in loaded:
        out[f"{k}_render_ms"] = float(np.median(times[k]))
        out[f"{k}_overhead"] = float(np.median((np.array(times[k]) - fwd) / fwd))
    return out


# --- report ---------------------------------------------------------------------------------

def _ratio(rec: dict[str, Any], key: str) -> float:
    return rec["clean"][key] / rec["confounded"][key]


def resolution_rows(records: list[dict[str, Any]], keys: list[str], labels: dict[str, str],
                    extra: Callable[[str], list[Any]] = lambda k: []) -> list[list[Any]]:
    rows = []
    for key in keys:
        ratios = [_ratio(r, key) for r in records]
        rows.append([labels[key], float(np.mean([r["confounded"][key] for r in records])),
                     float(np.mean([r["clean"][key] for r in records])),
                     " / ".join(f"{v:.2f}" for v in ratios), max(ratios), *extra(key)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the primary problem only, fewer timings")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the primary problem (decoy digits, 4 corners)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of each CNN at 28 px")
    parser.add_argument("--seeds-64", type=int, default=1, help="seeds of the primary problem at 64 px (0: skip)")
    parser.add_argument("--epochs-64", type=int, default=30, help="training epochs of each CNN at 64 px")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    C.set_threads(args.threads)
    machine = describe("cpu")
    started = time.time()
    seeds = list(range(1 if args.quick else args.seeds))
    labels = {c.key: c.label for c in CANDIDATES}
    labels[SERVED] = "**served now** (CNNKind, 'gradcam')"
    labels["occlusion"] = "occlusion (reference, not servable)"
    keys = [c.key for c in CANDIDATES] + [SERVED, "occlusion"]
    data: dict[str, Any] = {"primary": [], "primary_64": [], "others": [], "deletion": {}, "cost": {},
                            "served_overhead": []}

    # resolution and faithfulness on the primary problem
    deletion: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        prepared, conf, clean = trained_pair(PRIMARY, seed, args.epochs)
        rec = {"seed": seed, **resolution_record(prepared, conf, clean, OCCLUSION_PATCH)}
        data["primary"].append(rec)
        for which, net, xs in (("confounded", conf, prepared.test.x), ("clean", clean, prepared.clean_test.x)):
            _, maps = candidate_maps(net, xs)
            maps["occlusion"] = occlusion(net, xs)
            maps["random"] = None
            for key, rel in maps.items():
                for fill in ("zero", "mean"):
                    deletion.setdefault(key, {}).setdefault(f"{which}_{fill}", []).append(
                        deletion_auc(net, xs, rel, fill, seed))
        print(f"[{PRIMARY} seed {seed}] {time.perf_counter() - t0:.0f}s: "
              + ", ".join(f"{k} {_ratio(rec, k):.2f}" for k in keys), flush=True)
    data["deletion"] = {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in deletion.items()}

    if not args.quick:
        for seed in range(args.seeds_64):
            t0 = time.perf_counter()
            prepared, conf, clean = trained_pair(PRIMARY, seed, args.epochs_64, image_size=64)
            rec = {"seed": seed, **resolution_record(prepared, conf, clean, 8)}
            data["primary_64"].append(rec)
            print(f"[{PRIMARY} at 64 px, seed {seed}] {time.perf_counter() - t0:.0f}s: "
                  + ", ".join(f"{k} {_ratio(rec, k):.2f}" for k in keys), flush=True)
        for name in OTHERS:
            t0 = time.perf_counter()
            prepared, conf, clean = trained_pair(name, 0, args.epochs)
            data["others"].append({"problem": name, **resolution_record(prepared, conf, clean, OCCLUSION_PATCH)})
            print(f"[{name}] {time.perf_counter() - t0:.0f}s: "
                  + ", ".join(f"{k} {_ratio(data['others'][-1], k):.2f}" for k in keys), flush=True)

    reps = 10 if args.quick else 40
    for side in (28, 64):
        data["cost"][str(side)] = time_costs(side, 64, reps)
        print(f"[cost {side}px] " + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in data["cost"][str(side)].items()),
              flush=True)
    for orig, side in ((28, 28), (64, 64), (224, 64), (224, 224)):
        row = {"case": f"{orig} -> {side}", **served_overhead(orig, side, 15 if args.quick else 60)}
        data["served_overhead"].append(row)
        print(f"[served {row['case']}] now {row['now_overhead']:.2f}x, before {row['before_overhead']:.2f}x", flush=True)

    # tables
    prim = data["primary"]
    dele, cost = data["deletion"], data["cost"]
    rows = resolution_rows(prim, keys, labels, lambda k: [
        dele[k]["confounded_zero"], dele[k]["clean_zero"], dele[k]["clean_mean"],
        cost["28"][k]["ratio"] if k in cost["28"] else None, cost["64"][k]["ratio"] if k in cost["64"] else None])
    rows.append(["random order (deletion baseline)", None, None, "", None, dele["random"]["confounded_zero"],
                 dele["random"]["clean_zero"], dele["random"]["clean_mean"], None, None])
    area = float(np.mean([r["area_share"] for r in prim]))
    tables = [{
        "title": f"Decoy digits, four corners, 28 px: swatch mass, deletion AUC, cost ({len(seeds)} seeds)",
        "caption": f"Mass on the swatches (area share {area:.3f}) on the confounded test images for (a) the CNN "
                   f"trained on the confounded set and (b) the one trained on the clean twin, mean over seeds; "
                   f"ratio (b)/(a) per seed and the worst (aim <= 0.3). Deletion AUC: p(predicted class) as the "
                   f"top-ranked pixels are replaced by 0 or the image's channel mean, mean over seeds, lower = more "
                   f"faithful: (a) on its confounded test images, (b) on clean test images. Cost: fused predict+"
                   f"explain / plain forward, batch 64, CPU time, {args.threads} thread(s), at 28 and 64 px (table "
                   f"below). {args.epochs} epochs per CNN. Smoothing: a Gaussian of {EVIDENCE_SMOOTH:.3f} x the side "
                   f"(1.5 px at 28 px). Occlusion: {OCCLUSION_PATCH}x{OCCLUSION_PATCH}-px squares zeroed, ReLU of the "
                   f"logit drop ({(28 // OCCLUSION_PATCH) ** 2 + 1} passes). The confounded CNN's predicted-class "
                   f"probability drops by {np.mean([r['reliance_confounded'] for r in prim]):.2f} when the swatches "
                   f"are zeroed, the clean CNN's by {np.mean([r['reliance_clean'] for r in prim]):.3f}.",
        "markdown": C.md_table(["method", "mass (a) confounded", "mass (b) clean", "ratio per seed", "worst ratio",
                                "deletion AUC (a), 0", "deletion AUC (b), 0", "deletion AUC (b), mean",
                                "cost 28 px", "cost 64 px"], rows, "l" + "r" * 9)}]
    if data["primary_64"]:
        p64 = data["primary_64"]
        tables.append({
            "title": f"The same at 64 px, the default input ({len(p64)} seed(s), {args.epochs_64} epochs)",
            "caption": "The 28-px images read at 64 px as the backend reads them (bilinear), masks at 64 px (area share "
                       f"{np.mean([r['area_share'] for r in p64]):.3f}); the served evidence reads block 3 (16x16) here. "
                       "Occlusion: 8x8-px squares. Reliance (a) / (b): "
                       + ", ".join(f"{r['reliance_confounded']:.2f} / {r['reliance_clean']:.3f}" for r in p64) + ".",
            "markdown": C.md_table(["method", "mass (a) confounded", "mass (b) clean", "ratio per seed", "worst ratio"],
                                   resolution_rows(p64, keys, labels), "l" + "r" * 4)})
    if data["others"]:
        show = ["gradcam_b4", "gradcam_b3", "layercam_prod_234", "gxa_b2_smooth_sq", "ixg_smooth",
                "ixg_smooth_x_gradcam_b3", "ixg_smooth_sq", SERVED, "occlusion"]
        short = {"gradcam_b4": "Grad-CAM b4 (before)", "gradcam_b3": "Grad-CAM b3",
                 "layercam_prod_234": "Layer-CAM product", "gxa_b2_smooth_sq": "g x a b2 smoothed^2",
                 "ixg_smooth": "i x g smoothed", "ixg_smooth_x_gradcam_b3": "i x g smoothed x Grad-CAM b3",
                 "ixg_smooth_sq": "i x g smoothed^2", SERVED: "served now", "occlusion": "occlusion"}
        tables.append({
            "title": "Every image problem (seed 0, native size): ratio (b)/(a) of the mass on the confounder",
            "caption": "Each problem's confounded test images and confounder masks. Reliance = drop of the predicted "
                       "class's probability when the confounder's pixels are zeroed, (a) / (b). Where (a) relies on "
                       "the confounder no more than (b) does, the causal reference (occlusion) shows no drop either "
                       "and no evidence method can (or should).",
            "markdown": C.md_table(["problem", "size", "area share", "reliance (a) / (b)"] + [short[k] for k in show],
                                   [[o["problem"], o["image_size"], o["area_share"],
                                     f"{o['reliance_confounded']:.2f} / {o['reliance_clean']:.2f}"]
                                    + [_ratio(o, k) for k in show] for o in data["others"]],
                                   "l" + "r" * (len(show) + 3))})
    tables.append({"title": "Cost: fused predict+explain vs the plain forward pass, batch 64 (p50 CPU ms)",
                   "caption": "Untrained ImageCNN (width 16), random images, channels-last as served; each method's "
                              "own single pass (hooks and gradients only where it needs them); ratio = median of "
                              "per-pair ratios. The served row reads the input at 28 px and block 3 at 64 px.",
                   "markdown": C.md_table(["method", "forward 28 px", "predict+explain 28 px", "ratio 28 px",
                                           "forward 64 px", "predict+explain 64 px", "ratio 64 px"],
                                          [[labels[k], cost["28"][k]["forward_ms"], cost["28"][k]["explain_ms"],
                                            cost["28"][k]["ratio"], cost["64"][k]["forward_ms"],
                                            cost["64"][k]["explain_ms"], cost["64"][k]["ratio"]]
                                           for k in cost["28"]])})
    tables.append({"title": "/predict overhead as served, one task at a time: (render_predictions - forward) / forward",
                   "caption": "bench_predict's aim (<= 1.5x at 224 px: rows 224 -> 224 and 224 -> 64), measured the way "
                              "its stage table is (render_predictions: forward, evidence, regions, RLE), here in CPU "
                              "time, for the served evidence now and before this change (Grad-CAM on the last block), "
                              "alternating; median of per-repetition ratios.",
                   "markdown": C.md_table(["image -> model input", "forward ms", "render now ms", "overhead now",
                                           "render before ms", "overhead before"],
                                          [[r["case"], r["forward_ms"], r["now_render_ms"], r["now_overhead"],
                                            r["before_render_ms"], r["before_overhead"]]
                                           for r in data["served_overhead"]])})
    notes = [f"Run took {time.time() - started:.0f} s; torch threads {torch.get_num_threads()}; "
             f"{'--quick: preliminary' if args.quick else 'full run'}."]
    C.print_report(TITLE, markdown(machine), tables, notes)
    path = C.write_results(NAME, {"name": NAME, "title": TITLE, "command": C.command_line(), "quick": args.quick,
                                  "machine": machine, "aims": AIMS, "tables": tables, "notes": notes, "data": data,
                                  "labels": labels, "seconds": time.time() - started})
    print(f"\nresults: {path.relative_to(C.ROOT)}")


if __name__ == "__main__":
    main()
