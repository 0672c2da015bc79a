# Run by tests/test_architecture.py with tests/extensions/acquisition on the acquisition package's path.
import json

import numpy as np

from ml_backend.config import ProjectSettings
from ml_backend.ranking.acquisition import ACQUISITIONS, rank

settings = ProjectSettings(acquisition="most_confident")
function = ACQUISITIONS.get(settings.acquisition).from_settings(settings, seed=0)
probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
print(json.dumps({"registered": "most_confident" in ACQUISITIONS.names(),
                  "order": [int(i) for i in rank(function.scores(probs))]}))
