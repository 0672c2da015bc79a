"""A trivial acquisition function: most confident first (a one-file change under ranking/acquisition/)."""
from __future__ import annotations

import numpy as np

from ml_backend.ranking.acquisition.base import Acquisition, _as_probs


class MostConfident(Acquisition):
    name = "most_confident"

    def scores(self, probs: np.ndarray | None = None, *, mc_probs: np.ndarray | None = None,
               **_: object) -> np.ndarray:
        return _as_probs(probs, mc_probs).max(axis=1)
