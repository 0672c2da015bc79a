"""Explanation quality metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml_backend.data.text import PAD_ID
from ml_backend.explain.quality import faithfulness, irrelevant_mass, senn_stability
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.senn import SENN, TextSENN


def test_irrelevant_mass_exact():
    relevance = np.array([
        [[1.0, 1.0], [2.0, 0.0]],  # 1 of 4 inside the mask
        [[5.0, 0.0], [0.0, 0.0]],  # empty mask: skipped
        [[0.0, 3.0], [0.0, 0.0]],  # all mass inside
        [[0.0, 0.0], [0.0, 0.0]],  # no attribution at all: skipped
    ])
    mask = np.zeros((4, 2, 2), dtype=bool)
    mask[0, 0, 0] = mask[2, 0, 1] = mask[2, 1, 1] = mask[3, 0, 0] = True
    assert irrelevant_mass(relevance, mask) == pytest.approx((0.25 + 1.0) / 2)
    assert irrelevant_mass(torch.tensor(relevance), torch.tensor(mask)) == pytest.approx(0.625)
    tokens = torch.tensor([[1.0, 3.0, 0.0, 4.0]])
    assert irrelevant_mass(tokens, torch.tensor([[False, True, True, False]])) == pytest.approx(3 / 8)
    assert math.isnan(irrelevant_mass(relevance[1:2], mask[1:2]))
    with pytest.raises(ValueError):
        irrelevant_mass(-relevance, mask)
    with pytest.raises(ValueError):
        irrelevant_mass(relevance, mask[:, :1])


def linear_model(w: torch.Tensor):
    """Two classes, logits (0, w.x): class 1's exact contributions are w * x."""
    def model_fn(x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ w
        return torch.softmax(torch.stack([torch.zeros_like(z), z], dim=1), dim=1)
    return model_fn


def test_faithfulness_of_linear_contributions():
    torch.manual_seed(0)
    w = torch.randn(12)
    x = torch.rand(20, 3, 4) * 0.5  # D = 12 input entries
    model_fn = linear_model(w)
    relevance = w * x.flatten(1)
    good = faithfulness(model_fn, x, relevance, 0.0, target=1)
    assert good > 0.95
    assert faithfulness(model_fn, x, -relevance, 0.0, target=1) < -0.95
    shuffled = relevance[:, torch.randperm(12)]
    assert faithfulness(model_fn, x, shuffled, 0.0, target=1) < good - 0.3

    def remove(inp: torch.Tensor, d: int) -> torch.Tensor:
        out = inp.clone().flatten(1)
        out[:, d] = 0.0
        return out.view_as(inp)

    assert faithfulness(model_fn, x, relevance, remove, target=1) == pytest.approx(good)
    with pytest.raises(ValueError):
        faithfulness(model_fn, x, relevance[:, :5], 0.0, target=1)


def test_senn_stability_finite_and_scales_with_sensitivity():
    torch.manual_seed(0)
    model = SENN(2, "patches", image_size=8, in_channels=1, patch=4, width=4)
    x = torch.rand(6, 1, 8, 8)
    base = senn_stability(model, x, n_samples=10, eps=0.05)
    assert math.isfinite(base) and base > 0
    assert model.training  # mode restored
    with torch.no_grad():
        model.theta_out.weight.mul_(10.0)  # theta 10x more input-sensitive, same offsets
    sensitive = senn_stability(model, x, n_samples=10, eps=0.05)
    assert sensitive == pytest.approx(10 * base, rel=1e-3)
    assert senn_stability(model, x, n_samples=10, eps=0.05, target=1) <= sensitive


def test_kinds_record_senn_quality_with_their_concept_removal():
    torch.manual_seed(0)
    image = adapt(SENN(2, "patches", image_size=8, in_channels=1, patch=4, width=4))
    x = torch.rand(6, 1, 8, 8) + 0.5
    remove = image._removal()
    blanked = remove(x, 3)  # concept 3: the bottom-right 4x4 patch of a 2x2 grid
    assert (blanked[:, :, 4:, 4:] == 0).all() and torch.equal(blanked[:, :, :4], x[:, :, :4])
    quality = image.quality(x)
    assert set(quality) == {"senn_stability", "senn_faithfulness"}
    assert all(math.isfinite(v) for v in quality.values())
    target = image.network(x).argmax(1)
    assert quality["senn_stability"] == pytest.approx(senn_stability(image.network, x, n_samples=10, eps=0.05,
                                                                     target=target), rel=1e-6)
    text = adapt(TextSENN(2, n_buckets=50, max_len=10, embed_dim=8, channels=8))
    ids = torch.randint(1, 50, (4, 10))
    assert (text._removal()(ids, 2)[:, 2] == PAD_ID).all()
    text_quality = text.quality(ids)
    assert text_quality["senn_stability"] is None and math.isfinite(text_quality["senn_faithfulness"])
    learned = adapt(SENN(2, "learned", image_size=8, in_channels=1, n_concepts=3, width=4))
    assert learned._removal() is None and learned.quality(x)["senn_faithfulness"] is None
    assert adapt(ImageCNN(2, image_size=8)).quality(x) == {}  # only self-explaining kinds have these metrics
