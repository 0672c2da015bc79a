"""The registry of model kinds: which kind serves a project, building one, and checkpoints.

This package is the only place that knows kinds by name. Everything else holds a ``ModelKind``
adapter (``models.base``) and asks it what it can do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_backend.config import ConfigError
from ml_backend.models.base import KINDS, ModelKind


class CheckpointError(Exception):
    """Weights that cannot be read or do not fit their model."""


def kind_named(name: str) -> type[ModelKind]:
    return KINDS.get(name)


def kind_for(modality: str, model_kind: str, backbone: bool = False) -> type[ModelKind]:
    """The kind a ``model_kind`` setting ("" = the default) selects for a modality, with or
    without a pretrained backbone."""
    for cls in KINDS.classes():
        if cls.modality == modality and model_kind in cls.selected_by and cls.uses_backbone == backbone:
            return cls
    choices = sorted({name for cls in KINDS.classes() if cls.modality == modality and cls.uses_backbone == backbone
                      for name in cls.selected_by if name})
    with_backbone = "with a backbone" if backbone else "without a backbone"
    raise ConfigError(f"model_kind {model_kind!r} does not serve {modality} projects {with_backbone}; "
                      f"choose from {', '.join(choices)}")


def model_kind_names() -> tuple[str, ...]:
    """Every value the ``model_kind`` setting accepts."""
    return tuple(sorted({name for cls in KINDS.classes() for name in cls.selected_by}))


def adapt(network: nn.Module) -> ModelKind:
    """The adapter of a bare network (its class names the kind)."""
    for cls in KINDS.classes():
        if type(network) is cls.network_class:
            return cls(network)
    raise ConfigError(f"no model kind wraps {type(network).__name__}")


def is_checkpoint(value: Any) -> bool:
    return isinstance(value, dict) and {"kind", "config", "state_dict"} <= set(value)


def read_weights(path: Path) -> Any:
    """torch.load with weights_only: a user's file can hold tensors, never code to run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint written by this backend."""
    checkpoint = read_weights(path)
    if not is_checkpoint(checkpoint):
        raise CheckpointError(f"{path} is not an ml_backend checkpoint (needs kind, config, classes, state_dict)")
    return checkpoint


def from_checkpoint(checkpoint: dict[str, Any]) -> ModelKind:
    try:
        model = kind_named(checkpoint["kind"]).create(checkpoint["config"])
        model.load_state(checkpoint["state_dict"])
        model.multi_label = bool(checkpoint.get("multi_label", False))
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not fit its model: {exc}") from None
    model.network.eval()
    return model
