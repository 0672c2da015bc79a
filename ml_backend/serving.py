"""Tasks in, Label Studio predictions out: data -> model -> explanation -> regions -> results."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ml_backend.config import ConfigError, ProjectSettings, Settings, parse_extra_params
from ml_backend.data.fetch import DataError, Fetcher
from ml_backend.data.images import image_to_tensor, load_image
from ml_backend.data.text import Token, encode_tokens, tokenize
from ml_backend.explain.attribution import explain_images, explain_tokens, predict_with_gradcam
from ml_backend.explain.regions import evidence_mask, mask_regions, token_spans
from ml_backend.labelstudio.results import brush_result, choices_result, span_result
from ml_backend.labelstudio.schema import SchemaError, TaskSchema, parse_label_config
from ml_backend.models import build_model
from ml_backend.training.registry import (LoadedModel, ProjectRegistry, RegistryError, is_checkpoint, model_from_checkpoint,
                                          read_weights)

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
PREDICT_CHUNK = 32


def project_key(project: Any) -> str:
    """Label Studio sends "<id>.<created timestamp>"; the id names the project."""
    key = str(project if project not in (None, "") else "default").split(".")[0]
    return key or "default"


def configure_torch(settings: Settings) -> None:
    """Process-wide torch settings, applied once at start-up."""
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_model_config(schema: TaskSchema, settings: ProjectSettings) -> tuple[str, dict[str, Any]]:
    """The model kind and constructor kwargs a new project starts with."""
    kind = settings.model_kind
    if schema.object_type == "image":
        config: dict[str, Any] = {"n_classes": schema.n_classes, "image_size": settings.image_size}
        if kind == "senn":
            patch = settings.senn_patch if settings.image_size % settings.senn_patch == 0 else 1
            config.update(concepts=settings.senn_concepts, patch=patch)
        if kind in ("", "cnn", "senn", "bayesian_cnn"):
            return kind or "cnn", config
    else:
        if kind in ("", "text_cnn"):
            return "text_cnn", {"n_classes": schema.n_classes}
        if kind == "senn":
            return "text_senn", {"n_classes": schema.n_classes}
    raise ConfigError(f"model_kind {kind!r} does not serve {schema.object_type} projects")


@dataclass
class ProjectContext:
    """What a project needs to predict and train: its schema and settings."""

    key: str
    schema: TaskSchema
    settings: ProjectSettings
    label_config: str


@dataclass
class PreparedTask:
    """One task turned into model input (Label Studio's format stops here)."""

    index: int
    tensor: torch.Tensor
    image_size: Optional[tuple[int, int]] = None  # (height, width) of the original image
    image: Optional[np.ndarray] = None  # kept only when SLIC snapping needs it
    text: Optional[str] = None
    tokens: Optional[list[Token]] = None


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
    def registry(self, key: str) -> ProjectRegistry:
        return ProjectRegistry(self.settings.model_dir, key)

    def context(self, project: Any, label_config: Optional[str] = None,
                extra_params: Any = None) -> ProjectContext:
        return project_context(self.settings, project, label_config, extra_params)

    def setup(self, project: Any, label_config: str, extra_params: Any = None) -> str:
        ctx = self.context(project, label_config, extra_params)
        default_model_config(ctx.schema, ctx.settings)  # a model kind that cannot serve this config: 422 now
        registry = self.registry(ctx.key)
        state = registry.load_project() or {}
        new_state = {"label_config": label_config, "extra_params": parse_extra_params(extra_params)}
        if {k: state.get(k) for k in new_state} != new_state:
            registry.save_project({**state, **new_state})
        loaded = self.model(ctx)
        return loaded.version if loaded else UNTRAINED

    def model(self, ctx: ProjectContext) -> Optional[LoadedModel]:
        """The serving model, or None while the project is untrained."""
        registry = self.registry(ctx.key)
        current = registry.current()
        if current is None and ctx.settings.checkpoint:
            with self._lock(ctx.key):  # Label Studio calls /setup in bursts: import once
                current = registry.current() or self._import_checkpoint(ctx, registry)
        if current is None:
            return None
        loaded = self._models.get(ctx.key)
        if loaded is None or loaded.version != current:
            with self._lock(ctx.key):
                loaded = self._models.get(ctx.key)
                if loaded is None or loaded.version != current:
                    loaded = registry.load(current)
                    loaded.model.to(self.device, memory_format=torch.channels_last).eval()
                    self._models[ctx.key] = loaded
                    log.info("project %s now serves %s", ctx.key, current)
        if loaded.classes != ctx.schema.classes:
            log.warning("project %s: %s was trained on classes %s, the config now has %s; serving untrained "
                        "until the next training", ctx.key, loaded.version, loaded.classes, ctx.schema.classes)
            return None
        return loaded

    def _import_checkpoint(self, ctx: ProjectContext, registry: ProjectRegistry) -> Optional[str]:
        """Start a project from user-supplied weights: our checkpoint, or a bare state_dict."""
        checkpoint = load_checkpoint_file_or_state_dict(ctx)
        classes = tuple(checkpoint.get("classes") or ctx.schema.classes)
        if classes != ctx.schema.classes or checkpoint["config"].get("n_classes") != ctx.schema.n_classes:
            raise RegistryError(f"checkpoint {ctx.settings.checkpoint} predicts classes {list(classes)}; "
                                f"the label config has {list(ctx.schema.classes)}")
        model = model_from_checkpoint(checkpoint)
        return registry.publish(model, ctx.schema.classes, {"source": ctx.settings.checkpoint})

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # prediction ------------------------------------------------------------------
    def predict(self, ctx: ProjectContext, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Exactly one prediction per task, in task order."""
        loaded = self.model(ctx)
        if loaded is None:
            # No labels until a model has been trained: an untrained network's argmax
            # would be presented as a label the annotator should trust.
            return [{"model_version": UNTRAINED, "score": 0.0, "result": []} for _ in tasks]
        results = [{"model_version": loaded.version, "score": 0.0, "result": []} for _ in tasks]
        # Label Studio sends a whole Data Manager selection in one request: decode and explain it
        # a chunk at a time, so memory stays bounded by the chunk, not the selection.
        for start in range(0, len(tasks), PREDICT_CHUNK):
            prepared = self.prepare(ctx, loaded.model, tasks[start:start + PREDICT_CHUNK])
            if not prepared:
                continue
            with self._lock(ctx.key):
                predictions = render_predictions(ctx, loaded, prepared, self.device).predictions
            for item, prediction in zip(prepared, predictions):
                results[start + item.index] = prediction
        return results

    def prepare(self, ctx: ProjectContext, model: nn.Module, tasks: list[dict[str, Any]]) -> list[PreparedTask]:
        """Read each task's data; a task that cannot be read is logged and left out."""
        futures = [self._pool.submit(prepare_task, ctx, model.config, task, self.fetcher, i) for i, task in enumerate(tasks)]
        prepared = []
        for i, future in enumerate(futures):
            try:
                prepared.append(future.result())
            except DataError as exc:
                task_id = tasks[i].get("id") if isinstance(tasks[i], dict) else None
                log.warning("project %s task %s: cannot read data: %s", ctx.key, task_id, exc)
        return prepared

@dataclass
class Rendered:
    predictions: list[dict[str, Any]]
    probs: torch.Tensor  # (N, K) on CPU
    relevance: Optional[np.ndarray]  # (N, H, W) or (N, L) at model resolution, when evidence was computed


def render_predictions(ctx: ProjectContext, loaded: LoadedModel, prepared: list[PreparedTask],
                       device: torch.device, with_relevance: bool = False) -> Rendered:
    """Forward pass, explanation and Label Studio results for prepared tasks (same order)."""
    model, schema, settings = loaded.model, ctx.schema, ctx.settings
    x = torch.stack([p.tensor for p in prepared]).to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    explain = schema.has_evidence or with_relevance
    relevance = None
    if explain and settings.attribution == "gradcam" and _plain_cnn(model) and x.dim() == 4:
        probs, cam = predict_with_gradcam(model, x)  # one forward pass for both
        targets = probs.argmax(dim=1)
        relevance = _fill_empty_with_saliency(model, x, targets, cam).cpu().numpy()
    else:
        with torch.no_grad():
            if hasattr(model, "mc_probs"):  # a Bayesian model predicts with its posterior's MC average
                probs = model.mc_probs(x, settings.mc_samples).mean(0)
            else:
                probs = torch.softmax(model(x), dim=1)
        targets = probs.argmax(dim=1)
        if explain:
            relevance = relevance_maps(model, x, targets, settings.attribution).detach().cpu().numpy()
    confidence = probs.gather(1, targets[:, None])[:, 0]
    out = []
    for i, item in enumerate(prepared):
        label = schema.classes[int(targets[i])]
        result = [choices_result(schema, label, float(confidence[i]))]
        if relevance is not None and schema.has_evidence:
            result += evidence_results(ctx, item, relevance[i])
        out.append({"model_version": loaded.version, "score": float(confidence[i]), "result": result})
    return Rendered(out, probs.cpu(), relevance)


def evidence_results(ctx: ProjectContext, item: PreparedTask, relevance: np.ndarray) -> list[dict[str, Any]]:
    """Relevance at model resolution -> BrushLabels regions at the original size, or Labels spans."""
    schema, settings = ctx.schema, ctx.settings
    if schema.object_type == "image":
        mask = evidence_mask(relevance, settings.evidence_mass, out_shape=item.image_size,
                             slic_image=item.image, slic_segments=settings.slic_segments)
        regions = mask_regions(mask, relevance, settings.evidence_regions)
        return [brush_result(schema, region, score, f"evidence-{item.index}-{k}")
                for k, (region, score) in enumerate(regions)]
    n_tokens = min(len(item.tokens or []), relevance.shape[0])
    spans = token_spans(relevance[:n_tokens], (item.tokens or [])[:n_tokens], settings.evidence_mass,
                        text=item.text)
    return [span_result(schema, item.text or "", start, end, score, f"evidence-{item.index}-{k}")
            for k, (start, end, score) in enumerate(spans)]


def project_context(settings: Settings, project: Any, label_config: Optional[str] = None,
                    extra_params: Any = None) -> ProjectContext:
    """Schema and settings for a project, from the request or from what /setup stored."""
    key = project_key(project)
    stored = ProjectRegistry(settings.model_dir, key).load_project() or {}
    label_config = label_config or stored.get("label_config")
    if not label_config:
        raise SchemaError(f"project {key} has no label config: call /setup or send label_config")
    params = parse_extra_params(extra_params) if extra_params is not None else stored.get("extra_params") or {}
    return ProjectContext(key, parse_label_config(label_config), settings.project.with_overrides(params), label_config)


def prepare_task(ctx: ProjectContext, model_config: dict[str, Any], task: Any, fetcher: Fetcher,
                 index: int = 0) -> PreparedTask:
    """Read one task's data into model input; DataError says why it cannot be read."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise DataError("task has no data object")
    value = task["data"].get(ctx.schema.data_key)
    if value is None:
        raise DataError(f"task data has no field {ctx.schema.data_key!r}")
    if ctx.schema.object_type == "image":
        if not isinstance(value, str):
            raise DataError(f"{ctx.schema.data_key!r} must be an image URL")
        image = load_image(fetcher.fetch(value, task_id=task.get("id")))
        keep = np.asarray(image) if ctx.settings.slic_segments > 0 else None
        return PreparedTask(index, image_to_tensor(image, model_config["image_size"]),
                            image_size=(image.height, image.width), image=keep)
    if not isinstance(value, str):
        raise DataError(f"{ctx.schema.data_key!r} must be text")
    tokens = tokenize(value)
    ids = encode_tokens(tokens, model_config["max_len"], model_config["n_buckets"])
    return PreparedTask(index, ids, text=value, tokens=tokens)


def relevance_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """Per-pixel (N,H,W) or per-token (N,L) relevance: a self-explaining model's own, else captum's."""
    if hasattr(model, "evidence_map"):
        with torch.no_grad():
            return model.evidence_map(x, targets).clamp_min(0)
    if x.dtype == torch.long:
        return explain_tokens(model, x, targets, method)
    relevance = explain_images(model, x, targets, method)
    return _fill_empty_with_saliency(model, x, targets, relevance) if method == "gradcam" else relevance


def _fill_empty_with_saliency(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                              relevance: torch.Tensor) -> torch.Tensor:
    """Grad-CAM is all zero when no conv unit speaks positively for the class (common early in
    training); the annotator should still see where the model looks, so use its saliency."""
    empty = relevance.flatten(1).sum(1) <= 0
    if bool(empty.any()):
        relevance[empty] = explain_images(model, x[empty], targets[empty], "saliency")
    return relevance


def _plain_cnn(model: nn.Module) -> bool:
    """A deterministic network with a Grad-CAM layer (not a SENN, not a Bayesian model)."""
    return hasattr(model, "cam_layer") and not hasattr(model, "mc_probs") and not hasattr(model, "evidence_map")


def load_checkpoint_file_or_state_dict(ctx: ProjectContext) -> dict[str, Any]:
    """User weights: an ml_backend checkpoint, or a bare state_dict for the project's default model."""
    from pathlib import Path

    weights = read_weights(Path(ctx.settings.checkpoint))
    if is_checkpoint(weights):
        return weights
    if not isinstance(weights, dict):
        raise RegistryError(f"{ctx.settings.checkpoint} holds neither a checkpoint nor a state_dict")
    kind, config = default_model_config(ctx.schema, ctx.settings)
    return {"kind": kind, "config": config, "classes": list(ctx.schema.classes), "state_dict": weights}


def new_model(ctx: ProjectContext) -> nn.Module:
    kind, config = default_model_config(ctx.schema, ctx.settings)
    return build_model(kind, **config)
