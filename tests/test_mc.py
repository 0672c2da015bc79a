"""MC-dropout sampling: shapes, stochasticity, agreement with eval mode, modes restored."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.text import TextCNN
from ml_backend.models.sampling import mc_dropout_probs, predictive_probs


def _cnn(dropout: float) -> ImageCNN:
    torch.manual_seed(0)
    return ImageCNN(n_classes=3, image_size=16, width=8, dropout=dropout)


def _x(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_shapes_and_probabilities():
    mc = mc_dropout_probs(_cnn(0.3), _x(10), T=4, batch_size=3)  # batches of 3: 3+3+3+1
    assert mc.shape == (4, 10, 3)
    np.testing.assert_allclose(mc.sum(-1), 1.0, atol=1e-5)
    assert predictive_probs(_cnn(0.3), _x(10), batch_size=4).shape == (10, 3)


def test_samples_differ_with_dropout():
    mc = mc_dropout_probs(_cnn(0.5), _x(), T=5)
    assert not np.allclose(mc[0], mc[1])
    # masks are independent across tasks too, not one mask shared by the batch
    same = _x(1).repeat(6, 1, 1, 1)
    one_draw = mc_dropout_probs(_cnn(0.5), same, T=1)[0]
    assert not np.allclose(one_draw[0], one_draw[1:])


def test_identical_without_dropout_and_equal_to_eval():
    model = _cnn(0.0)
    mc = mc_dropout_probs(model, _x(), T=3)
    np.testing.assert_allclose(mc[0], mc[1], atol=1e-6)
    np.testing.assert_allclose(mc[0], predictive_probs(model, _x()), atol=1e-5)


def test_mean_close_to_eval_for_small_dropout():
    model = _cnn(0.02)
    torch.manual_seed(2)
    mc = mc_dropout_probs(model, _x(20), T=50)
    np.testing.assert_allclose(mc.mean(0), predictive_probs(model, _x(20)), atol=0.02)


@pytest.mark.parametrize("training", [True, False])
def test_model_modes_restored(training):
    model = _cnn(0.3)
    model.train(training)
    model.body[0].train(not training)  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    mc_dropout_probs(model, _x(4), T=2)
    predictive_probs(model, _x(4))
    assert [m.training for m in model.modules()] == before


def test_features_run_in_eval_mode_once_per_batch():
    model = _cnn(0.3)
    calls = []
    orig = model.features

    def spy(x):
        calls.append((len(x), model.training, model.classifier[0].training))
        return orig(x)

    model.features = spy
    mc_dropout_probs(model, _x(10), T=7, batch_size=4)
    assert [c[0] for c in calls] == [4, 4, 2]
    assert all(not c[1] and not c[2] for c in calls)


def test_iterable_of_batches_equals_tensor_when_deterministic():
    model = _cnn(0.0)
    x = _x(9)
    whole = mc_dropout_probs(model, x, T=2)
    chunks = mc_dropout_probs(model, (x[i:i + 4] for i in range(0, 9, 4)), T=2, batch_size=3)
    np.testing.assert_allclose(whole, chunks, atol=1e-6)


def test_text_model_and_fallback_without_split():
    torch.manual_seed(0)
    text = TextCNN(n_classes=2, n_buckets=50, max_len=8, embed_dim=8, channels=8, dropout=0.5)
    ids = torch.randint(1, 50, (6, 8))
    assert mc_dropout_probs(text, ids, T=3).shape == (3, 6, 2)
    assert adapt(text).mc_probs(ids, T=3).shape == (3, 6, 2)  # what ranking calls

    plain = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    plain.eval()
    mc = mc_dropout_probs(plain, torch.randn(5, 4), T=3, split=False)  # no features/head: T full passes
    assert mc.shape == (3, 5, 2) and not np.allclose(mc[0], mc[1])
    assert not plain.training


def test_invalid_T():
    with pytest.raises(ValueError):
        mc_dropout_probs(_cnn(0.3), _x(2), T=0)
