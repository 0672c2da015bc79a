"""/predict's adapter: each project's serving model cached per process, tasks read in parallel,
predictions rendered a chunk at a time."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch

from ml_backend.config import Settings, parse_extra_params
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.prepare import PreparedTask, prepare_task
from ml_backend.data.unreadable import UNREADABLE
from ml_backend.inference import resolve_device
from ml_backend.interactive import render_counterfactual
from ml_backend.labelstudio.interactive import Marks
from ml_backend.models import CheckpointError
from ml_backend.project import ProjectContext, project_context, user_checkpoint
from ml_backend.rendering import render_predictions
from ml_backend.store import LoadedModel, ProjectStore, StoreError

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
PREDICT_CHUNK = 32


def configure_torch(settings: Settings) -> None:
    """Process-wide torch settings, applied once at start-up."""
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


class Predictor:
    """Per-process cache of each project's serving model, switched when a new version is published."""

    def __init__(self, settings: Settings, fetcher: Optional[Fetcher] = None) -> None:
        self.settings = settings
        self.fetcher = fetcher or Fetcher(settings)
        self.device = resolve_device(settings.device)
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    # projects ---------------------------------------------------------------------
    def store(self, key: str) -> ProjectStore:
        return ProjectStore(self.settings.model_dir, key)

    def context(self, project: Any, label_config: Optional[str] = None,
                extra_params: Any = None) -> ProjectContext:
        return project_context(self.settings, project, label_config, extra_params)

    def setup(self, project: Any, label_config: str, extra_params: Any = None) -> str:
        """Store the project's label config and params once they serve (its checkpoint imported, for
        a project without a version); the serving version. A refused setup stores nothing."""
        ctx = self.context(project, label_config, extra_params)  # a config the kinds cannot serve: 422 now
        # The model first: a checkpoint refused on import must not stay in project.json. A crash
        # between the two leaves the imported version serving and the old params, which the next
        # /setup (Label Studio repeats it) stores.
        loaded = self.model(ctx)
        self.store(ctx.key).update_config(label_config=label_config, extra_params=parse_extra_params(extra_params))
        return loaded.version if loaded else UNTRAINED

    def model(self, ctx: ProjectContext) -> Optional[LoadedModel]:
        """The serving model, or None while the project is untrained."""
        store = self.store(ctx.key)
        current = store.current()
        if current is None and ctx.settings.checkpoint:
            with self._lock(ctx.key):  # Label Studio calls /setup in bursts: import once
                current = store.current() or self._import_checkpoint(ctx, store)
        if current is None:
            return None
        loaded = self._models.get(ctx.key)
        if loaded is None or loaded.version != current:
            with self._lock(ctx.key):
                loaded = self._models.get(ctx.key)
                if loaded is None or loaded.version != current:
                    loaded = store.load(current, ctx.settings.feature_cache_mb)
                    loaded.model.to(self.device).network.eval()
                    self._models[ctx.key] = loaded
                    log.info("project %s now serves %s", ctx.key, current)
        if loaded.classes != ctx.schema.classes or loaded.model.multi_label != ctx.schema.multi_label:
            log.warning("project %s: %s was trained on classes %s (multi-label: %s), the config now has %s "
                        "(multi-label: %s); serving untrained until the next training", ctx.key, loaded.version,
                        loaded.classes, loaded.model.multi_label, ctx.schema.classes, ctx.schema.multi_label)
            return None
        return loaded

    def _import_checkpoint(self, ctx: ProjectContext, store: ProjectStore) -> Optional[str]:
        """Start a project from user-supplied weights."""
        try:
            model = user_checkpoint(ctx, self.settings.model_dir, self.settings.weights_dirs)
        except CheckpointError as exc:
            raise StoreError(str(exc)) from None
        return store.publish(model, ctx.schema.classes, {"source": ctx.settings.checkpoint})

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # prediction ------------------------------------------------------------------
    def predict(self, ctx: ProjectContext, tasks: list[dict[str, Any]], marks: Marks = Marks()
                ) -> list[Any]:
        """Exactly one item per task, in task order: a prediction, or an empty list (no prediction) for
        a task whose data cannot be read; with ``marks`` (the regions an annotator
        drew on the one task), its counterfactual instead when the marks cover anything."""
        loaded = self.model(ctx)
        if loaded is None:
            # No labels until a model has been trained: an untrained network's argmax
            # would be presented as a label the annotator should trust.
            return [{"model_version": UNTRAINED, "score": 0.0, "result": []} for _ in tasks]
        if marks and len(tasks) == 1:
            answer = self.counterfactual(ctx, loaded, tasks[0], marks)
            if answer is not None:
                return [answer]
        # A task whose data cannot be read gets no prediction (an empty list: zero predictions for
        # it, which Label Studio stores none of): an empty result with a score would sort it first
        # under uncertainty sampling, as if it were the most informative task.
        results: list[Any] = [[] for _ in tasks]
        # Label Studio sends a whole Data Manager selection in one request: decode and explain it
        # a chunk at a time, so memory stays bounded by the chunk, not the selection.
        for start in range(0, len(tasks), PREDICT_CHUNK):
            prepared = self.prepare(ctx, loaded, tasks[start:start + PREDICT_CHUNK])
            if not prepared:
                continue
            with self._lock(ctx.key):
                predictions = render_predictions(ctx, loaded, prepared).predictions
            for item, prediction in zip(prepared, predictions):
                results[start + item.index] = prediction
        return results

    def counterfactual(self, ctx: ProjectContext, loaded: LoadedModel, task: dict[str, Any],
                       marks: Marks) -> Optional[dict[str, Any]]:
        """The task's counterfactual; None when its data cannot be read or the marks cover nothing."""
        prepared = self.prepare(ctx, loaded, [task])
        if not prepared:
            return None
        with self._lock(ctx.key):
            return render_counterfactual(ctx, loaded, prepared[0], marks)

    def prepare(self, ctx: ProjectContext, loaded: LoadedModel, tasks: list[dict[str, Any]]) -> list[PreparedTask]:
        """Read each task's data; a task that cannot be read is logged and left out."""
        keep = ctx.settings.slic_segments > 0
        futures = [self._pool.submit(prepare_task, ctx.schema, loaded.model, task, self.fetcher, i, keep)
                   for i, task in enumerate(tasks)]
        prepared = []
        for i, future in enumerate(futures):
            try:
                prepared.append(future.result())
            except DataError as exc:
                task_id = tasks[i].get("id") if isinstance(tasks[i], dict) else None
                UNREADABLE.report(ctx.key, task_id, str(exc))
        return prepared
