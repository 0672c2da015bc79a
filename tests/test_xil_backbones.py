"""The XIL benchmark's self-supervised backbones (``benchmarks.xil.backbones``), built with a few
steps only: they load through the backend's own path, give features of the expected size (the
same as the probe reads), and a built backbone is reused from the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.xil import backbones as xil_backbones
from benchmarks.xil.data import PROBLEMS
from ml_backend.models import backbones
from ml_backend.models.hf_image import BackboneImageClassifier
from ml_backend.models.hf_text import BackboneTextClassifier

pytestmark = pytest.mark.slow

QUICK_STEPS = 2


def digit_tasks(n: int) -> list[dict]:
    tasks = PROBLEMS["decoy_digits"](0).clean_test.tasks[:n]
    return [{"id": t["id"], "data": {"image": t["data"]["image"]}} for t in tasks]


@pytest.mark.parametrize("family, dim, grid", [("resnet", 128, (7, 7)), ("vit", 96, (7, 7))])
def test_an_image_backbone_loads_through_the_backend_and_is_reused(tmp_path, monkeypatch, family, dim, grid):
    directory = xil_backbones.image_backbone(family, cache=tmp_path, steps=QUICK_STEPS)
    assert directory.parent == tmp_path and directory.name.startswith(f"{family}-digits-")
    assert backbones.modality_of(directory) == "image"
    model, processor = backbones.load(directory, "image")
    assert backbones.hidden_size(model) == dim
    assert len(backbones.blocks(model)) >= 3  # fine-tuning the last 2 leaves a frozen stem

    network = BackboneImageClassifier(10, str(directory))
    tasks = digit_tasks(3)
    images = [xil_backbones.decode_data_uri(t["data"]["image"]) for t in tasks]
    pixels = torch.stack([network.pixel_values(image) for image in images])
    with torch.no_grad():
        pooled, evidence_map = network.features_and_map(pixels)
    assert pooled.shape == (3, dim)
    if family == "resnet":
        assert tuple(evidence_map.shape[-2:]) == grid
    else:
        patch = model.config.patch_size
        assert (pixels.shape[-2] // patch, pixels.shape[-1] // patch) == grid
    # the probe's features are the backend's
    assert np.allclose(xil_backbones.backbone_features(directory, tasks), pooled.numpy(), atol=1e-4)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached backbone was built again")

    monkeypatch.setattr(xil_backbones, "_pretrain_image", no_training)
    assert xil_backbones.image_backbone(family, cache=tmp_path, steps=QUICK_STEPS) == directory
    assert xil_backbones.build_seconds(directory) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_the_text_backbone_loads_through_the_backend_and_is_reused(tmp_path, monkeypatch):
    directory = xil_backbones.text_backbone(cache=tmp_path, steps=QUICK_STEPS)
    assert backbones.modality_of(directory) == "text"
    model, tokenizer = backbones.load(directory, "text")
    assert tokenizer.is_fast and tokenizer.model_max_length == 64
    # every generated word is one word piece of its own, none unknown
    for word in xil_backbones.review_words():
        assert tokenizer.tokenize(word) == [word]
    assert tokenizer.unk_token not in tokenizer.tokenize("Zor-bly! (QUENNIC), \"free shipping\" 42x.")

    network = BackboneTextClassifier(2, str(directory))
    assert network.window == 64
    texts = [t["data"]["text"] for t in PROBLEMS["decoy_text"](0).clean_train.tasks[:3]]
    with torch.no_grad():
        features = network.features(torch.stack([network.encode(text)[0] for text in texts]))
    assert features.shape == (3, backbones.hidden_size(model)) == (3, 96)
    tasks = [{"id": i, "data": {"text": text}} for i, text in enumerate(texts)]
    assert np.allclose(xil_backbones.backbone_features(directory, tasks), features.numpy(), atol=1e-4)

    monkeypatch.setattr(xil_backbones, "_pretrain_text", lambda *a, **k: pytest.fail("built again"))
    assert xil_backbones.text_backbone(cache=tmp_path, steps=QUICK_STEPS) == directory


def test_a_recipe_change_is_a_new_directory():
    quick = xil_backbones.IMAGE_RECIPES["vit"]
    other = type(quick)(**{**quick.__dict__, "steps": quick.steps + 1})
    assert xil_backbones.recipe_hash(quick) != xil_backbones.recipe_hash(other)
    assert xil_backbones.recipe_hash(quick) == xil_backbones.recipe_hash(type(quick)(**quick.__dict__))


def test_a_removed_confounder_leaves_a_clean_review():
    text = "great zorbly box arrived."
    start = text.index("zorbly")
    assert xil_backbones.without_spans(text, [(start, start + 6)]) == "great box arrived."
    assert xil_backbones.without_spans("box great zorbly.", [(10, 16)]) == "box great."
