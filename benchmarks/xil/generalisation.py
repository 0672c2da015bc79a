"""How well corrections carry: precision and recall of the generalised Irrelevant marks against
the planted confounder, per problem, for each way of generalising, side by side.

For each problem and seed: the default CNN is trained on the labelled set without feedback (the
suite's base model), a 1% budget of tasks is chosen (``random``, ``entropy`` as the backend's
queue orders them, or ``one_class``: random tasks of a single class), the simulated annotator
corrects them through the parser the webhook uses, and ``feedback.concepts.generalise_marks`` runs
with the pixel rules only, the feature concept only, and both (the default). The scores count the
tasks that were not corrected: marked pixels that are confounder (precision) and confounder pixels
that got marked (recall), and the share of object pixels (brighter than half, outside the confounder:
the digit's strokes) marked (harm).

Text problems run the same way through ``feedback.text_concepts.match_marked_text``, with the
marked words only, words and tag shapes, and every rule (the default: words, shapes and the
symbol-led family); scores count tokens, and harm is the share of sentiment words (the label's
evidence) marked.

    python -m benchmarks.xil.generalisation --problems background pattern --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.xil.data import NEGATIVE, POSITIVE
from benchmarks.xil.loop import Backend, prepare_problem, train_base
from benchmarks.xil.suite import METHODS, PROBLEMS, TEXT_PROBLEMS, one_percent_budget, settings_for
from ml_backend.feedback.concepts import RULES, generalise_marks
from ml_backend.feedback.text_concepts import TEXT_RULES, match_marked_text
from ml_backend.training.fit import region_feature_source

VARIANTS = {"pixels": tuple(r for r in RULES if r != "feature"), "feature": ("feature",), "default": RULES}
TEXT_VARIANTS = {"words": ("words",), "shapes": ("words", "shape"), "default": TEXT_RULES}
SENTIMENT = frozenset(POSITIVE) | frozenset(NEGATIVE)
SELECTIONS = ("random", "entropy", "one_class")


def _picks(backend: Backend, model, budget: int, selection: str, seed: int) -> list[int]:
    n = len(backend.data.train.tasks)
    rng = np.random.default_rng(7000 + seed)
    if selection == "random":
        return [int(i) for i in rng.choice(n, budget, replace=False)]
    if selection == "one_class":
        labels = np.asarray(backend.data.train.split.labels)
        cls = int(rng.integers(0, labels.max() + 1))
        return [int(i) for i in rng.choice(np.flatnonzero(labels == cls), budget, replace=False)]
    order, _ = backend.rank(model, list(range(n)), [], version="base")
    return order[:budget]


def score(marks: torch.Tensor, truth: torch.Tensor, objects: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
    marks, truth, objects = marks[keep], truth[keep], objects[keep]
    hit = int((marks & truth).sum())
    return {"precision": hit / max(int(marks.sum()), 1) if int(marks.sum()) else None,
            "recall": hit / max(int(truth.sum()), 1),
            "object_marked": int((marks & objects).sum()) / max(int(objects.sum()), 1)}


def run(problem: str, seed: int, selections: list[str], epochs: int, log=print) -> list[dict[str, Any]]:
    data = PROBLEMS[problem](seed)
    settings = settings_for(data.image_size, METHODS["default"])
    prepared = prepare_problem(data, settings)
    backend = Backend(prepared, settings, torch.device("cpu"))
    model, seconds = train_base(backend, clean=False, epochs=epochs, seed=seed)
    log(f"[{problem} seed {seed}] base model in {seconds:.0f}s")
    if data.kind == "text":
        return _run_text(problem, seed, selections, backend, model, log)
    truth = prepared.train.confounder
    x = prepared.train.x.float()
    size = tuple(truth.shape[1:])
    if tuple(x.shape[2:]) != size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    # object pixels: bright strokes that are not confounder (what a mark must never teach away)
    objects = (x.mean(dim=1) > 0.5) & ~truth
    features = region_feature_source(model, prepared.train.x)
    out = []
    budget = one_percent_budget(problem)
    for selection in selections:
        picks = _picks(backend, model, budget, selection, seed)
        irrelevant = torch.zeros_like(truth)
        for i in picks:
            fb = backend.corrected_example(i, None).feedback
            irrelevant[i] = torch.as_tensor(fb.irrelevant).bool()
        keep = torch.ones(len(truth), dtype=torch.bool)
        keep[picks] = False
        for variant, rules in VARIANTS.items():
            started = time.perf_counter()
            found = generalise_marks(x, irrelevant, torch.zeros_like(irrelevant), features=features, rules=rules)
            rec = {"problem": problem, "seed": seed, "selection": selection, "variant": variant,
                   "rules": sorted(found.rules), "rejected": found.rejected,
                   "seconds": time.perf_counter() - started, **score(found.irrelevant, truth, objects, keep)}
            log(f"  {selection:9s} {variant:8s} P={rec['precision'] if rec['precision'] is None else round(rec['precision'], 3)} "
                f"R={rec['recall']:.3f} object={rec['object_marked']:.3f} rules={rec['rules']} ({rec['seconds']:.1f}s)")
            out.append(rec)
    return out


def _run_text(problem: str, seed: int, selections: list[str], backend: Backend, model, log) -> list[dict[str, Any]]:
    train = backend.data.train
    truth = train.confounder
    docs = [(t.text, t.tokens) for t in train.tasks]
    objects = torch.zeros_like(truth)  # sentiment words: the label's own evidence
    for i, (text, tokens) in enumerate(docs):
        for j, token in enumerate(tokens[:truth.shape[1]]):
            objects[i, j] = text[token.start:token.end].lower() in SENTIMENT
    objects &= ~truth
    out = []
    for selection in selections:
        picks = _picks(backend, model, one_percent_budget(problem), selection, seed)
        irrelevant = torch.zeros_like(truth)
        for i in picks:
            irrelevant[i] = torch.as_tensor(backend.corrected_example(i, None).feedback.irrelevant).bool()
        keep = torch.ones(len(truth), dtype=torch.bool)
        keep[picks] = False
        for variant, rules in TEXT_VARIANTS.items():
            started = time.perf_counter()
            found = match_marked_text(docs, irrelevant, torch.zeros_like(irrelevant), rules=rules)
            rec = {"problem": problem, "seed": seed, "selection": selection, "variant": variant,
                   "rules": found.concepts, "rejected": {}, "seconds": time.perf_counter() - started,
                   **score(found.irrelevant, truth, objects, keep)}
            precision = rec["precision"] if rec["precision"] is None else round(rec["precision"], 3)
            log(f"  {selection:9s} {variant:8s} P={precision} "
                f"R={rec['recall']:.3f} sentiment={rec['object_marked']:.3f} concepts={rec['rules']}")
            out.append(rec)
    return out


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "xil_generalisation.json"


def markdown(path: Path = RESULTS) -> list[str]:
    """The section of docs/xil-benchmarks.md: per problem and selection, each variant's precision,
    recall and object pixels marked (means over seeds), and the rules it used."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    lines = ["# How corrections carry: generalised marks against the planted confounder", "",
             "Written by `python -m benchmarks.xil.generalisation` to `benchmarks/results/xil_generalisation.json`. "
             + __doc__.split("\n\n")[1].replace("\n", " "),
             "", "Cells: precision / recall / share of the object's pixels marked (means over seeds; - where "
             "nothing was generalised); the rules each run used (seeds pooled). moving_mark, random_patch and the "
             "text problems ran on 2026-12-07 after the flat rule and the symbol-led family; the other rows before "
             "them (with the annotator's marks on random and one-class picks, pixel rules only, the flat rule "
             "joined on none of those problems, so their rows stand).", ""]
    text = set(TEXT_PROBLEMS)
    lines += _table([r for r in records if r["problem"] not in text], VARIANTS, "object")
    text_records = [r for r in records if r["problem"] in text]
    if text_records:
        lines += ["", "Text: tokens instead of pixels; the last figure is the share of sentiment words (the "
                  "label's evidence) marked; the concepts each run found (normalised words, `shape` forms, "
                  "the symbol-led family).", ""]
        lines += _table(text_records, TEXT_VARIANTS, "sentiment")
    return lines + [""]


def _rule_kind(concept: str) -> str:
    """A text record's concept as the rule that found it: a word or phrase, a tag shape, the family."""
    if concept == "shape symbol-led":
        return "symbol-led family"
    return "shape " + concept[6:] if concept.startswith("shape ") else "words"


def _table(records: list[dict[str, Any]], variants: dict[str, tuple[str, ...]], harm: str) -> list[str]:
    problems = list(dict.fromkeys(r["problem"] for r in records))
    header = ["problem", "selection", *[f"{v}: P / R / {harm}" for v in variants], "rules (default)"]
    rows = []
    for problem in problems:
        for selection in SELECTIONS:
            cells = []
            rules: set[str] = set()
            for variant in variants:
                recs = [r for r in records if r["problem"] == problem and r["selection"] == selection
                        and r["variant"] == variant]
                if not recs:
                    cells.append("")
                    continue
                if variant == "default":
                    rules |= {_rule_kind(rule) if harm == "sentiment" else rule for r in recs for rule in r["rules"]}
                precision = [r["precision"] for r in recs if r["precision"] is not None]
                cells.append(f"{np.mean(precision):.3f} / {np.mean([r['recall'] for r in recs]):.3f} / "
                             f"{np.mean([r['object_marked'] for r in recs]):.3f}" if precision else "-")
            if any(cells):
                rows.append([problem, selection, *cells, ", ".join(sorted(rules)) or "none"])
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=[p for p in PROBLEMS if p not in ("colors", "decoy_text")])
    parser.add_argument("--append", action="store_true", help="keep the other problems' records in --out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=SELECTIONS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/xil_generalisation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    if args.append and args.out.exists():
        records = [r for r in json.loads(args.out.read_text()) if r["problem"] not in args.problems]
    for problem in args.problems:
        for seed in args.seeds:
            records += run(problem, seed, args.selections, args.epochs)
            args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
