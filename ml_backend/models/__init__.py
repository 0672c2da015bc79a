"""Model classes by kind; every model has ``kind`` and a ``config`` dict of constructor kwargs."""
from __future__ import annotations

import importlib

from torch import nn

# kind -> "module:Class"; imported lazily so serving a CNN never imports the SENN code.
MODEL_CLASSES = {
    "cnn": "ml_backend.models.cnn:ImageCNN",
    "text_cnn": "ml_backend.models.text:TextCNN",
    "senn": "ml_backend.models.senn:SENN",
    "text_senn": "ml_backend.models.senn:TextSENN",
    "bayesian_cnn": "ml_backend.models.bayesian:BayesianCNN",
}


def model_class(kind: str) -> type[nn.Module]:
    try:
        module, name = MODEL_CLASSES[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_CLASSES)}") from None
    return getattr(importlib.import_module(module), name)


def build_model(kind: str, **config) -> nn.Module:
    return model_class(kind)(**config)
