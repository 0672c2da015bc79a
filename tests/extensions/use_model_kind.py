# Run by tests/test_architecture.py with tests/extensions/models on the models package's path.
import json
from pathlib import Path

import torch

from ml_backend.config import ConfigError, ProjectSettings
from ml_backend.data.prepare import PreparedTask
from ml_backend.feedback.parse import Feedback
from ml_backend.project import make_context, new_model
from ml_backend.rendering import render_predictions
from ml_backend.store import LoadedModel
from ml_backend.training.fit import Example, evaluate, fit_examples

config = (Path("label_config") / "image_classification_evidence.xml").read_text()
settings = ProjectSettings(model_kind="linear_image", image_size=16, epochs=30, strategies=("rrr", "counterexamples"))
ctx = make_context("ext", config, settings)
model = new_model(ctx)
g = torch.Generator().manual_seed(0)
examples = []
for i in range(40):  # class 0: bright left half; class 1: bright right half
    label = i % 2
    x = torch.rand(3, 16, 16, generator=g) * 0.2
    x[:, :, (8 if label else 0):(16 if label else 8)] += 0.8
    examples.append(Example(i, x, Feedback(i, i, label, None, None, "label_only")))
fitted = fit_examples(model, examples, settings, seed=0)
metrics = evaluate(model, fitted, [], settings)
loaded = LoadedModel("v1", model, ctx.schema.classes)
prepared = [PreparedTask(k, examples[k].x, image_size=(32, 24)) for k in range(4)]
rendered = render_predictions(ctx, loaded, prepared)
labels = [r["result"][0]["value"]["choices"][0] for r in rendered.predictions]
regions = sum(len(r["result"]) - 1 for r in rendered.predictions)
try:
    make_context("ext", config, ProjectSettings(model_kind="linear_image", strategies=("cali",)))
    refused = ""
except ConfigError as exc:
    refused = str(exc)
print(json.dumps({"kind": model.name, "selected": ctx.kind.name, "train_accuracy": metrics["train_accuracy"],
                  "served_labels": labels, "evidence_regions": regions, "refused": refused}))
