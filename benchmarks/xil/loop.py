"""The backend's own loop, driven in process: rank -> show -> annotate -> parse -> strategies -> fit.

Nothing here re-implements a stage of the backend. Each step calls the code the live backend
runs for a project:

- tasks -> tensors: ``data.prepare.prepare_task`` (PNG data URIs through ``data.fetch.Fetcher``);
- ranking: ``ranking.score.Scorer`` (``rendering.render_predictions`` + the project's acquisition
  function; BALD's MC samples from the model kind; ALEX's labelled explanations through
  ``ranking.score.labeled_explanations``), which also renders the Label Studio results shown to
  the annotator;
- annotations -> feedback: ``feedback.parse.parse_annotation`` on Label Studio annotation JSON;
- feedback -> fit: ``training.fit.fit_examples``, the call the training job makes (propagation,
  each strategy's extra examples and loss terms, early stopping; warm start from the current model);
- evaluation: ``training.trainer.accuracy`` and ``training.fit.attribution_on_irrelevant``
  (the share of the served explanation's mass on the confounder, the thesis' overlap metric).

What the benchmark adds is only what Label Studio and a person would do: hold tasks, choose the
top-ranked ones, and answer them (``annotator.SimulatedAnnotator``).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ml_backend.config import ProjectSettings, Settings
from ml_backend.data.fetch import Fetcher
from ml_backend.feedback.parse import parse_annotation
from ml_backend.data.prepare import PreparedTask, marks_on_input, prepare_task
from ml_backend.models.base import ModelKind
from ml_backend.models.feature_cache import FeatureCache
from ml_backend.project import ProjectContext, make_context, new_model
from ml_backend.ranking.score import Scorer, labeled_explanations
from ml_backend.store import LoadedModel
from ml_backend.training.fit import Example, attribution_on_irrelevant, fit_examples
from ml_backend.training.sets import TrainingSet
from ml_backend.training.trainer import accuracy

from benchmarks.xil.annotator import SimulatedAnnotator
from benchmarks.xil.data import Problem, Split

RANK_BATCH = 256


def project_context(problem: Problem, settings: ProjectSettings) -> ProjectContext:
    return make_context("xil-benchmark", problem.label_config, settings.validate())


@dataclass
class PreparedSplit:
    split: Split
    tasks: list[PreparedTask]
    x: torch.Tensor
    y: torch.Tensor
    confounder: Optional[torch.Tensor] = None  # (N, H, W) / (N, L) bool at model resolution


@dataclass
class PreparedProblem:
    """A problem's tasks read once per model input configuration, and its label-only examples."""

    problem: Problem
    model: ModelKind  # a fresh model of the settings' kind: what input it reads
    train: PreparedSplit
    test: PreparedSplit
    clean_train: PreparedSplit
    clean_test: Optional[PreparedSplit]
    label_only: list[Example] = field(default_factory=list)
    clean_examples: list[Example] = field(default_factory=list)
    decorrelated_examples: list[Example] = field(default_factory=list)  # where the problem has the twin


def _prepare_split(ctx: ProjectContext, split: Split, model: ModelKind, fetcher: Fetcher,
                   annotator: SimulatedAnnotator, with_confounder: bool) -> PreparedSplit:
    tasks = [prepare_task(ctx.schema, model, t, fetcher, i) for i, t in enumerate(split.tasks)]
    x = torch.stack([p.tensor for p in tasks])
    y = torch.as_tensor(split.labels, dtype=torch.long)
    conf = None
    if with_confounder:
        # the confounder at model resolution, read the way the backend reads an annotator's marks
        masks = []
        for task, prepared, label, c in zip(split.tasks, tasks, split.labels, split.confounders):
            fb = _parse(ctx, annotator.correct(task, int(label), c, None), task, model, prepared)
            masks.append(torch.as_tensor(fb.irrelevant if fb.irrelevant is not None
                                         else np.zeros(tuple(x.shape[2:] if x.dim() == 4 else x.shape[1:]), bool)))
        conf = torch.stack(masks).bool()
    return PreparedSplit(split, tasks, x, y, conf)


def _parse(ctx: ProjectContext, annotation: dict[str, Any], task: dict[str, Any], model: ModelKind,
           prepared: PreparedTask):
    """As the training job reads an annotation: parsed, then its marks moved onto the model's input
    (a backbone's processor resizes and crops; the CNN's stretch is already in ``image_size``)."""
    spec = model.input_spec()
    return marks_on_input(parse_annotation(annotation, task, ctx.schema, image_size=spec.image_size,
                                           max_len=spec.max_len, text=prepared.text, tokens=prepared.tokens), prepared)


def prepare_problem(problem: Problem, settings: ProjectSettings, decorrelated: bool = False) -> PreparedProblem:
    """``decorrelated``: also read the problem's decorrelated twin, where it has one."""
    ctx = project_context(problem, settings)
    model = new_model(ctx)
    fetcher = Fetcher(Settings())
    annotator = SimulatedAnnotator(ctx.schema)
    train = _prepare_split(ctx, problem.train, model, fetcher, annotator, True)
    test = _prepare_split(ctx, problem.test, model, fetcher, annotator, True)
    clean_train = _prepare_split(ctx, problem.clean_train, model, fetcher, annotator, False)
    clean_test = (_prepare_split(ctx, problem.clean_test, model, fetcher, annotator, False)
                  if problem.clean_test else None)
    out = PreparedProblem(problem, model, train, test, clean_train, clean_test)
    splits = [(train, out.label_only), (clean_train, out.clean_examples)]
    if decorrelated and problem.decorrelated_train is not None:
        splits.append((_prepare_split(ctx, problem.decorrelated_train, model, fetcher, annotator, False),
                       out.decorrelated_examples))
    for split, target in splits:
        for task, prepared, label in zip(split.split.tasks, split.tasks, split.split.labels):
            fb = _parse(ctx, annotator.label_only(task, int(label)), task, model, prepared)
            target.append(Example(int(task["id"]), prepared.tensor, fb, prepared.text, prepared.tokens))
    return out


class Backend:
    """One project of the backend with one model: its context, ranking and training steps."""

    def __init__(self, data: PreparedProblem, settings: ProjectSettings, device: torch.device,
                 feature_cache: Optional[FeatureCache] = None) -> None:
        self.data = data
        self.ctx = project_context(data.problem, settings)
        self.device = device
        self.annotator = SimulatedAnnotator(self.ctx.schema)
        self.feature_cache = feature_cache  # a frozen backbone's, kept as the training job keeps it

    def new_model(self) -> ModelKind:
        model = new_model(self.ctx).to(self.device)
        model.use_feature_cache(self.feature_cache)
        return model

    # ranking ---------------------------------------------------------------------------
    def rank(self, model: ModelKind, pool: list[int], labeled: list[int], version: str
             ) -> tuple[list[int], dict[int, dict[str, Any]]]:
        """Pool indices, most informative first, and the prediction rendered for each."""
        loaded = LoadedModel(version, model, self.ctx.schema.classes)
        model.network.eval()
        scorer = Scorer(self.ctx, loaded)
        tasks = [self.data.train.tasks[i] for i in pool]
        predictions: dict[int, dict[str, Any]] = {}
        for start in range(0, len(tasks), RANK_BATCH):
            rendered = scorer.add(tasks[start:start + RANK_BATCH])
            for k, prediction in enumerate(rendered):
                predictions[pool[start + k]] = prediction
        labeled_pooled = None
        if scorer.acquisition.needs_explanations and labeled:
            labeled_pooled = labeled_explanations(self.ctx, loaded, [self.data.train.tasks[i] for i in labeled])
        values = scorer.scores(labeled_pooled)
        order = [pool[i] for i in scorer.order(values)]
        return order, predictions

    # feedback and training ---------------------------------------------------------------
    def corrected_example(self, index: int, prediction: Optional[dict[str, Any]]) -> Example:
        split = self.data.train.split
        task, prepared = split.tasks[index], self.data.train.tasks[index]
        annotation = self.annotator.correct(task, int(split.labels[index]), split.confounders[index], prediction)
        fb = _parse(self.ctx, annotation, task, self.data.model, prepared)
        return Example(int(task["id"]), prepared.tensor, fb, prepared.text, prepared.tokens)

    def train(self, model: ModelKind, examples: list[Example], epochs: int, seed: int) -> dict[str, Any]:
        """The training job's fit (``training.fit.fit_examples``) with the benchmark's epoch budget."""
        settings = dataclasses.replace(self.ctx.settings, epochs=epochs)
        fitted = fit_examples(model, examples, settings, seed=seed, device=self.device)
        report = fitted.report
        return {"epochs": report.epochs_run, "seconds": report.seconds, **fitted.added,
                "final_loss": report.history[-1] if report.history else None}

    # evaluation --------------------------------------------------------------------------
    def evaluate(self, model: ModelKind) -> dict[str, Any]:
        test = self.data.test
        empty = torch.zeros_like(test.confounder)
        mass = attribution_on_irrelevant(model, TrainingSet(test.x, test.y, test.confounder, empty),
                                         self.ctx.settings.attribution)
        out = {"accuracy": accuracy(model, test.x, test.y), "confounder_mass": mass}
        if self.data.clean_test is not None:
            out["clean_test_accuracy"] = accuracy(model, self.data.clean_test.x, self.data.clean_test.y)
        return out


def train_base(backend: Backend, clean: bool, epochs: int, seed: int, decorrelated: bool = False
               ) -> tuple[ModelKind, float]:
    """A model trained on the whole labelled training set with no explanation feedback (``clean``: on
    its clean twin; ``decorrelated``: on its twin with the confounder independent of the label)."""
    torch.manual_seed(seed)
    model = backend.new_model()
    if decorrelated:
        examples = backend.data.decorrelated_examples
        if not examples:
            raise ValueError(f"{backend.data.problem.name} has no decorrelated twin")
    else:
        examples = backend.data.clean_examples if clean else backend.data.label_only
    started = time.perf_counter()
    backend.train(model, list(examples), epochs, seed)
    return model, time.perf_counter() - started


def run_curve(backend: Backend, base: ModelKind, budgets: list[int], epochs: int, seed: int
              ) -> list[dict[str, Any]]:
    """Sequential rounds: rank with the current model, correct the top tasks up to each budget,
    fine-tune (warm start, all labelled data + the corrections), evaluate on the test set."""
    torch.manual_seed(10_000 + seed)
    model = copy.deepcopy(base)
    examples = list(backend.data.label_only)
    corrected: list[int] = []
    points = [{"n": 0, **backend.evaluate(model), "train_seconds": 0.0, "rank_seconds": 0.0}]
    total_train = total_rank = 0.0
    for r, budget in enumerate(budgets):
        need = budget - len(corrected)
        if need <= 0:
            continue
        started = time.perf_counter()
        done = set(corrected)
        pool = [i for i in range(len(examples)) if i not in done]
        order, predictions = backend.rank(model, pool, corrected, version=f"round-{r}")
        picks = order[:need]
        for i in picks:
            examples[i] = backend.corrected_example(i, predictions[i])
        corrected += picks
        total_rank += time.perf_counter() - started
        info = backend.train(model, examples, epochs, seed=seed * 100 + r)
        total_train += info["seconds"]
        kinds = [examples[i].feedback.kind for i in corrected]
        points.append({"n": budget, **backend.evaluate(model), "train_seconds": total_train,
                       "rank_seconds": total_rank, "epochs": info["epochs"],
                       "counterexamples": info["counterexamples"], "propagated_to": info["propagated_to"],
                       "irrelevant_feedback": sum(k.startswith("irrelevant") for k in kinds),
                       "shown_on_confounder": float(np.mean(backend.annotator.shown_on_confounder))
                       if backend.annotator.shown_on_confounder else None,
                       "picked_labels": [int(backend.data.train.split.labels[i]) for i in picks]})
    return points
