"""Acquisition functions (baal-style heuristics): the interface and helpers in ``base``, one module
per function; each registers itself by name in ``ACQUISITIONS``, so a new one is one new module."""
from ml_backend.ranking.acquisition.alex import ALEX
from ml_backend.ranking.acquisition.bald import BALD
from ml_backend.ranking.acquisition.base import ACQUISITIONS, Acquisition, get_acquisition, ls_score, ls_scores, rank
from ml_backend.ranking.acquisition.uncertainty import Entropy, LeastConfidence, Margin, Random

__all__ = ["ACQUISITIONS", "ALEX", "Acquisition", "BALD", "Entropy", "LeastConfidence", "Margin", "Random",
           "get_acquisition", "ls_score", "ls_scores", "rank"]
