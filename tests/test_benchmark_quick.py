"""The quick XIL benchmark (benchmarks/xil --quick) end to end, and its headline claim.

It runs the backend's own loop (ranking, Label Studio annotation JSON, parse_annotation,
propagation, strategies, fit) on decoy digits with the shipped defaults, 3 seeds, and checks that
explanation feedback (14 corrected explanations = 1% of the training set) beats no feedback on
the confounded test set by a clear margin where the decoy fools the CNN (four corners), and does
no harm where it hardly does (one random corner).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

MARGIN = 0.1


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    from benchmarks.xil.__main__ import main

    out = tmp_path_factory.mktemp("xil") / "xil.json"
    assert main(["--quick", "--out", str(out), "--no-docs", "--fresh"]) == 0
    return json.loads(out.read_text())


def _accuracy(results, problem, method, n):
    values = [p["accuracy"] for r in results["records"] if r["problem"] == problem and r["method"] == method
              for p in r["points"] if p["n"] == n]
    assert len(values) == 3, f"{problem}/{method}: expected 3 seeds at N={n}, got {len(values)}"
    return float(np.mean(values))


def test_quick_run_goes_through_the_backend_loop(quick_results):
    records = quick_results["records"]
    assert {r["problem"] for r in records} == {"decoy_digits", "decoy_digits_4"}
    for r in records:
        if r["method"] in ("rrr", "ce3"):
            last = r["points"][-1]
            assert last["n"] == 14
            # every queried task came back from parse_annotation as irrelevant-region feedback
            assert last["irrelevant_feedback"] == 14
            assert 0.0 <= last["accuracy"] <= 1.0
        if r["method"] in ("ce3", "rrr_ce"):
            last = r["points"][-1]
            # the corners marked on 14 tasks reach every other training task, one copy each
            assert last["propagated_to"] > 1000
            assert last["counterexamples"] == 14 * 3 + last["propagated_to"]
    assert quick_results["tables"], "the report has tables"


@pytest.mark.parametrize("method", ["ce3", "rrr_ce"])
def test_feedback_beats_no_feedback_on_the_four_corner_decoy(quick_results, method):
    got = _accuracy(quick_results, "decoy_digits_4", method, 14)
    none = _accuracy(quick_results, "decoy_digits_4", "none", 14)
    assert got - none >= MARGIN, f"{method} {got:.3f} vs no feedback {none:.3f} (margin {MARGIN})"


def test_the_default_strategy_closes_most_of_the_gap(quick_results):
    from benchmarks.xil.report import gap_recovered

    def seeds(problem, method):
        return [p["accuracy"] for r in quick_results["records"] if r["problem"] == problem and r["method"] == method
                for p in r["points"] if p["n"] == (0 if method == "clean" else 14)]

    gap = gap_recovered(seeds("decoy_digits_4", "rrr_ce"), seeds("decoy_digits_4", "none"),
                        seeds("decoy_digits_4", "clean"))
    # the full run's aim is 95% (docs/xil-benchmarks.md); quick mode fine-tunes 5 epochs, not 8
    assert gap is not None and gap >= 0.8, gap
    one = _accuracy(quick_results, "decoy_digits", "rrr_ce", 14)
    assert one >= _accuracy(quick_results, "decoy_digits", "none", 14) - 0.02
