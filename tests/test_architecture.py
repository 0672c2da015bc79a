"""The package's structure, checked: no import cycles, capabilities asked of the model-kind adapter
only, every module saying what it owns, and each extension point a one-file change."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ml_backend"
EXTENSIONS = Path(__file__).resolve().parent / "extensions"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at top level or inside functions (a lazy import
    hides a cycle from the interpreter, not from this graph)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert graph["ml_backend.app"], "the graph must see imports"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_upper_ones():
    """labelstudio/ is a leaf; cores (training, ranking, explain, models, data) import no HTTP,
    job queue, serving adapter or Label Studio client."""
    graph = import_graph()
    upper = ("ml_backend.app", "ml_backend.dashboard", "ml_backend.cli", "ml_backend.jobs", "ml_backend.serving",
             "ml_backend.feedback.intake", "ml_backend.labelstudio.client", "ml_backend.store")
    for name, targets in graph.items():
        if name.startswith("ml_backend.labelstudio."):
            assert all(t.startswith("ml_backend.labelstudio") for t in targets), (name, targets)
        core = name.startswith(("ml_backend.training", "ml_backend.ranking", "ml_backend.explain",
                                "ml_backend.models", "ml_backend.data"))
        core_but_store = ("ml_backend.ranking.score",)  # holds a LoadedModel (version + model), no I/O
        if core:
            bad = [t for t in targets if t.startswith(upper) and not (name in core_but_store and t == "ml_backend.store")]
            assert not bad, f"{name} imports {bad}"


KIND_NAMES = ("cnn", "text_cnn", "senn", "text_senn", "bayesian_cnn")
CAPABILITY_PROBE = re.compile(r"\b(hasattr|getattr)\(\s*(model|network|net|self\.network|loaded\.model)\b")
KIND_LITERAL = re.compile(r"""["'](%s)["']""" % "|".join(KIND_NAMES))
COMPARISON = re.compile(r"==|!=|\bin\b")


def compares_kind(code: str) -> bool:
    """A line that compares anything with a kind's name."""
    return bool(KIND_LITERAL.search(code) and COMPARISON.search(code))
KIND_ATTRIBUTE = re.compile(r"\.(concept_kind|kind)\s*(==|!=|in\b)|\bmodel_kind\s*(==|!=|in\b)")


def test_capabilities_are_asked_of_the_kind_adapter_only():
    """No hasattr/getattr probing of a model, no comparison with a kind's name, outside models/."""
    offenders = []
    for name, path in _modules().items():
        if name.startswith("ml_backend.models"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if CAPABILITY_PROBE.search(code) or compares_kind(code) or KIND_ATTRIBUTE.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_kind_checks_catch_what_they_should():
    assert CAPABILITY_PROBE.search('if hasattr(model, "mc_probs"):')
    assert compares_kind('if kind in ("", "cnn", "senn"):')
    assert compares_kind('if "senn" == name:')
    assert KIND_ATTRIBUTE.search('if model.concept_kind == "learned":')
    assert not compares_kind('kind = settings.model_kind')


def test_every_module_says_what_it_owns():
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no docstring"
        first = doc.splitlines()[0]
        assert len(first.split()) >= 4 and not first.lower().startswith(("todo", "module")), f"{name}: {first!r}"


def test_every_environment_read_is_in_config():
    for name, path in _modules().items():
        if name == "ml_backend.config":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            assert not re.search(r"os\.environ\.get|os\.getenv|os\.environ\[[^]]+\](?!\s*=)", code), \
                f"{path.relative_to(ROOT)}:{number} reads the environment: {line.strip()}"


# --- each extension point is a one-file change --------------------------------------------
# tests/extensions/<point>/<file>.py are those one-file changes. Each run below puts one of them
# on its package's path in a fresh interpreter (as if the file had been added to the package)
# and drives the backend's own code, which must find and use it by name.

_EXTENSION_RUN = r"""
import json, sys, importlib
package, directory, script = sys.argv[1], sys.argv[2], sys.argv[3]
importlib.import_module(package).__path__.append(directory)
exec(compile(open(script).read(), script, "exec"))
"""


def _run_extension(package: str, directory: str, script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _EXTENSION_RUN, package, str(EXTENSIONS / directory),
                           str(EXTENSIONS / script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_new_feedback_strategy_is_one_file():
    out = _run_extension("ml_backend.training.strategies", "strategies", "use_strategy.py")
    assert "logit_penalty" in out["registered"]
    assert out["parts"]["logit_penalty"] > 0  # the training loop ran its term
    assert out["unknown_error"].startswith("unknown feedback strategy 'logit_penalt'")


def test_a_new_model_kind_is_one_file():
    out = _run_extension("ml_backend.models", "models", "use_model_kind.py")
    assert out["kind"] == "linear_image" and out["selected"] == "linear_image"
    assert out["train_accuracy"] >= 0.9  # it learns a separable problem through the training core
    assert out["served_labels"] and out["evidence_regions"] > 0  # /predict's rendering path serves it
    assert out["refused"].startswith("strategy 'cali' does not train model_kind 'linear_image'")


def test_a_new_acquisition_function_is_one_file():
    out = _run_extension("ml_backend.ranking.acquisition", "acquisition", "use_acquisition.py")
    assert out["registered"] and out["order"] == [1, 2, 0]
