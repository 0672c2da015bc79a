"""A project as the cores see it: its key, parsed label config, settings and model kind."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ml_backend.config import ConfigError, ProjectSettings, Settings, parse_extra_params, path_problem
from ml_backend.explain.attribution import METHODS
from ml_backend.labelstudio.schema import SchemaError, TaskSchema, parse_label_config
from ml_backend.models import (CheckpointError, backbones, from_checkpoint, is_checkpoint, kind_for, model_kind_names,
                               read_weights)
from ml_backend.models.base import ModelKind
from ml_backend.ranking.acquisition import ACQUISITIONS
from ml_backend.store import ProjectStore, StoreError, allowed_path
from ml_backend.training.strategies import DEFAULT, STRATEGIES, strategy_names


@dataclass
class ProjectContext:
    """What a project needs to predict and train: its schema, settings and model kind."""

    key: str
    schema: TaskSchema
    settings: ProjectSettings
    label_config: str
    kind: type[ModelKind]


_PROJECT_ID = re.compile(r"\d{1,18}(\.\d{1,20})?")


class ProjectIdError(ValueError):
    """Not a Label Studio project id (an integer, optionally followed by ".<created timestamp>")."""


def project_key(project: Any) -> str:
    """Label Studio sends "<id>.<created timestamp>", or the id; the id names the project. A
    request without one is the "default" project."""
    if project is None or project == "":
        return "default"
    if isinstance(project, int) and not isinstance(project, bool) and 0 <= project < 10 ** 18:
        return str(project)
    if isinstance(project, str) and _PROJECT_ID.fullmatch(project):
        return project.split(".")[0]
    # the value is not echoed: a malformed payload can carry the project's token in this field
    raise ProjectIdError(f"invalid project id ({type(project).__name__}): send the Label Studio project id, "
                         "an integer")


def check_names(settings: ProjectSettings) -> ProjectSettings:
    """The settings that name an extension (model kind, strategies, attribution method,
    acquisition function) name registered ones; ConfigError names the setting otherwise."""
    if settings.model_kind not in model_kind_names():
        raise ConfigError(f"model_kind must be one of {', '.join(n for n in model_kind_names() if n)}, "
                          f"not {settings.model_kind!r}")
    for name in settings.strategies:
        if name != DEFAULT:
            try:
                STRATEGIES.get(name)
            except ConfigError as exc:
                raise ConfigError(f"{exc}; or {DEFAULT!r}, the model kind's own") from None
    if settings.attribution not in METHODS:
        raise ConfigError(f"attribution must be one of {', '.join(METHODS)}, not {settings.attribution!r}")
    ACQUISITIONS.get(settings.acquisition)
    return settings


def resolve_kind(schema: TaskSchema, settings: ProjectSettings) -> type[ModelKind]:
    """The project's model kind, checked against its feedback strategies."""
    check_names(settings)
    kind = kind_for(schema.object_type, settings.model_kind, backbone=bool(settings.backbone))
    if schema.multi_label and not kind.serves_multi_label:
        raise ConfigError(f"model_kind {kind.name!r} serves single-label Choices only; for <Choices "
                          f"name=\"{schema.choices_name}\" choice=\"multiple\"> use the default model_kind "
                          "(cnn, text_cnn) or a backbone")
    for name in strategy_names(settings.strategies, kind):
        strategy = STRATEGIES.get(name)
        if not kind.supports(strategy):
            raise ConfigError(f"strategy {name!r} does not train model_kind {kind.name!r}: {strategy.requirement}")
    return kind


def with_backbone(schema: TaskSchema, settings: ProjectSettings, model_dir: Optional[Path],
                  weights_dirs: tuple[str, ...] = ()) -> ProjectSettings:
    """The settings with ``backbone`` as an absolute directory that loads, offline, for the
    project's data (BackboneError, a ConfigError, says what is wrong otherwise). With a
    ``model_dir`` (a served project), an absolute path must lie under it or ``weights_dirs``."""
    if not settings.backbone:
        return settings
    problem = path_problem(settings.backbone)
    if problem:  # settings built without validate(); a relative name never reaches allowed_path
        raise backbones.BackboneError(f"backbone {problem}")
    if model_dir is not None and Path(settings.backbone).is_absolute():
        try:
            allowed_path(settings.backbone, model_dir, weights_dirs, "a backbone directory")
        except StoreError as exc:
            raise backbones.BackboneError(str(exc)) from None
    try:
        path = backbones.resolve(settings.backbone, Path(model_dir or "."))
        modality = backbones.modality_of(path)
        if modality != schema.object_type:
            raise backbones.BackboneError(f"backbone {path.name} reads {modality}; the label config has "
                                          f"{schema.object_type} tasks")
        backbones.load(path, modality)
    except OSError as exc:  # a name too long under MODEL_DIR/backbones, an unreadable directory
        raise backbones.BackboneError(f"backbone directory cannot be read ({exc.strerror or type(exc).__name__})"
                                      ) from None
    return dataclasses.replace(settings, backbone=str(path))


def make_context(key: str, label_config: str, settings: ProjectSettings, model_dir: Optional[Path] = None,
                 weights_dirs: tuple[str, ...] = ()) -> ProjectContext:
    """A project from its label config and settings (a backbone is found under ``model_dir``)."""
    schema = parse_label_config(label_config)
    settings = with_backbone(schema, settings, model_dir, weights_dirs)
    kind = resolve_kind(schema, settings)
    settings = dataclasses.replace(settings, strategies=strategy_names(settings.strategies, kind))
    return ProjectContext(key, schema, settings, label_config, kind)


def project_context(settings: Settings, project: Any, label_config: Optional[str] = None,
                    extra_params: Any = None) -> ProjectContext:
    """Schema and settings for a project, from the request or from what /setup stored."""
    key = project_key(project)
    stored = ProjectStore(settings.model_dir, key).config()
    label_config = label_config or stored.get("label_config")
    if not label_config:
        raise SchemaError(f"project {key} has no label config: call /setup or send label_config")
    params = parse_extra_params(extra_params) if extra_params is not None else stored.get("extra_params") or {}
    return make_context(key, label_config, settings.project.with_overrides(params), settings.model_dir,
                        settings.weights_dirs)


def new_model(ctx: ProjectContext) -> ModelKind:
    model = ctx.kind.create(ctx.kind.default_config(ctx.schema.n_classes, ctx.settings))
    model.multi_label = ctx.schema.multi_label
    return model


def user_checkpoint(ctx: ProjectContext, model_dir: Path, weights_dirs: tuple[str, ...] = ()) -> ModelKind:
    """A project's start from user-supplied weights (a file under MODEL_DIR or WEIGHTS_DIRS): an
    ml_backend checkpoint, or a bare state_dict for the project's default model. CheckpointError
    (or StoreError, for a file outside those directories) says why not."""
    weights = read_weights(allowed_path(ctx.settings.checkpoint, model_dir, weights_dirs, "a checkpoint"))
    if not is_checkpoint(weights):
        if not isinstance(weights, dict):
            raise CheckpointError(f"{ctx.settings.checkpoint} holds neither a checkpoint nor a state_dict")
        weights = {"kind": ctx.kind.name, "config": ctx.kind.default_config(ctx.schema.n_classes, ctx.settings),
                   "classes": list(ctx.schema.classes), "state_dict": weights}
    classes = tuple(weights.get("classes") or ctx.schema.classes)
    if classes != ctx.schema.classes or weights["config"].get("n_classes") != ctx.schema.n_classes:
        raise CheckpointError(f"checkpoint {ctx.settings.checkpoint} predicts classes {list(classes)}; "
                              f"the label config has {list(ctx.schema.classes)}")
    model = from_checkpoint(weights)
    model.multi_label = ctx.schema.multi_label
    return model
