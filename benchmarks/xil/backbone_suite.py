"""Pretrained backbones through the backend's own loop (issue 23): the path a team with real photos
or documents takes, measured beside the CNN's rows of ``benchmarks/results/xil.json``.

    .venv/bin/python -m benchmarks.xil.backbone_suite                       # every kind, problem, 3 seeds
    .venv/bin/python -m benchmarks.xil.backbone_suite --kinds resnet_frozen --problems decoy_digits_4
    .venv/bin/python -m benchmarks.xil.backbone_suite --quick               # CI: four corners, ResNet frozen
    .venv/bin/python -m benchmarks.xil.backbone_suite --report-only         # rebuild the docs section only

The backbones are the benchmark's own (``benchmarks/xil/backbones.py``): a ResNet and a ViT trained
self-supervised on the unlabelled digit images, a BERT on a generated corpus, none with a target label,
each read at its own input size by its own processor or tokenizer. A kind is a backbone and how it
trains (``frozen``: the head alone, a logistic regression on its features; ``finetune``: the head and
the last 2 blocks). Each kind runs exactly as a project with ``XIL_BACKBONE`` and ``XIL_TRAIN_MODE``:
``benchmarks.xil.loop`` (ranking, Label Studio annotation JSON, ``fit_examples``), the shipped
defaults, and the project's feature cache as the training job keeps it.

Per problem, seed and kind: the kind trained on the clean training set (its clean bound; for a frozen
kind also its head's held-out accuracy on the clean test set beside a cross-validated logistic
regression on the same features), trained on the confounded set (N=0), then rounds of corrections at
0.5%, 1% and 5% of the training set, fine-tuned without and with the default strategies, ranked by
entropy and at random. Results: ``benchmarks/results/xil_backbones.json``; ``docs/xil-benchmarks.md``
gets the generated section "Pretrained backbones" (``markdown``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ml_backend.config import ProjectSettings
from ml_backend.models.feature_cache import FeatureCache

from benchmarks.machine import describe, markdown as machine_markdown
from benchmarks.xil.loop import Backend, PreparedProblem, prepare_problem, run_curve, train_base
from benchmarks.xil.report import _ms, _table, gap_recovered
from benchmarks.xil.suite import BUDGETS, PROBLEMS, TRAIN_SIZE, merge_records

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "xil_backbones.json"
BASE_EPOCHS, FINETUNE_EPOCHS = 20, 8  # the CNN suite's schedule (a frozen head is fitted whole)
FEATURE_CACHE_MB = 512
# a frozen head's penalty: chosen by 3-fold cross-validation (training/head.py select_c); records
# without the field were fitted at C = 1
HEAD = "cv"


@dataclass(frozen=True)
class Kind:
    label: str
    modality: str  # "image" | "text"
    backbone: str  # a family of benchmarks.xil.backbones
    train_mode: str  # "frozen" | "finetune"
    finetune_lr_scale: Optional[float] = None  # None: the shipped XIL_FINETUNE_LR_SCALE


KINDS = {
    "resnet_frozen": Kind("ResNet (self-supervised), frozen", "image", "resnet", "frozen"),
    "resnet_finetune": Kind("ResNet (self-supervised), fine-tuned", "image", "resnet", "finetune"),
    "vit_frozen": Kind("ViT (self-supervised), frozen", "image", "vit", "frozen"),
    "vit_finetune": Kind("ViT (self-supervised), fine-tuned", "image", "vit", "finetune"),
    "bert_frozen": Kind("BERT (generated corpus), frozen", "text", "bert", "frozen"),
    "bert_finetune": Kind("BERT (generated corpus), fine-tuned", "text", "bert", "finetune"),
    # before XIL_FINETUNE_LR_SCALE: the blocks learned at the head's rate
    "resnet_finetune_lr1": Kind("ResNet (self-supervised), fine-tuned, blocks at the head's rate", "image", "resnet",
                                "finetune", 1.0),
    "bert_finetune_lr1": Kind("BERT (generated corpus), fine-tuned, blocks at the head's rate", "text", "bert",
                              "finetune", 1.0),
}
OPTIONAL_KINDS = ("resnet_finetune_lr1", "bert_finetune_lr1")  # comparisons: not run by default
IMAGE_PROBLEMS = ["decoy_digits_4", "decoy_digits", "edge_stripe", "random_patch", "background", "stamp", "pattern",
                  "moving_mark", "class_tags"]
TEXT_PROBLEMS = ["decoy_text", "text_variants", "text_phrase", "text_tags"]
PROBED_ONLY = ["colors"]  # run with --problems colors: the probe says the backbones cannot read it (NOTES)


def backbone_dir(kind: Kind) -> Path:
    from benchmarks.xil import backbones

    return backbones.text_backbone() if kind.modality == "text" else backbones.image_backbone(kind.backbone)


def kind_settings(kind: Kind, feedback: bool, acquisition: str = "entropy") -> ProjectSettings:
    """A project's shipped settings with this backbone and train mode; feedback: the default strategies."""
    base = ProjectSettings()
    lr_scale = base.finetune_lr_scale if kind.finetune_lr_scale is None else kind.finetune_lr_scale
    return dataclasses.replace(base, backbone=str(backbone_dir(kind)), train_mode=kind.train_mode,
                               finetune_lr_scale=lr_scale, strategies=base.strategies if feedback else (),
                               acquisition=acquisition).validate()


def probe(model: Any, prepared: PreparedProblem) -> dict[str, float]:
    """The frozen head's held-out accuracy beside a cross-validated logistic regression on the same
    standardised features, both fitted on the clean training set and read on held-out data of its
    kind: the clean test split, or the test split where the clean twin carries the confounder
    (independent of the label, as at test)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ml_backend.training.trainer import accuracy

    problem = prepared.problem
    test = prepared.test if problem.clean_carries_confounder or prepared.clean_test is None else prepared.clean_test
    train = prepared.clean_train

    def features(x: torch.Tensor) -> np.ndarray:
        return model.frozen_features(x).cpu().numpy()

    regression = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=3000))
    regression.fit(features(train.x), train.y.numpy())
    return {"head": float(accuracy(model, test.x, test.y)),
            "logistic_regression": float(regression.score(features(test.x), test.y.numpy()))}


def run(problems: list[str], seeds: list[int], kinds: list[str], budgets: dict[str, list[int]],
        acquisitions: tuple[str, ...], save: Callable[[list[dict[str, Any]]], None], records: list[dict[str, Any]],
        base_epochs: int = BASE_EPOCHS, finetune_epochs: int = FINETUNE_EPOCHS, log: Callable[[str], None] = print,
        bounds_only: bool = False) -> list[dict[str, Any]]:
    """``bounds_only``: the clean and decorrelated bounds alone (added to earlier curves)."""
    done = {_key(r) for r in records}
    device = torch.device("cpu")
    for problem in problems:
        for seed in seeds:
            data = PROBLEMS[problem](seed)
            mine = [k for k in kinds if KINDS[k].modality == data.kind]
            for name in mine:
                kind = KINDS[name]
                runs = [] if bounds_only else [("none", acquisitions[0])] + [("default", a) for a in acquisitions]
                runs = [(m, a) for m, a in runs if (problem, seed, f"{name}:{m}", a) not in done]
                bounds = [b for b in ("clean", "decorrelated") if (problem, seed, f"{name}:{b}", None) not in done
                          and (b == "clean" or data.decorrelated_train is not None)]
                if not runs and not bounds:
                    continue
                started = time.perf_counter()
                plain = kind_settings(kind, feedback=False)
                prepared = prepare_problem(data, plain, decorrelated="decorrelated" in bounds)
                with tempfile.TemporaryDirectory() as tmp:
                    cache = FeatureCache(Path(tmp) / "features", FEATURE_CACHE_MB)
                    log(f"[{problem} seed {seed} {name}] data ready in {time.perf_counter() - started:.0f}s")
                    backend = Backend(prepared, plain, device, cache)
                    for bound in bounds:
                        epochs = base_epochs + finetune_epochs
                        model, seconds = train_base(backend, clean=True, epochs=epochs, seed=seed,
                                                    decorrelated=bound == "decorrelated")
                        point = {"n": 0, **backend.evaluate(model), "train_seconds": seconds}
                        rec = {"problem": problem, "seed": seed, "method": f"{name}:{bound}", "kind": name,
                               "backbone": Path(plain.backbone).name, "acquisition": None, "points": [point],
                               "epochs": epochs, "finetune_lr_scale": plain.finetune_lr_scale, "head": HEAD}
                        if kind.train_mode == "frozen" and bound == "clean":
                            rec["probe"] = probe(model, prepared)
                        records.append(rec)
                        log(f"  {bound}: acc {point['accuracy']:.3f} clean test {point.get('clean_test_accuracy')}"
                            f" probe {rec.get('probe')} ({seconds:.0f}s)")
                        save(records)
                    if not runs:
                        continue
                    base, base_seconds = train_base(backend, clean=False, epochs=base_epochs, seed=seed)
                    for method, acquisition in runs:
                        settings = kind_settings(kind, feedback=method == "default", acquisition=acquisition)
                        t0 = time.perf_counter()
                        points = run_curve(Backend(prepared, settings, device, cache), base,
                                           budgets[problem], finetune_epochs, seed)
                        records.append({"problem": problem, "seed": seed, "method": f"{name}:{method}", "kind": name,
                                        "backbone": Path(settings.backbone).name, "acquisition": acquisition,
                                        "points": points, "base_seconds": base_seconds,
                                        "wall_seconds": time.perf_counter() - t0, "epochs": finetune_epochs,
                                        "finetune_lr_scale": settings.finetune_lr_scale, "head": HEAD})
                        log(f"  {method} [{acquisition}]: " + " ".join(f"N={p['n']}:{p['accuracy']:.3f}" for p in points)
                            + f" mass {points[-1]['confounder_mass']} ({time.perf_counter() - t0:.0f}s)")
                        save(records)
    return records


def _key(r: dict[str, Any]) -> tuple:
    return (r["problem"], r["seed"], r["method"], r.get("acquisition"))


# ----------------------------------------------------------------------------------- report

def _acc(recs: list[dict[str, Any]], n: int) -> list[float]:
    return [p["accuracy"] for r in recs for p in r["points"] if p["n"] == n]


def tables(records: list[dict[str, Any]], cnn: list[dict[str, Any]], gap_min: float = 0.02) -> list[dict[str, str]]:
    """One table per problem and kind, the CNN's rows beside, and the probe table."""
    out = []
    for problem in [p for p in IMAGE_PROBLEMS + TEXT_PROBLEMS if any(r["problem"] == p for r in records)]:
        for name in [k for k in KINDS if any(r["problem"] == problem and r["kind"] == k for r in records)]:
            mine = [r for r in records if r["problem"] == problem and r["kind"] == name]
            finished = {r["seed"] for r in mine if r["method"] == f"{name}:default"}  # a seed cut short is left out
            mine = [r for r in mine if r["seed"] in finished]
            budgets = sorted({p["n"] for r in mine for p in r["points"] if p["n"] > 0})
            if not budgets:  # a clean bound alone: no rounds ran yet
                continue
            clean = _acc([r for r in mine if r["method"] == f"{name}:clean"], 0)
            decorrelated = _acc([r for r in mine if r["method"] == f"{name}:decorrelated"], 0)
            bound = decorrelated or clean  # the upper bound: the confounder present, not following the label
            none = [r for r in mine if r["method"] == f"{name}:none"]
            has_gap = bool(bound and none) and np.mean(bound) - np.mean(_acc(none, budgets[-1]) or [1.0]) >= gap_min
            rows = []

            def row(label: str, recs: list[dict[str, Any]], feedback: bool) -> list[str]:  # noqa: E306
                cells = [label, str(len(recs)), _ms(_acc(recs, 0))] + [_ms(_acc(recs, n)) for n in budgets]
                if feedback and has_gap:
                    shares = [gap_recovered(_acc(recs, n), _acc(none, n), bound) for n in budgets]
                    cells.append(" / ".join("n/a" if g is None else f"{100 * g:.0f}%" for g in shares))
                elif feedback:
                    harm = [np.mean(_acc(recs, n)) - np.mean(_acc(none, n)) for n in budgets
                            if _acc(recs, n) and _acc(none, n)]
                    cells.append("no gap" + (f" (Δ {min(harm):+.3f})" if harm else ""))
                else:
                    cells.append("")
                mass = [p["confounder_mass"] for r in recs for p in r["points"]
                        if p["n"] == budgets[-1] and p["confounder_mass"] is not None]
                cells.append(_ms(mass))
                return cells

            rows.append(row(f"{KINDS[name].label}, no feedback", none, False))
            for acquisition in ("entropy", "random"):
                recs = [r for r in mine if r["method"] == f"{name}:default" and r["acquisition"] == acquisition]
                if recs:
                    rows.append(row(f"{KINDS[name].label}, the default [{acquisition}]", recs, True))
            rows.append([f"{KINDS[name].label}, clean training set", str(len(clean)), _ms(clean)]
                        + [""] * (len(budgets) + 2))
            if decorrelated:
                rows.append([f"{KINDS[name].label}, confounder independent of the label (the bound)",
                             str(len(decorrelated)), _ms(decorrelated)] + [""] * (len(budgets) + 2))
            theirs = [r for r in cnn if r["problem"] == problem]
            for method, label in (("none", "no feedback"), ("default", "the default"), ("clean", "clean training set")):
                recs = [r for r in theirs if r["method"] == method and r.get("acquisition") in ("entropy", "random", None)]
                if recs:
                    rows.append([f"CNN (from scratch), {label}", str(len({r['seed'] for r in recs})), _ms(_acc(recs, 0))]
                                + [_ms(_acc(recs, n)) for n in budgets] + ["", ""])
            size = TRAIN_SIZE.get(problem, 1000)
            header = (["model, feedback", "seeds", "acc N=0"] + [f"acc N={n} ({100 * n / size:.1f}%)" for n in budgets]
                      + ["gap recovered", f"mass N={budgets[-1]}"])
            old_head = KINDS[name].train_mode == "frozen" and any("head" not in r for r in mine)
            out.append({"title": f"{KINDS[name].label}{' (C = 1)' if old_head else ''}: {problem}",
                        "markdown": _table(header, rows)})
    probe_rows = []
    for name in KINDS:
        for problem in IMAGE_PROBLEMS + TEXT_PROBLEMS + PROBED_ONLY:
            probes = [r["probe"] for r in records if r["kind"] == name and r["problem"] == problem and "probe" in r]
            if probes:
                head = [p["head"] for p in probes]
                regression = [p["logistic_regression"] for p in probes]
                probe_rows.append([KINDS[name].label, problem, str(len(probes)), _ms(head), _ms(regression),
                                   f"{np.mean(head) - np.mean(regression):+.3f}"])
    if probe_rows:
        out.append({"title": "Frozen heads beside a tuned logistic regression",
                    "markdown": _table(["backbone", "problem (clean data)", "seeds", "frozen head, held out",
                                           "logistic regression (CV), held out", "head - regression"], probe_rows)})
    return out


def aims_table(records: list[dict[str, Any]], gap_min: float = 0.02) -> Optional[str]:
    """One row per problem, kind and ranking: the CNN's aims (>= 95% of the gap at 1% against the
    kind's bound, <= 1 point of harm without a gap, no fall from 1% to 5%, spread <= 3 points)."""
    rows = []
    for problem in IMAGE_PROBLEMS + TEXT_PROBLEMS:
        for name in [k for k in KINDS if k not in OPTIONAL_KINDS]:
            mine = [r for r in records if r["problem"] == problem and r["kind"] == name]
            budgets = sorted({p["n"] for r in mine for p in r["points"] if p["n"] > 0})
            if len(budgets) < 3:
                continue
            one, five = budgets[1], budgets[2]
            clean = _acc([r for r in mine if r["method"] == f"{name}:clean"], 0)
            decorrelated = _acc([r for r in mine if r["method"] == f"{name}:decorrelated"], 0)
            bound = decorrelated or clean
            none = [r for r in mine if r["method"] == f"{name}:none"]
            for acquisition in ("entropy", "random"):
                recs = [r for r in mine if r["method"] == f"{name}:default" and r["acquisition"] == acquisition]
                if not (recs and none and bound):
                    continue
                at_one, at_five = _acc(recs, one), _acc(recs, five)
                gap = np.mean(bound) - np.mean(_acc(none, one))
                missed = []
                if gap >= gap_min:
                    share = gap_recovered(at_one, _acc(none, one), bound)
                    verdict = f"{100 * share:.0f}%"
                    if share < 0.95:
                        missed.append("gap")
                else:
                    harm = min(np.mean(at_one) - np.mean(_acc(none, one)), np.mean(at_five) - np.mean(_acc(none, five)))
                    verdict = f"no gap (harm {100 * harm:+.1f})"
                    if harm < -0.01:
                        missed.append("harm")
                fall = 100 * (np.mean(at_five) - np.mean(at_one))
                spread = 100 * float(np.std(at_one, ddof=1)) if len(at_one) > 1 else 0.0
                if fall < -1:
                    missed.append("1% -> 5%")
                if spread > 3:
                    missed.append("spread")
                old_head = KINDS[name].train_mode == "frozen" and any("head" not in r for r in mine)
                rows.append([problem, KINDS[name].label + (" (C = 1)" if old_head else ""), acquisition, _ms(_acc(none, one)), _ms(at_one), _ms(at_five),
                             _ms(bound) + ("" if decorrelated else " (clean)"), verdict, f"{fall:+.1f}",
                             f"{spread:.1f}", "met" if not missed else "**missed**: " + ", ".join(missed)])
    if not rows:
        return None
    return _table(["problem", "kind", "ranking", "no feedback 1%", "default 1%", "default 5%", "bound",
                   "gap recovered (1%)", "1% → 5% (pts)", "spread (pts)", "aims"], rows)


def markdown() -> list[str]:
    """The generated section of docs/xil-benchmarks.md (empty without results)."""
    if not OUT.exists():
        return []
    payload = json.loads(OUT.read_text())
    main = RESULTS / "xil.json"
    cnn = json.loads(main.read_text()).get("records", []) if main.exists() else []
    lines = ["# Pretrained backbones", "", f"- Command: `{payload.get('command')}`; took "
             f"{payload.get('seconds', 0) / 60:.0f} min.", ""]
    lines += [f"- {n}" for n in NOTES]
    records = payload.get("records", [])
    missing = [f"{k} ({KINDS[k].label})" for k in KINDS
               if k not in OPTIONAL_KINDS and not any(r["kind"] == k for r in records)]
    if missing:
        lines.append(f"- **Not run yet:** {', '.join(missing)}; each runs with `--kinds NAME`.")
    lines.append("")
    if payload.get("machine"):
        lines += [machine_markdown(payload["machine"]), ""]
    aims = aims_table(records)
    if aims:
        lines += ["## The aims, per problem and kind", "", AIMS_NOTE, "", aims, ""]
    for table in tables(records, cnn):
        lines += [f"## {table['title']}", "", table["markdown"], ""]
    return lines


AIMS_NOTE = ("The bound is the kind trained with the confounder present but independent of the label where the "
             "problem has that twin (a frozen head ignores only what it saw vary), else on the clean twin "
             "('clean'). Gap recovered at 1% where the bound beats no feedback by >= 2 points (aim >= 95%); "
             "without a gap, harm = the worse of (default - no feedback) at 1% and 5% (aim >= -1 point); 1% -> 5% "
             "(aim: no fall, -1 tolerated as noise); spread = std over seeds at 1% (aim <= 3 points).")


NOTES = [
    "Written by `benchmarks/xil/backbone_suite.py` to `benchmarks/results/xil_backbones.json`; the CNN rows "
    "(from scratch, 28 px) are read from `benchmarks/results/xil.json` at the same budgets.",
    "The backbones are the benchmark's own, trained without the targets' labels (`benchmarks/xil/backbones.py`); "
    "each reads the task at its own input size. Frozen: the head is a logistic regression on standardised "
    "features fitted whole (`training/head.py`), its penalty C chosen from 0.1, 1, 10, 100 by 3-fold "
    "cross-validation in every fit (before 2026-12-07 C = 1: on the ViT's features of the pattern problem that "
    "head stayed 1.4-4.5 points under a cross-validated regression, which took C = 3-21; rows of a kind whose "
    "records predate the choice say '(C = 1)'); fine-tuned: the head and the last 2 blocks (those at a tenth of "
    "the head's learning rate, `XIL_FINETUNE_LR_SCALE`), 20 base epochs and 8 per round, as the CNN.",
    "Problems: the suite's digit problems and its text problems. Not run on backbones: the 160-px photo problem "
    "(the benchmark's backbones learned from digits; a photo backbone would have to be built first) and colors "
    "(which cells of a 5x5 grid share a colour): the digit backbones' features carry no such rule, a logistic "
    "regression on the ViT's reaches 0.54 where chance is 0.5 (the probe table), so no gap could be measured.",
    "Gap recovered is against the same kind's own gap: (acc - acc(same kind, no feedback)) / (its bound (the "
    "next note; the clean twin where there is no other) - acc(same kind, no feedback)) at the same N, on the means "
    "over seeds.",
    "The bound. Trained without the confounder, a frozen head never saw the confounder vary, and at test the "
    "confounder (of random shade) moves the features it reads: on a frozen backbone the clean twin is no upper "
    "bound (the corrected model, which saw counterexamples, beat it by up to 72% of the gap). Every problem whose "
    "clean twin has no confounder now also has a decorrelated twin, the confounder present but independent of the "
    "label (`benchmarks/xil/data.py` `decorrelated_train`), the bound the issues name; gaps are measured against "
    "it where it ran (the row 'confounder independent of the label'), else against the clean twin.",
    "Fine-tuned kinds ran with entropy ranking only (CPU time: 6-15 min per problem and seed on one core); the "
    "frozen and text kinds with entropy and random.",
    "Background (2026-12-06): the ResNets stayed at 84-88% of the gap because the processor's upsampling "
    "(28 to 112 px) blends the old class shade into every digit's edge, and the hard fill left that rim in every "
    "copy, still following the class (on seed 0, a logistic regression on the frozen features: 0.83-0.85 with "
    "the rule's marks and a hard fill, 0.91 with the planted marks, 0.93 with the rule's marks and the rim moved, "
    "0.955 trained on backgrounds of random shade). The fill now moves the blended rim with the background "
    "(`training/strategies/counterexamples.py` `background_fill`: a feather of side/56 px, none under 56 px, so "
    "the 28-px kinds are unchanged).",
    "Left open on the frozen ResNet's background (before the consistency term; after it 0.951 to 0.938, the "
    "note below): with entropy ranking it falls from 1% to 5% (0.908 to 0.887). "
    "Traced on seed 0: at 5% entropy's picks lean to the darkest and brightest shades (classes 9, 0, 3). A dark "
    "background's marks include the digit's faint edge (grays under 40 that stay above the shade), so the "
    "background rule's tolerance (the 95% quantile of the marked pixels' distance from the border colour, "
    "pooled) widens, and on bright backgrounds the rule then marks the digit's rim too: its precision on class 0 "
    "falls to 0.92 when every correction comes from class 9, and the head to 0.80 (0.90 with the planted marks). "
    "Dropping the corrected originals or making fewer copies did not help; a per-task minimum tolerance mends "
    "mixed picks (0.84 to 0.93) but not one-class picks (0.83). The concepts issue replaces this pixel rule.",
    "The widened problems on frozen backbones (2026-12-07, before the consistency term, the note below): the pattern recovers 85-92% of its "
    "gap (spread up to 7 points), short of the aim; a moving mark of random size and place is not corrected at 1% "
    "(-10% to 21% of an 11-point gap on the ResNet) and only partly at 5%; class tags 7-32% of a 15-point gap on "
    "the ResNet and 29-45% of a 3-point one on the ViT. The generalised marks explain it: on the CNN the pixel "
    "rules found 6% of the moving marks and 49% of the tags; carrying them by what they are, not where, is issue "
    "24's. Text tags open no gap on the frozen BERT (0.985 without feedback).",
    "After the place rule (before the consistency term, the note below; feedback/concepts.py `place`: content in the slots where marks recur, and their mirror "
    "images), which finds every class's tag on the CNN (recall 1.00), class tags on the frozen ResNet went to 44% "
    "(entropy) and 57% (random) of the 15-point gap at 1% and 56% at 5%, on the ViT to 58% and 68% of its 3-point "
    "gap: the marks now reach the tags, but a linear head on frozen features, given one copy per task with its "
    "tag replaced, still reads the tags beside the digit (the CNN, which learns its features, reaches 94%).",
    "Measured against the decorrelated bound, the frozen kinds' curves of the first six problems (run with C = 1 "
    "before 2026-12-07; re-run since, with the cross-validated head and the consistency term: the next note) "
    "fell short where the clean bound hid it: one corner 91-92%, edge "
    "stripe 89-97%, random patch on the ResNet 47-53% of a 6.5-point gap that the clean bound (0.869, under the "
    "no-feedback 0.851 + 2 points) called none. Their bounds were trained with the cross-validated head.",
    "Counterexamples tie a frozen head (2026-12-07, `training/head.py` `CONSISTENCY`): each copy's logits are "
    "held to its original's (weight 0.1, summed over the copies and divided by the rows, as the label loss), the "
    "linear head's form of right for the right reasons. As extra rows alone the copies left the head reading a "
    "shortcut wherever it was present, since the originals still carry it. Every frozen row (no feedback and the "
    "default, entropy and random, 3 seeds; the bounds kept) was re-run after it, so the first six problems' rows "
    "now also have the cross-validated head. Gap recovered at 1% (entropy / random), before -> after: class tags "
    "ResNet 44 / 57% -> 104 / 103%, ViT 58 / 68% -> 126 / 132%; pattern ResNet 92 / 88% -> 93 / 93% (spread 6.9 "
    "-> 4.4 points), ViT 85 / 89% -> 93 / 92%; moving mark ResNet 4 / 12% -> 56 / 78%, ViT -10 / 12% -> 63 / 84%;"
    " edge stripe ResNet 89 / 97% -> 102 / 102%, ViT 89 / 90% -> 105 / 106%; background ResNet 94 / 97% -> 101 / "
    "100% (entropy still falls 1.3 points from 1% to 5%, 2.1 before), ViT 94 / 95% -> 103 / 99%; four corners ViT"
    " 99 / 98% -> 107 / 107%, one corner ViT 92 / 91% -> 140 / 143%; on the ResNet one corner 91 / 91% -> 108 / "
    "111% and four corners 100 / 99% -> 101 / 101%, stamp (a gap once the no-feedback rows had the "
    "cross-validated head) 109 / 106%; random patch ResNet 92 / 100% and ViT 153 / 175% of a gap measured at last"
    " with the cross-validated head (none before, with C = 1). Where there is no gap (stamp on the ViT) the rows "
    "rose 2.6-3.2 points over no feedback (-0.6 / -0.9 before). The frozen BERT's rows, re-run too, hold where "
    "they were (100-102% of the gap, 98-100% before; no harm on text tags). Frozen rows meeting every aim: 34 of "
    "44, from 20. Still short: pattern (92-93%), moving mark (56-84%; the flat rule's note below), random patch on the ResNet with entropy "
    "(92%; 95% after the flat rule), and the ResNet's background with entropy (1% -> 5%: -1.3 points). What the term does, in a test: "
    "`tests/test_backbones.py::test_counterexamples_tie_a_frozen_heads_logits_to_their_originals`.",
    "The flat rule (2026-12-07, feedback/concepts.py `flat`: flat patches of content the size of the marked "
    "regions, any shade, shape and place) joins on the moving mark and the random patch; their frozen default "
    "rows were re-run after it (entropy and random, 3 seeds; _xil_backbones_flat.json). Gap recovered at 1% "
    "(entropy / random), before -> after: moving mark ViT 63 / 84% -> 182 / 192% (of the clean twin's gap: the "
    "moving mark has no decorrelated twin), ResNet 56 / 78% -> 56 / 86%; random patch ResNet 92 / 100% -> 95 / "
    "104%, ViT 153 / 175% -> 197 / 203%. On the ResNet with entropy ranking the rows did not move at 0.5% and "
    "1%: the rule validated on none of the first rounds' picks (generalised to 0 tasks at 0.5%), since the "
    "processor's upsampling (28 to 112 px) leaves flat plateaus in the strokes as large as the smallest marks, "
    "and on seed 1's first seven picks (re-run alone) its leave-one-out precision was 0.84, under the 0.85 a "
    "rule needs. "
    "Frozen rows meeting every aim: 37 of 44, from 34.",
    "Marks reach what the resize blends them into (2026-12-08, 3788804 and 8412072; the section 'At a "
    "project's input size'): a processor's resize (28 to 112 px here) blends a mark's edge into the pixels "
    "around it, and an object's mark now covers them (`models/hf_image.py` `measure_reach`, `data/frame.py` "
    "`Frame.to_input`); a background's mark (over a quarter of the image) keeps the cells it covers, since its "
    "rim is the digit's edge: marked, the frozen ResNet's background fell from 0.951 to 0.903 at 1% (3 seeds) "
    "and the CNN's at 64 px from 0.666 to 0.571 (seed 0). The rows of this section ran before the change, "
    "except two re-run after it (entropy, 3 seeds, merged first): the frozen ResNet's background (0.951 +- "
    "0.002 -> 0.954 +- 0.010 at 1%, 0.938 -> 0.941 at 5%: a background is read as before) and the frozen ViT's "
    "moving mark (0.881 +- 0.015 -> 0.879 +- 0.013 at 1%, 0.867 -> 0.868 at 5%). Why the frozen backbones, "
    "whose rows met the corner and stripe aims before the change, lost less to the rim than the CNN at 64 px "
    "is not traced; the other rows are not re-run.",
    "What the suite still does differently from a Label Studio project, from the code: it trains on every "
    "labelled task (a project holds out `XIL_HOLDOUT`, 20%, for its metrics); its schedule is 20 base epochs and "
    "8 per round, where a project's job runs `XIL_EPOCHS` (30) with early stopping; its rounds are the budgets "
    "(0.5%, 1%, 5%), where a project trains whenever annotations arrive (debounced), so corrections may reach a "
    "model in more, smaller steps; all labels are known before the first correction. Marks reach the model's "
    "input as in the job (`marks_on_input`, needed for a backbone's processor), and a frozen backbone's "
    "features come from the project's feature cache as in the job.",
]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="XIL benchmarks on pretrained backbones")
    parser.add_argument("--kinds", nargs="*", default=[k for k in KINDS if k not in OPTIONAL_KINDS])
    parser.add_argument("--problems", nargs="*", default=IMAGE_PROBLEMS + TEXT_PROBLEMS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only-seeds", type=int, nargs="*")
    parser.add_argument("--acquisitions", nargs="*", default=["entropy", "random"])
    parser.add_argument("--quick", action="store_true",
                        help="CI: four corners, ResNet frozen, 0.5%% and 1%%, entropy, 3 seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--merge", type=Path, nargs="*", help="results files whose records to merge into --out")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--bounds-only", action="store_true",
                        help="the clean and decorrelated bounds alone, beside curves already in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = {p: list(BUDGETS[p]) for p in IMAGE_PROBLEMS + TEXT_PROBLEMS + PROBED_ONLY}
    if args.quick:
        args.kinds, args.problems, args.acquisitions = ["resnet_frozen"], ["decoy_digits_4"], ["entropy"]
        budgets = {p: b[:2] for p, b in budgets.items()}
    seeds = [s for s in range(args.seeds) if not args.only_seeds or s in args.only_seeds]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    records = merge_records(previous.get("records", []), args.merge or [], _key)
    started = time.perf_counter()
    meta = {"name": "xil_backbones", "quick": args.quick, "command": ".venv/bin/python -m benchmarks.xil.backbone_suite "
            + " ".join(argv if argv is not None else __import__("sys").argv[1:]), "machine": describe("cpu")}

    def save(recs: list[dict[str, Any]]) -> None:
        seconds = float(previous.get("seconds", 0.0)) + time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**meta, "seconds": seconds, "records": recs}, indent=1, default=float) + "\n")

    if not args.report_only:
        records = run(args.problems, seeds, args.kinds, budgets, tuple(args.acquisitions), save, records,
                      bounds_only=args.bounds_only)
    save(records)
    main_path = RESULTS / "xil.json"
    cnn = json.loads(main_path.read_text()).get("records", []) if main_path.exists() else []
    for table in tables(records, cnn):
        print(f"\n## {table['title']}\n\n{table['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
