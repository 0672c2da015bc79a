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
    "Propagation (feedback/propagate.py, on by default from 2 corrections): the corner pixels marked Irrelevant on "
    "the corrected tasks count as irrelevant on every training task (at N=14 all 1,424 others), and each such task "
    "gets one substituted counterexample. The row 'corrections not propagated' is the same default with "
    "propagate_min_support=0: the corrected tasks alone.",
    "FINDING, four corners: the default (RRR + counterexamples, substitute fill, propagation) and counterexamples "
    "alone remove the decoy with 14 corrected explanations (1%) and end above the clean model, which never saw a "
    "swatch and is thrown by the random test swatches. Without propagation the same strategies stay near no "
    "feedback, as every strategy did before propagation existed; random fill is a little weaker than "
    "substitution (noise is easy to tell from a uniform swatch, another task's swatch is not).",
    "FINDING, RRR alone does not remove the decoy at any lambda (sweep table), even with the propagated masks on "
    "every task: the network meets the input-gradient penalty by flattening its response around the training "
    "swatch values rather than by not reading the swatch (gradient masking), and a strong penalty on every "
    "task costs accuracy on the one-corner variant. It is kept in the default for what it does well (moving "
    "attribution off the marked region, tests/test_training.py) and paired with counterexamples.",
    "FINDING, one corner: the backend's CNN (four blocks with batch norm since this round) hardly falls for "
    "Ross et al.'s one-corner decoy: without feedback it is already at the clean model's accuracy, so there is "
    "no gap to recover (the ratio is n/a). Feedback does no harm there with the default strategy, and "
    "counterexamples alone end above both. The thesis' author made the same observation for CNNs, which is "
    "why the thesis uses four corners.",
    "The CNN changed in this round: with three plain conv blocks (the previous default) even the clean model "
    "reached only 0.83 on these digits in 28 epochs and every model took the decoy long before it learned "
    "shapes; a fourth block and batch norm reach 0.95-0.99.",
    "The Grad-CAM mass column hardly moves: at 28 px the CNN's last map is 3x3 (one cell per ~9 px), too coarse to "
    "resolve a 4x4 corner, so Grad-CAM spreads a constant share over it. Accuracy on the confounded test set is "
    "the measure to read; the input-gradient mass is what RRR constrains (tests/test_training.py).",
    "Time: seeds 0 and 1 ran without the Bayesian CNN rows and the acquisition and lambda sweeps (the Bayesian "
    "CNN trains ~10x slower on CPU); those rows have one seed, as their 'seeds' column says. Shards ran three at "
    "a time on the 2 cores, so wall times are about 1.5x what one run alone takes.",
]


if __name__ == "__main__":
    raise SystemExit(main())
