"""Learning from explanation feedback: the whole suite in one command.

    .venv/bin/python -m benchmarks.xil            # full: 4 problems, all methods, 3 seeds (about an hour on 2 cores)
    .venv/bin/python -m benchmarks.xil --quick    # CI: decoy digits (both variants), none / RRR / CE, 3 seeds
    .venv/bin/python -m benchmarks.xil --report-only   # rebuild tables, plots and docs from the results file

Results: benchmarks/results/xil.json (a quick run never overwrites full results: it then writes
benchmarks/results/_xil_quick.json); docs/xil-benchmarks.md and docs/xil-*.png. A full run can be
resumed: records already in the results file are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.machine import describe
from benchmarks.xil import report
from benchmarks.xil.suite import full_plan, load_records, quick_plan, run_plan

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="XIL benchmarks through the backend's own loop")
    parser.add_argument("--quick", action="store_true", help="CI size: a few minutes on 2 CPU cores")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", nargs="*", help="subset of decoy_digits decoy_digits_4 colors decoy_text")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/xil.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/xil-benchmarks.md or plots")
    parser.add_argument("--fresh", action="store_true", help="ignore records already in the results file")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only-seeds", type=int, nargs="*", help="run these seeds only (to shard a run)")
    parser.add_argument("--merge", type=Path, nargs="*", help="results files whose records to merge into --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    plan = quick_plan(args.seeds) if args.quick else full_plan(args.seeds)
    if args.only_seeds:
        plan.seeds = [s for s in plan.seeds if s in args.only_seeds]
    if args.problems:
        plan.problems = [p for p in plan.problems if p in args.problems] or args.problems
    out = args.out
    if out is None:
        out = RESULTS / "xil.json"
        if args.quick and out.exists() and not json.loads(out.read_text()).get("quick", True):
            out = RESULTS / "_xil_quick.json"  # keep the full results
    command = " ".join([".venv/bin/python", "-m", "benchmarks.xil", *(argv if argv is not None else sys.argv[1:])])
    previous = {} if args.fresh or not out.exists() else json.loads(out.read_text())
    records = [] if args.fresh else load_records(out)
    if previous and bool(previous.get("quick")) != plan.quick:
        records = []  # quick and full records do not mix
    if args.merge:
        seen = {json.dumps({k: r.get(k) for k in ("problem", "seed", "method", "acquisition", "rrr_lambda")})
                for r in records}
        for path in args.merge:
            part = json.loads(path.read_text())
            previous["seconds"] = max(float(previous.get("seconds", 0.0)), float(part.get("seconds", 0.0)))
            for r in part.get("records", []):
                key = json.dumps({k: r.get(k) for k in ("problem", "seed", "method", "acquisition", "rrr_lambda")})
                if key not in seen:
                    seen.add(key)
                    records.append(r)
        args.report_only = True
    machine = describe(args.device)
    started = time.perf_counter()
    elapsed_before = float(previous.get("seconds", 0.0)) if records else 0.0
    plan_text = (f"{'quick' if plan.quick else 'full'}: problems {', '.join(plan.problems)}; seeds "
                 f"{plan.seeds}; base training {plan.base_epochs} epochs, each fine-tuning round "
                 f"{plan.finetune_epochs} epochs; budgets {plan.budgets}; methods {plan.methods}; "
                 f"acquisitions {plan.acquisitions}; lambdas {plan.lambdas}")
    meta = {"name": "xil", "title": "Learning from explanation feedback (XIL): confounder benchmarks",
            "command": command, "quick": plan.quick, "machine": machine, "plan_text": plan_text,
            "aims": ["On both decoy-digits variants, recover >= 95% of the gap between no feedback and the clean "
                     "model while correcting at most 1% of the training images (14 here), chosen by our ranking, "
                     "with one default setting per strategy."],
            "notes": NOTES}

    def save(recs: list) -> None:
        payload = {**meta, "seconds": elapsed_before + time.perf_counter() - started, "records": recs}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1, default=float) + "\n")

    if args.merge:
        meta["command"] = (".venv/bin/python -m benchmarks.xil  (run here as parallel shards "
                           "`--only-seeds S --out benchmarks/results/_xil_sS.json --no-docs`, one per seed, then "
                           "merged with `--out benchmarks/results/xil.json --fresh --merge benchmarks/results/_xil_s*.json`)")
    if not args.report_only:
        device = torch.device(args.device)
        records = run_plan(plan, device, save, records)
    payload = report.build_payload(records, {**meta, "seconds": elapsed_before + time.perf_counter() - started})
    out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print(f"results: {out}")
    for table in payload["tables"]:
        print(f"\n## {table['title']}\n\n{table['markdown']}")
    if not args.no_docs and out.name == "_xil_quick.json":
        print("docs not rewritten: benchmarks/results/xil.json holds a full run (docs/xil-benchmarks.md shows it)")
    elif not args.no_docs:
        paths = report.plots(records, "xil-quick" if plan.quick else "xil")
        doc = report.write_docs(payload, paths)
        print(f"\ndocs: {doc}; plots: {', '.join(str(p) for p in paths)}")
    return 0


NOTES = [
    "The annotator marks the known confounder Irrelevant on every queried task (the thesis' and Ross et al.'s "
    "simulated feedback), whether or not the served evidence touched it; evidence regions that touched it are "
    "deleted, the others kept.",
    "All labels of the training set are known (as in the seeds' experiments); only explanations are corrected, "
    "up to the budget N. Each round ranks the not-yet-corrected training tasks with the current model.",
    "Accuracy is taken with the mean weights for the Bayesian CNN (trainer.accuracy, as train_project reports "
    "it); the served prediction uses the MC average.",
    "The clean model is tested on the same confounded test set (random swatch values); its accuracy on the "
    "clean test set is higher (clean_test_accuracy in the records).",
    "FINDING: with the shipped defaults no strategy recovers a meaningful part of the gap at 1% on either "
    "decoy-digits variant; the aim (>= 95% of the gap at <= 1%) is not met. Ad-hoc probes (seed 0, four "
    "corners, not part of the suite) locate the cause in the RRR penalty's form: trained from scratch with masks "
    "on ALL 1438 training images for 12 epochs, the backend's RRR (share of squared input-gradient mass in the "
    "mask) reaches 0.209 at lambda=1 (the share stays near 0.01 while the model learns the decoy: a uniform 4x4 "
    "swatch is read with small per-pixel gradients) and collapses to uniform predictions at lambda=100 (0.100), "
    "while Ross et al.'s un-normalised sum of squares at their lambda=1000 reaches 0.641 (clean model 0.63 at "
    "that length). Warm-started from the shortcut model (0.103) for 8 epochs with 14 / 144 / 1438 corrected "
    "images: RRR lambda=1 0.097 / 0.097 / 0.092, lambda=10 0.100 / 0.095 / 0.092, lambda=100 0.100 / 0.097 / "
    "0.106; counterexamples c=3 0.092 / 0.100 / 0.409; RRR + counterexamples 0.095 / 0.100 / 0.398. Ross's "
    "penalty warm-started explodes (penalty ~98 per example, CE 11-33) and from scratch with only 14 masks "
    "stays at 0.095.",
]


if __name__ == "__main__":
    raise SystemExit(main())
