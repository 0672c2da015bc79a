import os
from pathlib import Path

import pytest
import torch

# Two cores are shared by the test process and the servers it starts.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
LABEL_CONFIGS = ROOT / "label_config"


@pytest.fixture
def image_config() -> str:
    return (LABEL_CONFIGS / "image_classification_evidence.xml").read_text()


@pytest.fixture
def text_config() -> str:
    return (LABEL_CONFIGS / "text_classification_evidence.xml").read_text()


@pytest.fixture
def settings(tmp_path):
    from ml_backend.config import Settings

    return Settings(model_dir=tmp_path / "models")
