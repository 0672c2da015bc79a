"""The XIL suite's four-corner problem driven over real HTTP, through the real server, as a team drives it.

    .venv/bin/python -m benchmarks.xil.http_loop --help
    .venv/bin/python -m benchmarks.xil.http_loop --seed 0 --strategies cali --name cali_default
    .venv/bin/python -m benchmarks.xil.http_loop --seed 0 --inproc --image-size 64     # the suite's loop

What one HTTP run does (issue 23: SENN + CALI alone recovered 2% of the gap over HTTP, 97% in process):

1. Builds ``decoy_digits_4`` (benchmarks/xil/data.py) for the seed and keeps ``--train`` (800) of its
   training images; writes every image as a PNG under a Label Studio Local Storage document root, so
   tasks carry ``/data/local-files/?d=images/<id>.png`` as Label Studio's do (``data/fetch.py``).
2. Starts ``.venv/bin/ml-backend serve`` (granian, embedded queue: no Redis, no Label Studio URL) with
   its own MODEL_DIR and LOCAL_FILES_DOCUMENT_ROOT; POST /setup with the problem's label config and
   extra_params ``model_kind`` (``--model-kind``: senn unless told), ``strategies``, ``--set``'s and
   whatever the variant overrides (everything else the shipped defaults: image_size 64, epochs 30,
   patience 8, holdout 0.2, debounce 2 s).
3. Labels the training set (label only) with ANNOTATION_CREATED webhooks (contract §2.3):
   ``--label-delivery single`` sends one webhook per annotation back to back, as Label Studio delivers
   a team's submissions (the backend debounces them into a few trainings, warm-started from each
   other); ``steps:K`` sends them in K chunks and waits for each chunk's training (K warm-started
   trainings); ``bulk`` sends one ANNOTATIONS_CREATED with all of them (one training). Waits until the
   queue is idle (GET /status) and a version is published (GET /versions).
4. The queue order: ``--order predict`` POSTs /predict for the labelled tasks and sorts by the
   prediction ``score`` ascending, as Label Studio's "prediction score" ordering / uncertainty sampling
   serves them; ``--order rank`` loads the serving version from MODEL_DIR and ranks with
   ``ranking.score.Scorer`` (the ranking job's core: the project's acquisition function, entropy, with
   the class-share cap), which is what the suite does. The first N tasks get the SimulatedAnnotator's
   correction (label + confounder painted Irrelevant, shown evidence kept unless it touches the
   confounder) as ANNOTATION_UPDATED webhooks: ``--correction-delivery together`` (back to back, one
   training) or ``paced`` (one at a time, waiting for each training: an annotator slower than the
   debounce).
5. Waits for the retraining; POST /predict on the test tasks; accuracy against the labels. Records
   every version's meta (examples, holdout, epochs, propagated_to, counterexamples, final_loss with
   CALI's loss parts, metrics).
6. ``--scratch`` also sends every final annotation (labels + corrections) to a fresh project in one
   bulk webhook: one training from scratch on everything, to compare with the warm-started chain.

``--inproc`` runs the suite's own loop instead (benchmarks/xil/loop.py: ``prepare_problem``,
``Backend``, ``train_base``, ``run_curve``; ``settings_for`` from suite.py) on the same 800 images,
with ``--base-epochs``/``--finetune-epochs`` and the same ``--image-size`` / ``--holdout`` overrides
(holdout is not applied by the suite's loop; it is noted only) and the clean upper bound.

Results are appended to benchmarks/results/xil_http.json (one record per run, with the machine).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import requests

from benchmarks import _common as C

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "xil_http.json"
ML_BACKEND = ROOT / ".venv" / "bin" / "ml-backend"
PROJECT_ID = 2
CREATED = "2026-11-22T10:00:00.000000Z"


# --------------------------------------------------------------------------- the problem
def build_problem(seed: int, n_train: int):
    """decoy_digits_4 for ``seed`` with ``n_train`` of its training images (a fixed random subset)."""
    from benchmarks.xil.data import Split, decoy_digits

    problem = decoy_digits(seed, four_corners=True)
    rng = np.random.default_rng(5000 + seed)
    n = min(n_train, len(problem.train.tasks))
    idx = np.sort(rng.choice(len(problem.train.tasks), size=n, replace=False))

    def sub(split: Split) -> Split:
        return Split([split.tasks[i] for i in idx], np.asarray(split.labels)[idx], [split.confounders[i] for i in idx])

    problem.train = sub(problem.train)
    problem.clean_train = sub(problem.clean_train)
    return problem


def write_images(problem, root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """PNG files under the document root; (train tasks, test tasks) pointing at them."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def tasks(split) -> list[dict[str, Any]]:
        out = []
        for t in split.tasks:
            uri = t["data"]["image"]
            (folder / f"{t['id']}.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
            out.append(C.ls_task(int(t["id"]), {"image": f"/data/local-files/?d=images/{t['id']}.png"}, PROJECT_ID))
        return out

    return tasks(problem.train), tasks(problem.test)


# --------------------------------------------------------------------------- the server
class Server:
    """``ml-backend serve`` in a child process (embedded queue, jobs in a forkserver child)."""

    def __init__(self, work: Path, docroot: Path, env_extra: dict[str, str]) -> None:
        self.port = C.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir = work / "models"
        self.log_path = work / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XIL_", "REDIS", "LABEL_STUDIO", "DATABASE"))}
        env.update(MODEL_DIR=str(self.model_dir), LOCAL_FILES_DOCUMENT_ROOT=str(docroot), TORCH_THREADS="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LOG_LEVEL="INFO", THREADS="4", **env_extra)
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(ML_BACKEND), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError("server not healthy")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Client:
    def __init__(self, url: str, label_config: str, project: int = PROJECT_ID) -> None:
        self.url, self.label_config, self.project = url, label_config, project
        self.project_uid = f"{project}.1795343946"
        self.http = requests.Session()
        self.updated = 0

    def setup(self, extra_params: dict[str, Any]) -> dict[str, Any]:
        body = C.setup_body(self.project, self.label_config, extra_params)
        r = self.http.post(self.url + "/setup", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def _project_obj(self) -> dict[str, Any]:
        return C.project_object(self.project, self.label_config)

    def _annotation(self, annotation_id: int, task: dict[str, Any], result: list) -> dict[str, Any]:
        self.updated += 1
        stamp = f"2026-11-22T{10 + self.updated // 3600 % 12:02d}:{self.updated // 60 % 60:02d}:{self.updated % 60:02d}.000000Z"
        return {"id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
                "created_at": CREATED, "updated_at": stamp, "draft_created_at": None, "lead_time": 1.5,
                "prediction": {}, "result_count": len(result), "unique_id": f"u{annotation_id}", "import_id": None,
                "last_action": None, "bulk_created": False, "task": task["id"], "project": self.project,
                "completed_by": 1, "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
                "last_created_by": None}

    @staticmethod
    def _hook_task(task: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in task.items() if k not in ("annotations", "predictions")}
        out.update(allow_skip=True, precomputed_agreement=None, is_labeled=True, total_annotations=1)
        return out

    def webhook(self, action: str, annotation_id: int, task: dict[str, Any], result: list) -> dict[str, Any]:
        body = {"action": action, "annotation": self._annotation(annotation_id, task, result),
                "task": self._hook_task(task), "project": self._project_obj()}
        r = self.http.post(self.url + "/webhook", json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def bulk(self, items: list[tuple[int, dict[str, Any], list]]) -> dict[str, Any]:
        body = {"action": "ANNOTATIONS_CREATED",
                "annotations": [self._annotation(a, t, res) for a, t, res in items],
                "tasks": [self._hook_task(t) for _, t, _ in items], "project": self._project_obj()}
        r = self.http.post(self.url + "/webhook", json=body, timeout=60)
        r.raise_for_status()
        return r.json()

    def predict(self, tasks: list[dict[str, Any]], batch: int = 100) -> list[dict[str, Any]]:
        out = []
        for start in range(0, len(tasks), batch):
            body = {"tasks": tasks[start:start + batch], "project": self.project_uid, "label_config": self.label_config,
                    "params": {"login": None, "password": None, "context": None}}
            r = self.http.post(self.url + "/predict", json=body, timeout=600)
            r.raise_for_status()
            out += r.json()["results"]
        return out

    def versions(self) -> list[dict[str, Any]]:
        r = self.http.get(self.url + "/versions", params={"project": self.project}, timeout=30)
        r.raise_for_status()
        return r.json()["projects"].get(str(self.project), [])

    def jobs(self) -> list[dict[str, Any]]:
        r = self.http.get(self.url + "/status", timeout=30)
        r.raise_for_status()
        for p in r.json()["projects"]:
            if str(p["project"]) == str(self.project):
                return p.get("jobs") or []
        return []

    def wait_idle(self, since_versions: int, timeout: float = 1800) -> list[dict[str, Any]]:
        """Until no training job of the project is queued or running, and a version newer than
        ``since_versions`` exists; returns the versions."""
        deadline = time.time() + timeout
        time.sleep(0.5)
        while time.time() < deadline:
            jobs = self.jobs()
            busy = [j for j in jobs if j.get("kind") == "train" and j.get("status") in ("queued", "started")]
            failed = [j for j in jobs if j.get("kind") == "train" and j.get("status") == "failed"]
            if failed:
                raise RuntimeError(f"training failed: {failed[0].get('error')}")
            if not busy:
                versions = self.versions()
                if len(versions) > since_versions:
                    return versions
            time.sleep(1.0)
        raise TimeoutError("training did not finish")


# --------------------------------------------------------------------------- helpers
def predicted_class(prediction: dict[str, Any], classes: list[str]) -> Optional[int]:
    for region in prediction.get("result") or []:
        if region.get("type") == "choices":
            return classes.index(region["value"]["choices"][0])
    return None


def version_summary(v: dict[str, Any]) -> dict[str, Any]:
    keep = ("version", "examples", "holdout", "epochs", "train_seconds", "propagated_to", "generalised_by",
            "counterexamples", "feedback", "final_loss", "parent", "store_revision", "reason")
    out = {k: v.get(k) for k in keep}
    m = v.get("metrics") or {}
    out["metrics"] = {k: m.get(k) for k in ("holdout_accuracy", "train_accuracy", "irrelevant_attribution_mass",
                                           "holdout_irrelevant_attribution_mass")}
    return out


def rank_order(model_dir: Path, docroot: Path, label_config: str, tasks: list[dict[str, Any]], extra: dict[str, Any]
               ) -> tuple[list[int], list[dict[str, Any]]]:
    """The ranking job's order (``ranking.score.Scorer`` on the serving version), task positions first
    to annotate first, and the rendered predictions (what the ranking job pushes)."""
    from ml_backend.config import ProjectSettings, Settings
    from ml_backend.data.fetch import Fetcher
    from ml_backend.data.prepare import prepare_task
    from ml_backend.project import make_context
    from ml_backend.ranking.score import Scorer
    from ml_backend.store import ProjectStore

    settings = ProjectSettings().with_overrides(extra)
    ctx = make_context(str(PROJECT_ID), label_config, settings)
    store = ProjectStore(model_dir, str(PROJECT_ID))
    loaded = store.load(store.current(), donors=False)
    loaded.model.network.eval()
    fetcher = Fetcher(Settings(local_files_root=str(docroot)))
    prepared = [prepare_task(ctx.schema, loaded.model, t, fetcher, i) for i, t in enumerate(tasks)]
    scorer = Scorer(ctx, loaded)
    rendered: list[dict[str, Any]] = []
    for start in range(0, len(prepared), 256):
        rendered += scorer.add(prepared[start:start + 256])
    values = scorer.scores(None)
    return [int(i) for i in scorer.order(values)], rendered


# --------------------------------------------------------------------------- one HTTP run
def run_http(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.xil.annotator import SimulatedAnnotator
    from ml_backend.labelstudio.schema import parse_label_config

    problem = build_problem(args.seed, args.train)
    schema = parse_label_config(problem.label_config)
    classes = list(schema.classes)
    annotator = SimulatedAnnotator(schema)
    extra: dict[str, Any] = {"model_kind": args.model_kind, "strategies": args.strategies}
    for key in ("image_size", "holdout", "epochs", "patience", "acquisition"):
        value = getattr(args, key)
        if value is not None:
            extra[key] = value
    extra.update(dict(item.split("=", 1) for item in args.set))
    env_extra = {"TRAIN_DEBOUNCE_SECONDS": str(args.debounce), "JOB_NICE": str(args.job_nice)}
    record: dict[str, Any] = {"mode": "http", "name": args.name, "seed": args.seed, "train": len(problem.train.tasks),
                              "test": len(problem.test.tasks), "n_corrections": args.n, "extra_params": extra,
                              "label_delivery": args.label_delivery, "correction_delivery": args.correction_delivery,
                              "order": args.order, "debounce": args.debounce}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xil-http-") as tmp:
        work = Path(tmp)
        docroot = work / "files"
        train_tasks, test_tasks = write_images(problem, docroot)
        labels = np.asarray(problem.train.labels)
        test_labels = np.asarray(problem.test.labels)
        with Server(work, docroot, env_extra) as server:
            client = Client(server.url, problem.label_config)
            record["setup"] = client.setup(extra)
            # (1) the labelled set
            ann_id = {t["id"]: 10_000 + t["id"] for t in train_tasks}
            results = {t["id"]: annotator.label_only(t, int(y))["result"] for t, y in zip(train_tasks, labels)}
            t0 = time.perf_counter()
            if args.label_delivery == "bulk":
                client.bulk([(ann_id[t["id"]], t, results[t["id"]]) for t in train_tasks])
                versions = client.wait_idle(0)
            else:
                steps = 1 if args.label_delivery == "single" else int(args.label_delivery.split(":")[1])
                chunks = np.array_split(np.arange(len(train_tasks)), steps)
                versions = []
                for chunk in chunks:
                    for i in chunk:
                        t = train_tasks[i]
                        client.webhook("ANNOTATION_CREATED", ann_id[t["id"]], t, results[t["id"]])
                        if args.pace:
                            time.sleep(args.pace)
                    versions = client.wait_idle(len(versions))
            record["label_seconds"] = round(time.perf_counter() - t0, 1)
            record["label_versions"] = [version_summary(v) for v in versions]
            base_preds = client.predict(test_tasks)
            base_acc = float(np.mean([predicted_class(p, classes) == y for p, y in zip(base_preds, test_labels)]))
            record["base_accuracy"] = base_acc
            log(f"  base: {len(versions)} version(s), served test accuracy {base_acc:.3f} "
                f"({record['label_seconds']:.0f}s)")
            # (2) the queue order, the first N corrected
            n_before = len(versions)
            if args.order == "predict":
                preds = client.predict(train_tasks)
                scores = np.array([p.get("score", 0.0) for p in preds])
                order = [int(i) for i in np.argsort(scores, kind="stable")]
            else:
                order, preds = rank_order(server.model_dir, docroot, problem.label_config, train_tasks, extra)
            picks = order[:args.n]
            record["picked"] = [{"task": train_tasks[i]["id"], "label": int(labels[i]),
                                 "predicted": predicted_class(preds[i], classes),
                                 "score": preds[i].get("score")} for i in picks]
            from ml_backend.training.fit import in_holdout
            share = extra.get("holdout", 0.2)
            record["picked_in_holdout"] = sum(in_holdout(train_tasks[i]["id"], share) for i in picks)
            corrected = {}
            t0 = time.perf_counter()
            for k, i in enumerate(picks):
                t = train_tasks[i]
                ann = annotator.correct(t, int(labels[i]), problem.train.confounders[i], preds[i])
                corrected[t["id"]] = ann["result"]
                client.webhook("ANNOTATION_UPDATED", ann_id[t["id"]], t, ann["result"])
                if args.correction_delivery == "paced":
                    versions = client.wait_idle(len(versions))
            if args.correction_delivery != "paced":
                versions = client.wait_idle(n_before)
            record["correction_seconds"] = round(time.perf_counter() - t0, 1)
            record["shown_on_confounder"] = list(annotator.shown_on_confounder)
            record["correction_versions"] = [version_summary(v) for v in versions[n_before:]]
            final = client.predict(test_tasks)
            acc = float(np.mean([predicted_class(p, classes) == y for p, y in zip(final, test_labels)]))
            record["accuracy"] = acc
            last = record["correction_versions"][-1]
            log(f"  after {args.n} corrections: accuracy {acc:.3f}; last version {last['version']} "
                f"examples={last['examples']} holdout={last['holdout']} epochs={last['epochs']} "
                f"propagated_to={last['propagated_to']} loss={last['final_loss']}")
            if args.scratch:
                fresh = Client(server.url, problem.label_config, project=PROJECT_ID + 1)
                fresh.setup(extra)
                items = [(ann_id[t["id"]], t, corrected.get(t["id"], results[t["id"]])) for t in train_tasks]
                fresh.bulk(items)
                sv = fresh.wait_idle(0)
                preds2 = fresh.predict(test_tasks)
                acc2 = float(np.mean([predicted_class(p, classes) == y for p, y in zip(preds2, test_labels)]))
                record["scratch"] = {"accuracy": acc2, "version": version_summary(sv[-1])}
                log(f"  from scratch, one training on everything: accuracy {acc2:.3f}; "
                    f"epochs={sv[-1].get('epochs')} loss={sv[-1].get('final_loss')}")
            if args.keep_log:
                record["server_log_tail"] = server.log_path.read_text()[-4000:]
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    return record


# --------------------------------------------------------------------------- the suite's loop
def run_inproc(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import torch

    from benchmarks.xil.loop import Backend, prepare_problem, run_curve, train_base
    from benchmarks.xil.suite import METHODS, Method, settings_for

    problem = build_problem(args.seed, args.train)
    size = args.image_size or problem.image_size
    if args.concept_mask_any:
        patch_concept_mask_any()
    method = METHODS["cali"] if args.strategies == ["cali"] else Method("x", "x", "senn", tuple(args.strategies))
    over = {k: getattr(args, k) for k in ("holdout", "patience", "acquisition") if getattr(args, k) is not None}

    def settings(m):
        return dataclasses.replace(settings_for(size, m), **over).validate()

    device = torch.device("cpu")
    prepared = prepare_problem(problem, settings(METHODS["none"]))
    record: dict[str, Any] = {"mode": "inproc", "name": args.name, "seed": args.seed, "train": len(problem.train.tasks),
                              "test": len(problem.test.tasks), "n_corrections": args.n, "image_size": size,
                              "strategies": args.strategies, "overrides": over, "base_epochs": args.base_epochs,
                              "finetune_epochs": args.finetune_epochs,
                              "concept_mask_any": bool(args.concept_mask_any)}
    started = time.perf_counter()
    if args.clean:
        b = Backend(prepared, settings(METHODS["none"]), device)
        model, _ = train_base(b, clean=True, epochs=args.base_epochs + args.finetune_epochs, seed=args.seed)
        record["clean_accuracy"] = b.evaluate(model)["accuracy"]
        log(f"  clean (CNN): {record['clean_accuracy']:.3f}")
    base_backend = Backend(prepared, settings(Method("b", "b", "senn")), device)
    base, _ = train_base(base_backend, clean=False, epochs=args.base_epochs, seed=args.seed)
    backend = Backend(prepared, settings(method), device)
    points = run_curve(backend, base, [args.n], args.finetune_epochs, args.seed)
    record["points"] = points
    record["base_accuracy"], record["accuracy"] = points[0]["accuracy"], points[-1]["accuracy"]
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    log(f"  in-process: base {points[0]['accuracy']:.3f} -> N={args.n}: {points[-1]['accuracy']:.3f} "
        f"(propagated_to={points[-1].get('propagated_to')})")
    return record


def patch_concept_mask_any() -> None:
    """Ablation (in process only): a patch belongs to a correction when any of its pixels is marked.
    Shipped (``senn.patches_marked``): when most of it is marked or it holds a sixteenth of the mark;
    before that, when most of it was marked, which dropped the corner at 32 px (the records of
    ``benchmarks/results/xil_http.json`` ran before the change)."""
    import torch.nn.functional as F

    from ml_backend.models.senn import SENNKind

    shipped = SENNKind.concept_mask

    def concept_mask(self, mask):
        if self.network.concept_kind == "patches":
            return (F.max_pool2d(mask[:, None].float(), self.network.patch) > 0).flatten(1)
        return shipped(self, mask)

    SENNKind.concept_mask = concept_mask


# --------------------------------------------------------------------------- main
def log(message: str) -> None:
    print(message, flush=True)


def save(record: dict[str, Any], out: Path) -> None:
    from benchmarks.machine import describe

    data: dict[str, Any] = {}
    if out.exists():
        try:
            data = json.loads(out.read_text())
        except ValueError:
            data = {}
    data.setdefault("name", "xil_http")
    data.setdefault("title", "Four-corner decoy digits driven over HTTP through the real server (issue 23)")
    data["machine"] = describe("cpu")
    data.setdefault("records", []).append(record)
    data["command"] = ".venv/bin/python -m benchmarks.xil.http_loop [options] (each record keeps its own command)"
    data["tables"] = [{"title": "CALI on the SENN, four corners: one row per run",
                       "markdown": table(data["records"])}]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=float))


def table(records: list[dict[str, Any]]) -> str:
    """The runs side by side: how they ran, the served accuracy before and after the corrections."""
    rows = ["| run | mode | seed | kind | strategies | image size | holdout | epochs | patch rule | corrections held out "
            "| accuracy before -> after |", "|---|---|---:|---|---|---:|---:|---:|---|---:|---:|"]
    for r in records:
        params = r.get("extra_params") or {}
        overrides = r.get("overrides") or {}
        size = r.get("image_size") or params.get("image_size", 64)
        holdout = params.get("holdout", overrides.get("holdout", 0.2 if r["mode"] == "http" else "none"))
        epochs = params.get("epochs", 30) if r["mode"] == "http" else f"{r.get('base_epochs')}+{r.get('finetune_epochs')}"
        strategies = "+".join(params.get("strategies") or r.get("strategies") or [])
        rule = (r.get("patch_rule") or "").split(" ")[0] + (" (any pixel)" if r.get("concept_mask_any") else "")
        kind = params.get("model_kind", "senn")
        rows.append(f"| {r.get('name')} | {r['mode']} | {r['seed']} | {kind} | {strategies} | {size} | {holdout} | {epochs} "
                    f"| {rule} | {r.get('picked_in_holdout', '')} "
                    f"| {r.get('base_accuracy', 0):.3f} -> {r.get('accuracy', 0):.3f} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--name", default="run", help="a label for the record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=800, help="training tasks (a subset of the problem's split)")
    parser.add_argument("--n", type=int, default=8, help="corrections (the queue's first N)")
    parser.add_argument("--strategies", nargs="+", default=["cali"])
    parser.add_argument("--model-kind", default="senn", help="extra_params model_kind (cnn: the backend's default CNN)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SETTING=VALUE",
                        help="more extra_params, e.g. lr_schedule=constant")
    parser.add_argument("--image-size", type=int, help="extra_params image_size (default: the shipped 64)")
    parser.add_argument("--holdout", type=float, help="extra_params holdout (default: the shipped 0.2)")
    parser.add_argument("--epochs", type=int, help="extra_params epochs (default: the shipped 30)")
    parser.add_argument("--patience", type=int, help="extra_params patience (default: the shipped 8)")
    parser.add_argument("--acquisition", help="extra_params acquisition (default: entropy)")
    parser.add_argument("--label-delivery", default="single", help="single | bulk | steps:K")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between label webhooks")
    parser.add_argument("--correction-delivery", default="together", choices=["together", "paced"])
    parser.add_argument("--order", default="predict", choices=["predict", "rank"])
    parser.add_argument("--debounce", type=float, default=2.0, help="TRAIN_DEBOUNCE_SECONDS (shipped 2)")
    parser.add_argument("--job-nice", type=int, default=0, help="JOB_NICE (shipped 19; 0 on a shared benchmark box)")
    parser.add_argument("--scratch", action="store_true", help="also one training from scratch on everything")
    parser.add_argument("--keep-log", action="store_true")
    parser.add_argument("--inproc", action="store_true", help="the suite's in-process loop instead of HTTP")
    parser.add_argument("--clean", action="store_true", help="in-process: also the clean upper bound")
    parser.add_argument("--concept-mask-any", action="store_true",
                        help="in-process ablation: a patch is corrected when any of its pixels is marked")
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(args.threads)
    log(f"[{args.name}] seed {args.seed} {'in-process' if args.inproc else 'HTTP'}")
    record = run_inproc(args) if args.inproc else run_http(args)
    record["command"] = " ".join([".venv/bin/python", "-m", "benchmarks.xil.http_loop",
                                  *(argv if argv is not None else sys.argv[1:])])
    save(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
