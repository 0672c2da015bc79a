"""Learning from explanation feedback: the whole suite in one command.

    .venv/bin/python -m benchmarks.xil            # full: 10 problems (7 image, 3 text), 3 seeds (about 1.5 h on 2 cores)
    .venv/bin/python -m benchmarks.xil --quick    # CI: four corners, background, token variants; none / default; 3 seeds
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
from benchmarks.xil import report, suite
from benchmarks.xil.suite import full_plan, load_records, quick_plan, run_plan
from ml_backend.config import ConfigError, ProjectSettings

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="XIL benchmarks through the backend's own loop")
    parser.add_argument("--quick", action="store_true", help="CI size: a few minutes on 2 CPU cores")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", nargs="*", help="a subset of the plan's problems")
    parser.add_argument("--methods", nargs="*", help="run only these of each problem's methods (the clean bound "
                        "always; acquisition rows only with the default): to re-run the rows a change touches")
    parser.add_argument("--acquisitions", nargs="*", help="the default's rows with these acquisition functions "
                        "beside entropy (the plan's: random); none given: entropy only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/xil.json)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/xil-benchmarks.md or plots")
    parser.add_argument("--fresh", action="store_true", help="ignore records already in the results file")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only-seeds", type=int, nargs="*", help="run these seeds only (to shard a run)")
    parser.add_argument("--merge", type=Path, nargs="*", help="results files whose records to merge into --out")
    parser.add_argument("--set", nargs="*", default=[], metavar="SETTING=VALUE",
                        help="project settings every run starts from (e.g. lr_schedule=cosine): "
                             "give such a run its own --out")
    parser.add_argument("--image-size", type=int,
                        help="read images at this size, as a project does at XIL_IMAGE_SIZE (64 shipped); "
                             "default: each problem at its own. Give such a run its own --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = [item.partition("=") for item in args.set]
    if any(not sep or not key for key, sep, _ in pairs):
        parser.error("--set takes SETTING=VALUE pairs")
    suite.SETTING_OVERRIDES.update({key: value for key, _, value in pairs})
    try:
        ProjectSettings().with_overrides(suite.SETTING_OVERRIDES)
    except ConfigError as err:
        parser.error(str(err))

    plan = quick_plan(args.seeds) if args.quick else full_plan(args.seeds)
    if args.only_seeds:
        plan.seeds = [s for s in plan.seeds if s in args.only_seeds]
    if args.problems:
        plan.problems = [p for p in plan.problems if p in args.problems] or args.problems
    if args.methods:
        plan.methods = {p: [m for m in ms if m in args.methods] for p, ms in plan.methods.items()}
        if plan.acq_method not in args.methods:
            plan.acquisitions = {p: [] for p in plan.acquisitions}
    if args.acquisitions is not None:
        plan.acquisitions = {p: list(args.acquisitions) for p in plan.problems}
    plan.image_size = args.image_size
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
    size_text = f"{plan.image_size} px" if plan.image_size else "each problem's own size"
    plan_text = (f"{'quick' if plan.quick else 'full'}: problems {', '.join(plan.problems)}; seeds "
                 f"{plan.seeds}; base training {plan.base_epochs} epochs, each fine-tuning round "
                 f"{plan.finetune_epochs} epochs; budgets {plan.budgets}; methods {plan.methods}; "
                 f"acquisitions {plan.acquisitions}; lambdas {plan.lambdas}; images at {size_text}"
                 + (f"; settings {suite.SETTING_OVERRIDES}" if suite.SETTING_OVERRIDES else ""))
    meta = {"name": "xil", "title": "Learning from explanation feedback (XIL): confounder benchmarks",
            "command": command, "quick": plan.quick, "machine": machine, "plan_text": plan_text,
            "aims": ["On every problem with a gap, recover >= 95% of the gap between no feedback and the clean "
                     "model while correcting at most 1% of the training set, chosen by our ranking; <= 1 point "
                     "harm where there is no gap; no fall from 1% to 5%; std over seeds <= 3 points; one "
                     "default for every problem."],
            "notes": NOTES}

    def save(recs: list) -> None:
        payload = {**meta, "seconds": elapsed_before + time.perf_counter() - started, "records": recs}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1, default=float) + "\n")

    if args.merge:
        meta["command"] = (".venv/bin/python -m benchmarks.xil  (run here as parallel shards "
                           "`--only-seeds S --out benchmarks/results/_xil_sS.json --no-docs`, one per seed, then "
                           "merged with `--out benchmarks/results/xil.json --fresh --merge benchmarks/results/_xil_rrr_*.json "
                           "benchmarks/results/_xil_bg_s*.json "
                           "benchmarks/results/_xil_text_s*.json "
                           "benchmarks/results/_xil_s*.json benchmarks/results/_xil_bal_*.json`, after "
                           "benchmarks/results/_xil_share.json and _xil_unbalanced.json (the default's rows "
                           "with the class share cap, and those from before it); the first file holding a "
                           "record wins; issue 24's shards benchmarks/results/_xil_widened_*.json (the new "
                           "problems, and the text problems' rows without feedback and with the default, re-run "
                           "after the shape rule) merged last, replacing those rows; the class tags rows after the place "
                           "rule (benchmarks/results/_xil_place_class_tags.json), and the one-corner decoy's and the edge stripe's "
                           "rows without feedback, with the default and clean after it (_xil_place_dd_es.json), merged "
                           "first, replacing those; 2026-12-07 (issue 24): the text problems' rows after the symbol-led "
                           "family (`--problems decoy_text text_variants text_phrase text_tags --only-seeds S --out "
                           "benchmarks/results/_xil_family_sS.json --no-docs`), and moving_mark's and random_patch's "
                           "rows without feedback, with the default and clean after the flat rule (`--problems P "
                           "--methods none default --out benchmarks/results/_xil_flat_P.json --no-docs`), merged "
                           "first with `--fresh --merge <those> benchmarks/results/xil.json`, replacing those rows; 2026-12-07 "
                           "18:10-19:20 UTC (issue 24): the default's rows of the image problems with small marks after "
                           "the patch-for-a-patch fill, and four corners', colors', stamp's and photo watermark's rows "
                           "without feedback beside them (`--problems P --methods none default --only-seeds S`, "
                           "benchmarks/results/_xil_patch.json), merged first the same way; 2026-12-07 21:40-23:00 UTC (issue 24): "
                           "the rows without feedback, with the default and clean of 15 problems under the new "
                           "defaults (lr_schedule auto, max_evidence_share 0.5; `--methods none default --only-seeds S`, "
                           "benchmarks/results/_xil_defaults.json and _xil_defaults3.json), merged first the same way)")
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
    "up to the budget N, in rounds (0.5%, 1%, 5%). Each round ranks the not-yet-corrected training tasks with "
    "the current model.",
    "Every confounder's shade follows the class in training and is random at test (a random digit's shade); the "
    "clean model is tested on the same confounded test set. For the background confounder the clean bound "
    "trains on backgrounds of random shade (the background independent of the label), as the issue asks.",
    "Generalisation (feedback/concepts.py, feedback/text_concepts.py): from 2 corrected tasks, the marks reach "
    "every labelled task by content. Which image rules ran is recorded per version (generalised_by): the "
    "template rule finds the one-corner swatch, the stripe on either edge, the random patch and the stamp "
    "where they sit; the background rule finds the shaded background; the position rule the four corners and "
    "the colors' corners. The row 'corrections not generalised' is the default with propagate_min_support=0.",
    "Before this round, marks propagated by position only (pixels marked on >= 2 corrected tasks): on a moving "
    "confounder the union of marks landed on other images' strokes, and RRR + counterexamples lowered accuracy "
    "(random patch 0.911 -> 0.819 at 5%, background 0.538 -> 0.333). Each rule is now validated on the "
    "corrected tasks (leave one out, 85% precision) and a rule that would mark the object does not run.",
    "The default changed from RRR + counterexamples to counterexamples alone: with generalised marks, RRR added "
    "nothing on the digits problems and lowered accuracy on the background (seed 0, 7 corrections: 0.418 with "
    "RRR + counterexamples against 0.972 without RRR, in the exploratory runs before this table); its "
    "gradient-share penalty can also be met by inflating gradients elsewhere (tests/test_training.py). It "
    "stays available by name (rows 'RRR alone' and 'RRR + counterexamples').",
    "Text counterexamples substitute whole spans: each run of marked tokens becomes another span marked "
    "Irrelevant anywhere, never itself, the words around it shifting (so a positive review's 'free shipping "
    "included' becomes the negative class's whole 'order number follows', and 'zor-bly!' becomes 'quennic'). "
    "Word by word substitution, as before, mostly permuted the phrase's own words (phrase 84% of the gap at "
    "1%); with random ids instead, counterexamples alone left decoy text at chance (0.504 at 5%), since the "
    "unmarked class's token still decided. A marked background gets a donor's background colour, not its "
    "pixels (which pasted another class's digit into the copy: 0.919 at 5% against 0.992).",
    "Entropy ranking can pick one class only in a round (text: every pick positive); the marks then reach that "
    "class's documents only until a later round marks the other class's token.",
    "Served evidence is the CNN's smoothed gradient x activation map (docs/benchmarks.md, bench_evidence); the "
    "mass column is its share on the confounder. Where the model does not use the confounder without "
    "feedback (one corner, random patch, stamp), there is nothing for the mass to fall from.",
    "Background: a propagated mark over a quarter of the image (the background rule's) now has its "
    "counterexample replace the original instead of joining it. Added beside the original, the copy left the "
    "class's own shade on over half of each class's images: 92% of the gap at 1% (0.941 +- 0.035, spread 3.5 "
    "points; seed 1 dipped from 0.953 at 0.5% to 0.905 at 1%). Replacing every propagated task's original "
    "(exploratory, not in the tables) did as well on the background but lowered random patch on seed 1 (0.914 "
    "at 1%, 0.939 at 5%, against 0.947 without feedback): a small propagated mark may cover strokes, so those "
    "originals stay. The background rows were re-run after this change (shards _xil_bg_sS.json).",
    "Text rows (decoy text, token variants, phrase) were re-run with span substitution: at 1% token variants "
    "and the phrase now recover the gap (see the aims table). The 0.5% round can still correct one class only "
    "under entropy ranking (one seed at chance there).",
    "The served-evidence mass falls to <= 0.3x on the image problems with a gap (four corners 0.07x, edge "
    "stripe 0.17x, background 0.28x). Toy colors has a gap (3.4 points) but its mass on the corners before "
    "feedback, 0.055, is already what the clean model puts there (0.056): at 5 px the real evidence, the "
    "top middle, borders two corners. After feedback it falls below the clean model's (0.040); the aims "
    "table accepts either. On random patch and stamp (no gap) the model without feedback hardly uses the "
    "confounder, so there is nothing to fall from.",
    "Code versions: the text problems ran after span substitution (shards "
    "benchmarks/results/_xil_text_sS.json) and the background after the replacement above (_xil_bg_sS.json), "
    "both merged first; colors ran after the rule-order change (position, background, template; "
    "commit 6a1e262); the other problems ran just before it, with the template rule also on for four corners "
    "(its marks there equal the position rule's to 0.2% of the pixels, so the rows would not move). Text "
    "substitution then could draw the marked word itself (1 draw in the pool size); it now never does.",
    "Each predicted class's share of the queue is capped (setting max_class_share, default 0.5: among the "
    "queue's first n tasks no class holds more than half, for every n; shard _xil_share.json). Entropy alone "
    "(rows [entropy+unbalanced], the default before) could spend a whole round on one class: text at 0.5% had "
    "one seed at chance (token variants 0.817 +- 0.275, phrase 0.822 +- 0.279; now 0.977 +- 0.010 and "
    "0.984 +- 0.002), and SENN + CALI stayed near chance on the text problems (0.67 on decoy text at 1%; 0.99 "
    "now). Interleaving the classes fully (max_class_share 0, rows [entropy+balanced]) rescued text as well "
    "but cost edge stripe at 1% (0.992 -> 0.982, every seed) and the background (0.982 +- 0.003 -> "
    "0.966 +- 0.034): with ten classes it spread 14 corrections one or two per class. The cap of half "
    "changes a ten-class queue little (edge stripe 0.990, background 0.982 +- 0.006 at 1%) and alternates "
    "two classes. Toy colors (two classes) pays a point at 1% (0.970 -> 0.960), still +4.5 over no feedback.",
    "RRR alone ran on every problem at every budget with the cap (shards _xil_rrr_*.json). The rows of "
    "RRR + counterexamples and corrections not generalised (1% only) and the random ranking ran with entropy "
    "order alone, before the cap.",
    "Issue 24, problems built to break pixel-rule generalisation (rows: no feedback and the default with "
    "entropy and random ranking, shards _xil_widened_*.json): pattern (a per-class grating background of one "
    "mean and contrast), moving mark (a class-shaded square or disk of 3-9 px anywhere), class tags (a glyph "
    "per class in a random corner, one gray), photo watermark (160-px photo crops, a logo per class at random "
    "scale and place) and text tags (three tags per class).",
    "A marked background's counterexample now gets another class's background content: the donor's marked "
    "pixels, read from shifted places where its object sits, so a pattern meets another pattern. With the "
    "donor's colour, as before, pattern at 1% recovered 7% (entropy) and 16% (random) of the gap on seed 0; "
    "with the content 98% and 92% (seed 0), 100% and 102% (seed 1), 94% and 95% (seed 2; random then fell to 0.861 at 5%, a miss). The shaded "
    "background, four corners and edge stripe did not move (seed 0, within the runs' own noise: the same "
    "code twice differs by up to 2 points).",
    "Generalisation gained a rule in the model's own feature space (feedback/concepts.py `feature`: region "
    "features, the hypercolumns of the CNN's blocks, matched against the marked and unmarked cells of the "
    "corrected tasks, margin calibrated leave one out) and a guard: a rule that marks over 15% of what the "
    "annotators left unmarked is refused. On pattern the border-colour rule marked the digits' dim rims "
    "(precision 0.89); the feature rule replaces it (0.94-0.98 at recall 0.90-0.98, under 3% of the strokes). "
    "Where a pixel rule validates (shaded background, swatches, stripes) it still runs first; the section "
    "'How corrections carry' compares them.",
    "Generalisation gained a place rule (feedback/concepts.py `place`): content, pixels away from the border "
    "colour, inside the places where marks recur on two corrected tasks, a mark's bounding box or its mirror "
    "image (a tag in one corner has the same role in the other three). Class tags went from 43% of the gap at "
    "1% (the template rule found only the glyphs of the classes corrected) to 94% (0.961 +- 0.016 with "
    "entropy ranking, 0.968 +- 0.008 random; spread 1.6 points, 1% -> 5% +1.9); the generalised marks' recall "
    "went from 0.49 to 1.00, and from 0.10 to 0.91-1.00 with corrections from one class only (section 'How "
    "corrections carry', seeds 0-1). It does not fire on the other problems' marks but the one-corner decoy "
    "and the edge stripe, where it finds what the template rule did. Machines: the class tags rows ran on "
    "2026-12-07 at 78c17c4 on a 2-core AMD EPYC (one process, beside one other benchmark); every other row "
    "on 2026-12-06 at fb13535 on a 2-core Intel Xeon (the machine table describes the merge). The place rule "
    "also fires on the one-corner decoy and the edge stripe: their rows without feedback, with the default "
    "(entropy and random) and clean were re-run after it (2026-12-07, 4d5be1a, AMD EPYC, two at once); their "
    "RRR + counterexamples rows are from before it. Pattern's rows predate the feature rule's stable "
    "statistics sample (a different 64 tasks for the channels' statistics).",
    "Text corrections carry to a family of tags (2026-12-07, feedback/text_concepts.py): two or more "
    "symbol-led tag shapes marked (#a and @a) make every symbol-led chunk the concept ([ref-kx], (zorbly); "
    "sentence punctuation left out), validated on the corrected documents as a shape is. Ranked by entropy, the "
    "corrected reviews held hashtags and mentions but never the bracket tags the model trusted most, so their "
    "shape was never marked and a third of the test set stayed at chance: text tags went from 66% of the gap at "
    "1% (0.822 +- 0.023) to 99% (0.983 +- 0.003), random ranking 0.929 +- 0.103 -> 0.985 +- 0.005. The four text problems' "
    "rows were re-run after it (shards _xil_family_s*.json, 2026-12-07, AMD EPYC, three at once); decoy text, "
    "the variants and the phrase hold where they were.",
    "Images gained a flat rule (2026-12-07, feedback/concepts.py `flat`, after the template): flat patches of "
    "content (every 3x3 window within a tenth of the image's own deviation, away from the border colour, any "
    "shade) of an area within a factor of two of the marked regions'. A moving mark matches no template at "
    "another size and recurs at no place; it is flat, the strokes are not. Its generalised marks' recall went "
    "from 0.01-0.15 to 0.97-0.99 (section 'How corrections carry'), and moving mark from 26% of the gap at 1% "
    "to 68% (entropy, 0.951 +- 0.018; random 0.946). The same code without the rule, run beside it on the same "
    "bases (the runs' own noise: a seed's row moves 2-3 points between runs), gave 0.927 and 0.899. It joins "
    "nowhere else but the random patch, a problem with no gap (harm +0.5 at 1%, +1.3 at 5% over no feedback). "
    "moving_mark's and random_patch's rows without feedback, with the default and clean were re-run after it "
    "(_xil_flat_*.json, 2026-12-07, AMD EPYC, beside other runs); random_patch's RRR rows and its row with "
    "corrections not generalised are from before it, on other base models (their N=0 differs), so their gap "
    "and delta columns compare across bases.",
    "A small marked region's counterexample now gets the donor's own mark, a patch for a patch (2026-12-07, "
    "training/strategies/counterexamples.py `patch_fill`): the donor's marked box scaled onto the task's, "
    "drawn over the task's mark and the background around it in its box, the rest of the mark erased; the "
    "donor's pixels at that place, as before, where the donor has no small mark or its mark would change "
    "nothing. A copy whose mark is only erased teaches 'no mark: read the digit', and the model still reads "
    "the class from every mark it meets; another class's mark with the label unchanged says the mark means "
    "nothing. Class tags (one-gray glyphs, so only the shape can change): at 0.5% 0.800 +- 0.153 -> 0.969 +- 0.019, at 5% "
    "0.980 -> 0.995, random ranking at 1% 0.968 -> 0.986; with entropy ranking at 1% 0.961 -> 0.967 (94.7% of "
    "the gap), one seed's round at 1% losing 4 points on the clean test set too (0.994 -> 0.955 and back to "
    "0.997 at 5%: the fine-tuning's end point, not the glyph; the served mass on the glyph stays at 0.011). Moving mark did not "
    "move (entropy at 1% 0.951 -> 0.945 +- 0.015, random 0.946 -> 0.941, at 5% 0.941 -> 0.960; a seed's row "
    "moves 2-3 points between runs): the fill is not what holds it back. The rows with the default of every image "
    "problem with small marks (decoys, edge stripe, random patch, colors, stamp, photo watermark, moving mark, "
    "class tags) were re-run after it (2026-12-07, AMD EPYC, two or three at once; benchmarks/results/_xil_patch.json, merged "
    "first), and the rows without feedback of four corners, colors, stamp and photo watermark with them, so "
    "that every row of those problems but RRR's and 'not generalised' stands on the same base model.",
    "Two defaults changed on 2026-12-07 (21:40-23:00 UTC), and the rows of the default (entropy and random "
    "ranking), without feedback and clean of 15 problems ran under them (3 seeds; decoys, edge stripe, random "
    "patch, background, stamp, pattern, moving mark, class tags and the four text problems: "
    "benchmarks/results/_xil_defaults.json; one-corner decoy, colors and photo watermark: "
    "_xil_defaults3.json; both merged first). RRR's, RRR + counterexamples', 'not generalised' and the "
    "balanced/unbalanced acquisition rows still ran under the constant rate and the old ranking (their records' "
    "settings say which). (1) lr_schedule=auto, cosine for the CNNs: the learning rate falls to 0 along a "
    "cosine over each fit (the SENN, the Bayesian CNN and the backbones keep the constant rate: under cosine "
    "the SENN's 10-epoch fit of reviews reached 0.79 against 0.94-0.95, and the Bayesian CNN's 8-epoch "
    "activation-evidence fine-tuning of four corners 0.665 against 0.875-0.924). With the constant AdamW rate the same round's clean-test accuracy swung 0.95-0.997 from round to round "
    "(class tags seed 2: 0.994 at 0.5%, 0.955 at 1%, 0.997 at 5%, the served mass on the glyph flat at "
    "0.011), and the rows with it. Under cosine, at 1% with entropy ranking: class tags 0.994 +- 0.002 (94.7% "
    "-> 100% of the gap), moving mark 0.973 +- 0.011 (51% -> 92%), pattern 0.978 (99%), background 0.981 "
    "(97%), random patch no harm and no fall from 1% to 5% (-0.1; it was -1.4). The clean bounds rise too "
    "(moving mark 0.962 -> 0.976, background 0.977 -> 0.995), so gaps are measured against the better "
    "bound. (2) max_evidence_share=0.5 (ranking/evidence_share.py): under cosine alone, text tags with entropy "
    "ranking stayed at 0.668 on seed 0 from 0.5% to 5% (78% of the gap, spread 18 points): its five first "
    "picks all held one tag per class (@dealhub, @helpline); once those two were corrected, their tasks were "
    "the least certain ones, and entropy served the same two tags 45 more times while #promo, [ref-kx], "
    "#ticket and [case-vq] were predicted with confidence and never shown. Each class's queue is now spread "
    "over groups of alike evidence (k-means on the evidence's region features, as many groups as their kNN "
    "graph's eigengap finds: on that seed's base model, six groups, each one tag, none mixed), no group "
    "holding more than half of any of the class's first n tasks: text tags 0.984 +- 0.006 at 1% (100%), and "
    "every other problem within 0.5 points of cosine alone (same seeds and base models; "
    "benchmarks/results/_xil_cosine.json and _xil_cosine_text.json hold cosine alone).",
    "Not yet met (issue 24): moving mark reaches 92% of its gap at 1% with entropy ranking (0.973 +- 0.011, "
    "clean 0.976; random ranking 0.974); the background's served mass on the confounder falls to 0.31x, a "
    "hair over the 0.3x aim (its clean model's is 0.075); a phrase, or a spurious word, corrected on one class only still does "
    "not reach the other class's (generalised marks' recall 0.50 and 0.53 with one-class picks); photo "
    "watermark has no gap for the CNN (it learns the photo first) and the default does it no harm. Toy colors "
    "sits lower under the cosine schedule than under the constant rate, every row alike (no feedback 0.910 "
    "-> 0.886, the default at 1% 0.955 -> 0.932 +- 0.024, clean 0.935 -> 0.931): still 101% of its gap, "
    "but seed 1 reaches 0.902 against its clean 0.920; the evidence cap is not the cause (the same rows with "
    "max_evidence_share=1: benchmarks/results/_xil_colors_no_evidence_cap.json).",
    "Time: three shards (one per seed) ran at once on the 2 cores beside other jobs, so wall times are several "
    "times what one run alone takes.",
]


if __name__ == "__main__":
    raise SystemExit(main())
