# Run by tests/test_architecture.py with tests/extensions/strategies on the strategies package's path.
import json

import torch

from ml_backend.config import ConfigError, ProjectSettings
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.training.sets import Batch
from ml_backend.training.strategies import STRATEGIES, strategies_for
from ml_backend.training.trainer import batch_loss

settings = ProjectSettings(strategies=("rrr", "logit_penalty"))
model = adapt(ImageCNN(2, image_size=16, width=4))
x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
mask = torch.zeros(4, 16, 16, dtype=torch.bool)
mask[:2, :4, :4] = True
batch = Batch(x, y, mask, mask.flatten(1).any(1), torch.zeros_like(mask), torch.zeros(4, dtype=torch.bool))
_, parts = batch_loss(model, batch, strategies_for(settings), settings, 4)
try:
    STRATEGIES.get("logit_penalt")
    unknown = ""
except ConfigError as exc:
    unknown = str(exc)
print(json.dumps({"registered": list(STRATEGIES.names()), "parts": parts, "unknown_error": unknown}))
