"""What runs: problems x seeds x (method, acquisition function, lambda), with the backend's defaults.

Every method uses ``ml_backend.config.ProjectSettings()`` as it ships (its strategies, c=3 with
substitute fill, corrections generalised by content from 2 corrected tasks, acquisition=entropy,
attribution=gradcam, batch 32, lr 1e-3); only the strategy, the model kind, the acquisition
function and (for the ablations) c, the fill, generalisation or lambda change. ``epochs`` is the
training schedule (base training and each fine-tuning round), the same for every method.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ml_backend.config import ProjectSettings
from ml_backend.models.base import ModelKind
from ml_backend.training.strategies import strategy_names

from benchmarks.xil.data import PROBLEMS as IMAGE_AND_DECOY_PROBLEMS
from benchmarks.xil.text_data import TEXT_PROBLEMS as TEXT_BUILDERS
from benchmarks.xil.loop import Backend, prepare_problem, run_curve, train_base


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    model_kind: str = ""  # "" = the backend's CNN
    strategies: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()


DEFAULTS = ProjectSettings()
CNN_DEFAULT = strategy_names(DEFAULTS.strategies)  # what "default" stands for with the CNN
METHODS = {m.key: m for m in (
    Method("none", "No feedback (CNN)"),
    Method("default", f"The default: {' + '.join(CNN_DEFAULT)}, corrections generalised",
           strategies=DEFAULTS.strategies),
    Method("rrr", f"RRR alone (lambda={DEFAULTS.rrr_lambda:g})", strategies=("rrr",)),
    Method("ce1", "Counterexamples c=1", strategies=("counterexamples",), overrides=(("counterexamples", 1),)),
    Method("ce3", "Counterexamples alone, c=3", strategies=("counterexamples",), overrides=(("counterexamples", 3),)),
    Method("ce5", "Counterexamples c=5", strategies=("counterexamples",), overrides=(("counterexamples", 5),)),
    Method("rrr_ce", "RRR + counterexamples (the previous default)", strategies=("rrr", "counterexamples")),
    Method("default_local", "The default, corrections not generalised (the corrected tasks alone)",
           strategies=DEFAULTS.strategies, overrides=(("propagate_min_support", 0),)),
    Method("rrr_ce_local", "RRR + counterexamples c=3, corrections not propagated",
           strategies=("rrr", "counterexamples"), overrides=(("propagate_min_support", 0),)),
    Method("ce3_random", "Counterexamples c=3, random fill", strategies=("counterexamples",),
           overrides=(("counterexample_fill", "randomize"),)),
    Method("senn_none", "No feedback (SENN)", model_kind="senn"),
    Method("cali", "CALI on a SENN", model_kind="senn", strategies=("cali",)),
    Method("bayes_none", "No feedback (Bayesian CNN)", model_kind="bayesian_cnn"),
    Method("bayes_ae", "Activation evidence (Bayesian CNN)", model_kind="bayesian_cnn",
           strategies=("activation_evidence",)),
    Method("cali_ce", "CALI + counterexamples on a SENN", model_kind="senn", strategies=("cali", "counterexamples")),
    Method("bayes_ae_ce", "Activation evidence + counterexamples (Bayesian CNN)", model_kind="bayesian_cnn",
           strategies=("activation_evidence", "counterexamples")),
)}
PROBLEMS = {**IMAGE_AND_DECOY_PROBLEMS, **TEXT_BUILDERS}
IMAGE_PROBLEMS = ["decoy_digits", "decoy_digits_4", "edge_stripe", "random_patch", "background", "stamp", "colors",
                  "pattern", "moving_mark", "class_tags", "photo_watermark"]
TEXT_PROBLEMS = ["decoy_text", "text_variants", "text_phrase", "text_tags"]
# corrected explanations at 0.5%, 1% and 5% of each problem's training set
TRAIN_SIZE = {**{p: 1438 for p in IMAGE_PROBLEMS}, "colors": 1000, "photo_watermark": 480,
              **{p: 1000 for p in TEXT_PROBLEMS}}
BUDGETS = {p: [max(1, round(n * share)) for share in (0.005, 0.01, 0.05)] for p, n in TRAIN_SIZE.items()}


@dataclass
class Plan:
    quick: bool
    problems: list[str]
    seeds: list[int]
    base_epochs: int
    finetune_epochs: int
    budgets: dict[str, list[int]]
    methods: dict[str, list[str]]
    acquisitions: dict[str, list[str]]  # problem -> acquisition functions compared (with acq_method)
    lambdas: dict[str, list[float]] = field(default_factory=dict)  # problem -> RRR lambdas (at the 1% budget)
    acq_method: str = "default"
    one_point_methods: tuple[str, ...] = ()  # methods run at the 1% budget only (to bound the run time)
    # images read at this size, as a project reads them at XIL_IMAGE_SIZE (None: each problem at its own)
    image_size: Optional[int] = None


def quick_plan(seeds: int = 3) -> Plan:
    """CI: a fixed-place decoy, a background that fills the frame (by its shade, and by its
    texture), and spurious-token variants; two rounds (0.5% then 1%), ranked again with the model
    the first round trained, as in a project."""
    problems = ["decoy_digits_4", "background", "pattern", "text_variants"]
    return Plan(quick=True, problems=problems, seeds=list(range(seeds)), base_epochs=10, finetune_epochs=5,
                budgets={p: BUDGETS[p][:2] for p in problems},
                methods={p: ["none", "default"] for p in problems}, acquisitions={p: ["entropy"] for p in problems})


def full_plan(seeds: int = 3) -> Plan:
    problems = IMAGE_PROBLEMS + TEXT_PROBLEMS
    methods = ["none", "default", "rrr", "rrr_ce", "default_local"]
    # RRR's double backward pass makes a round ~3x slower on CPU: the combination RRR + counterexamples
    # covers the two decoys, the edge stripe and the text problems, at 1% only
    with_rrr_ce = {"decoy_digits", "decoy_digits_4", "edge_stripe", *TEXT_PROBLEMS}
    return Plan(quick=False, problems=problems, seeds=list(range(seeds)), base_epochs=20, finetune_epochs=8,
                budgets={p: BUDGETS[p] for p in problems},
                methods={p: methods if p in with_rrr_ce else [m for m in methods if m != "rrr_ce"] for p in problems},
                acquisitions={p: ["random"] for p in problems}, acq_method="default",
                one_point_methods=("rrr_ce", "default_local"))


SETTING_OVERRIDES: dict[str, str] = {}  # project settings every run starts from (the CLI's --set)


def settings_for(problem_image_size: int, method: Method, acquisition: str = "entropy",
                 rrr_lambda: Optional[float] = None) -> ProjectSettings:
    """A method's project settings. ``acquisition`` "NAME+balanced" (classes interleaved),
    "NAME+unbalanced" (the function's order) or "NAME+shareX" also sets ``max_class_share`` (0, 1 or X)."""
    base = ProjectSettings().with_overrides(SETTING_OVERRIDES)
    changes: dict[str, Any] = dict(method.overrides)
    name, _, balance = acquisition.partition("+")
    changes.update(model_kind=method.model_kind, strategies=method.strategies, acquisition=name)
    if balance:
        shares = {"balanced": 0.0, "unbalanced": 1.0}
        changes["max_class_share"] = shares[balance] if balance in shares else float(balance.removeprefix("share"))
    if problem_image_size:
        changes["image_size"] = problem_image_size
    if rrr_lambda is not None:
        changes["rrr_lambda"] = rrr_lambda
    return dataclasses.replace(base, **changes).validate()


def specs(plan: Plan, problem: str) -> list[dict[str, Any]]:
    """(method, acquisition, lambda, budgets) runs for one problem, most important first."""
    one_percent = [b for b in plan.budgets[problem] if b <= one_percent_budget(problem)] or plan.budgets[problem][:1]
    out = [{"method": m, "acquisition": "entropy", "rrr_lambda": None,
            "budgets": [one_percent[-1]] if m in plan.one_point_methods else plan.budgets[problem]}
           for m in plan.methods[problem]]
    for a in plan.acquisitions.get(problem, []):
        if a != "entropy":
            out.append({"method": plan.acq_method, "acquisition": a, "rrr_lambda": None,
                        "budgets": plan.budgets[problem]})
    for lam in plan.lambdas.get(problem, []):
        if lam != ProjectSettings().rrr_lambda:
            out.append({"method": "rrr", "acquisition": "entropy", "rrr_lambda": lam, "budgets": [one_percent[-1]]})
    return out


def one_percent_budget(problem: str) -> int:
    return BUDGETS.get(problem, [5, 10, 50])[1]


def run_plan(plan: Plan, device: torch.device, save: Callable[[list[dict[str, Any]]], None],
             records: Optional[list[dict[str, Any]]] = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run everything; ``save(records)`` after each curve, so a long run can be read while it goes."""
    records = records if records is not None else []
    done = {_key(r) for r in records}
    # decoy digits (both variants) seed by seed first, then the other problems: a long run read
    # half-way has every seed's headline numbers
    digits = [p for p in plan.problems if p.startswith("decoy_digits")]
    order = [(p, s) for s in plan.seeds for p in digits]
    order += [(p, s) for p in plan.problems if p not in digits for s in plan.seeds]
    for problem, seed in order:
        todo = [sp for sp in specs(plan, problem) if _key({"problem": problem, "seed": seed, **sp}) not in done]
        if not todo:
            continue
        started = time.perf_counter()
        data_problem = PROBLEMS[problem](seed)
        size = plan.image_size if plan.image_size and data_problem.kind == "image" else data_problem.image_size
        prepared = prepare_problem(data_problem, settings_for(size, METHODS["none"]))
        log(f"[{problem} seed {seed}] data ready in {time.perf_counter() - started:.1f}s "
            f"({len(prepared.train.tasks)} train / {len(prepared.test.tasks)} test)")
        bases: dict[str, tuple[ModelKind, float]] = {}
        if not any(r["problem"] == problem and r["seed"] == seed and r["method"] == "clean" for r in records):
            backend = Backend(prepared, settings_for(size, METHODS["none"]), device)
            epochs = plan.base_epochs + plan.finetune_epochs
            model, seconds = train_base(backend, clean=True, epochs=epochs, seed=seed)
            point = {"n": 0, **backend.evaluate(model), "train_seconds": seconds}
            records.append({"problem": problem, "seed": seed, "method": "clean", "acquisition": None,
                            "rrr_lambda": None, "model_kind": "cnn", "base_seconds": seconds, "points": [point],
                            "epochs": epochs})
            log(f"  clean upper bound: acc {point['accuracy']:.3f} ({seconds:.0f}s)")
            save(records)
        for sp in todo:
            method = METHODS[sp["method"]]
            settings = settings_for(size, method, sp["acquisition"], sp["rrr_lambda"])
            backend = Backend(prepared, settings, device)
            kind = method.model_kind or "cnn"
            if kind not in bases:
                bases[kind] = train_base(Backend(prepared, settings_for(size, Method("b", "b", method.model_kind)),
                                                 device), clean=False, epochs=plan.base_epochs, seed=seed)
            base, base_seconds = bases[kind]
            t0 = time.perf_counter()
            points = run_curve(backend, base, sp["budgets"], plan.finetune_epochs, seed)
            rec = {"problem": problem, "seed": seed, "method": sp["method"], "acquisition": sp["acquisition"],
                   "rrr_lambda": settings.rrr_lambda if sp["rrr_lambda"] is not None else None,
                   "model_kind": kind, "base_seconds": base_seconds, "points": points,
                   "wall_seconds": time.perf_counter() - t0, "epochs": plan.finetune_epochs,
                   "settings": {k: v for k, v in settings.to_dict().items()
                                if k in ("strategies", "rrr_lambda", "counterexamples", "cali_lambda",
                                         "evidence_sigma", "kl_weight", "acquisition", "attribution", "model_kind",
                                         "image_size", "batch_size", "learning_rate", "lr_schedule",
                                         "max_evidence_share")}}
            records.append(rec)
            last = points[-1]
            log(f"  {sp['method']:<10} {sp['acquisition']:<8} lam={rec['rrr_lambda']}: "
                + " ".join(f"N={p['n']}:{p['accuracy']:.3f}" for p in points)
                + f" mass {last['confounder_mass'] if last['confounder_mass'] is None else round(last['confounder_mass'], 3)}"
                + f" ({rec['wall_seconds']:.0f}s)")
            save(records)
    return records


def _key(r: dict[str, Any]) -> tuple:
    lam = r.get("rrr_lambda")
    return (r["problem"], r["seed"], r["method"], r["acquisition"], None if lam is None else float(lam))


def merge_records(records: list[dict[str, Any]], paths: list[Path], key: Callable[[dict[str, Any]], tuple]
                  ) -> list[dict[str, Any]]:
    """``records`` and then the records of each results file whose ``key`` is not there yet."""
    out = list(records)
    for path in paths:
        have = {key(r) for r in out}
        out += [r for r in json.loads(path.read_text()).get("records", []) if key(r) not in have]
    return out


def load_records(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("records", []))
    except (OSError, ValueError):
        return []
