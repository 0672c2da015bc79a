"""The quick XIL benchmark (benchmarks/xil --quick) end to end, and its headline claim.

It runs the backend's own loop (ranking, Label Studio annotation JSON, parse_annotation,
strategies, fit) on decoy digits with the shipped defaults, 3 seeds, and checks that
explanation feedback (RRR, 14 corrected explanations = 1% of the training set) beats no
feedback on the confounded test set by a clear margin.
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
        if r["method"] == "ce3":
            assert r["points"][-1]["counterexamples"] == 14 * 3
    assert quick_results["tables"], "the report has tables"


@pytest.mark.xfail(strict=True, reason=(
    "Issue 7's acceptance claim, still open (docs/xil-benchmarks.md): with the shipped defaults, 14 "
    "corrected explanations (1%) after a warm start do not move the CNN off a 4x4 decoy: the RRR penalty "
    "(share of squared input-gradient mass in the mask) stays near 1% while the decoy is read. Strict: "
    "this turns red the day a strategy makes it pass, so the marker must then be removed."))
@pytest.mark.parametrize("problem", ["decoy_digits", "decoy_digits_4"])
def test_rrr_beats_no_feedback_on_decoy_digits(quick_results, problem):
    rrr = _accuracy(quick_results, problem, "rrr", 14)
    none = _accuracy(quick_results, problem, "none", 14)
    assert rrr - none >= MARGIN, f"{problem}: RRR {rrr:.3f} vs no feedback {none:.3f} (margin {MARGIN})"
