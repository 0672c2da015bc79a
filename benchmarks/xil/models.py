"""The seeds' own models through the same loop (issue 15): the SENN with CALI and the Bayesian CNN with
activation evidence, beside the CNN rows of ``benchmarks/results/xil.json``.

    .venv/bin/python -m benchmarks.xil.models                      # 3 seeds, four corners + decoy text
    .venv/bin/python -m benchmarks.xil.models --problems decoy_digits --seeds 3
    .venv/bin/python -m benchmarks.xil.models --report-only        # rebuild the docs section only

The stored results ran as shards, one process per problem (four corners: seeds 0-1 and 2), with
``--out benchmarks/results/_xil_models_<name>.json --no-docs`` (text problems with
``--acquisitions entropy random``), merged by ``--report-only --out benchmarks/results/xil_models.json
--merge benchmarks/results/_xil_models_*.json``. Random patch, stamp, toy colors and the missing seeds of
edge stripe and background ran later as ``_xil_models_more_*.json`` (one process each, two at a time),
and each kind's default (its strategy + counterexamples, ``--with-counterexamples``) as
``_xil_models_ce_*.json``.

Per problem and seed, for each kind: the kind trained on the clean training set (its clean bound,
also read on the clean test set where the problem has one), trained on the confounded set (N=0),
then two rounds of corrections (about 0.3-0.5% and 1% of the training set, entropy ranking, the
simulated annotator), fine-tuned without and with the kind's own strategy. Results go to
``benchmarks/results/xil_models.json`` (never to xil.json); ``docs/xil-benchmarks.md`` gets the
generated section "The seeds' own models" (``report.models_section``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.machine import describe
from benchmarks.xil.loop import Backend, prepare_problem, run_curve, train_base
from benchmarks.xil.suite import METHODS, PROBLEMS, Method, merge_records, settings_for

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "xil_models.json"
# the kinds and, per kind, the method without feedback and the one with the kind's own strategy
KINDS = {"senn": ("senn_none", "cali"), "bayesian_cnn": ("bayes_none", "bayes_ae")}
# the kind's strategy with counterexamples added (``--with-counterexamples``)
WITH_COUNTEREXAMPLES = {"senn": "cali_ce", "bayesian_cnn": "bayes_ae_ce"}
TEXT_KINDS = ("senn",)
# about 0.3% (the thesis' share) or 0.5%, then 1% of the training set
MODEL_BUDGETS = {"decoy_digits_4": [4, 14], "decoy_digits": [4, 14], "edge_stripe": [7, 14],
                 "background": [7, 14], "random_patch": [7, 14], "stamp": [7, 14], "colors": [5, 10],
                 "decoy_text": [5, 10], "text_variants": [5, 10], "text_phrase": [5, 10]}
BASE_EPOCHS, FINETUNE_EPOCHS = 20, 8  # the full suite's schedule


def run(problems: list[str], seeds: list[int], device: torch.device, save: Callable[[list[dict[str, Any]]], None],
        records: list[dict[str, Any]], log: Callable[[str], None] = print,
        acquisitions: tuple[str, ...] = ("entropy",), with_counterexamples: bool = False) -> list[dict[str, Any]]:
    """Each kind's clean bound, and its curves without and with its feedback (ranked by each of
    ``acquisitions``; the method without feedback by the first only), and with its feedback plus
    counterexamples when ``with_counterexamples``."""
    done = {_key(r) for r in records}
    first = acquisitions[0]
    for problem in problems:
        for seed in seeds:
            data_problem = PROBLEMS[problem](seed)
            size = data_problem.image_size
            kinds = TEXT_KINDS if data_problem.kind == "text" else tuple(KINDS)
            runs = {k: [(KINDS[k][0], first)] + [(KINDS[k][1], a) for a in acquisitions]
                    + ([(WITH_COUNTEREXAMPLES[k], first)] if with_counterexamples else []) for k in kinds}
            todo = [k for k in kinds if (problem, seed, f"{k}_clean", None) not in done
                    or any((problem, seed, m, a) not in done for m, a in runs[k])]
            if not todo:
                continue
            prepared = prepare_problem(data_problem, settings_for(size, METHODS["none"]))
            for kind in todo:
                plain = Backend(prepared, settings_for(size, Method("b", "b", kind)), device)
                if (problem, seed, f"{kind}_clean", None) not in done:
                    model, seconds = train_base(plain, clean=True, epochs=BASE_EPOCHS + FINETUNE_EPOCHS, seed=seed)
                    point = {"n": 0, **plain.evaluate(model), "train_seconds": seconds}
                    records.append({"problem": problem, "seed": seed, "method": f"{kind}_clean", "acquisition": None,
                                    "rrr_lambda": None, "model_kind": kind, "base_seconds": seconds,
                                    "points": [point], "epochs": BASE_EPOCHS + FINETUNE_EPOCHS})
                    log(f"[{problem} seed {seed}] {kind} clean: acc {point['accuracy']:.3f} "
                        f"clean test {point.get('clean_test_accuracy')}")
                    save(records)
                base, base_seconds = train_base(plain, clean=False, epochs=BASE_EPOCHS, seed=seed)
                for method, acquisition in runs[kind]:
                    if (problem, seed, method, acquisition) in done:
                        continue
                    settings = settings_for(size, METHODS[method], acquisition)
                    t0 = time.perf_counter()
                    points = run_curve(Backend(prepared, settings, device), base, MODEL_BUDGETS[problem],
                                       FINETUNE_EPOCHS, seed)
                    records.append({"problem": problem, "seed": seed, "method": method, "acquisition": acquisition,
                                    "rrr_lambda": None, "model_kind": kind, "base_seconds": base_seconds,
                                    "points": points, "wall_seconds": time.perf_counter() - t0,
                                    "epochs": FINETUNE_EPOCHS,
                                    "settings": {k: v for k, v in settings.to_dict().items()
                                                 if k in ("strategies", "model_kind", "cali_lambda", "evidence_sigma",
                                                          "kl_weight", "bayes_prior_sigma", "bayes_init_sigma",
                                                          "senn_concepts", "senn_patch", "image_size")}})
                    log(f"[{problem} seed {seed}] {method} [{acquisition}]: "
                        + " ".join(f"N={p['n']}:{p['accuracy']:.3f}" for p in points)
                        + f" ({time.perf_counter() - t0:.0f}s)")
                    save(records)
    return records


def _key(r: dict[str, Any]) -> tuple:
    return (r["problem"], r["seed"], r["method"], r.get("acquisition"))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.xil import report

    parser = argparse.ArgumentParser(description="XIL benchmarks of the SENN and the Bayesian CNN")
    parser.add_argument("--problems", nargs="*", default=["decoy_digits_4", "decoy_text"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only-seeds", type=int, nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--merge", type=Path, nargs="*", help="results files whose records to merge into --out")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--acquisitions", nargs="*", default=["entropy"],
                        help="rankings the feedback runs use (the first also ranks the run without feedback)")
    parser.add_argument("--with-counterexamples", action="store_true",
                        help="also run each kind's strategy with counterexamples added (first ranking only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [s for s in range(args.seeds) if not args.only_seeds or s in args.only_seeds]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    records = merge_records(previous.get("records", []), args.merge or [], _key)
    started = time.perf_counter()
    meta = {"name": "xil_models", "command": ".venv/bin/python -m benchmarks.xil.models "
            + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
            "machine": describe("cpu")}

    def save(recs: list[dict[str, Any]]) -> None:
        seconds = float(previous.get("seconds", 0.0)) + time.perf_counter() - started
        args.out.write_text(json.dumps({**meta, "seconds": seconds, "records": recs}, indent=1, default=float) + "\n")

    if not args.report_only:
        records = run(args.problems, seeds, torch.device("cpu"), save, records,
                      acquisitions=tuple(args.acquisitions), with_counterexamples=args.with_counterexamples)
    save(records)
    for table in report.models_section(records):
        print(f"\n## {table['title']}\n\n{table['markdown']}")
    if not args.no_docs:
        print(f"docs: {report.rewrite_docs()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
