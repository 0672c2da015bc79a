import numpy as np
import pytest
import torch

from ml_backend.config import ProjectSettings
from ml_backend.explain.attribution import explain_images
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.text import TextCNN
from ml_backend.training.losses import EPS, input_gradients, xil_loss
from ml_backend.training.objectives import Weights
from ml_backend.training.trainer import FitConfig, TrainingSet, accuracy, fit, pick_device
from tests.support.data import confounded_images


def _train(x, y, mask, rrr_lambda: float, seed: int = 0):
    torch.manual_seed(seed)
    model = ImageCNN(2, image_size=x.shape[-1], width=8, dropout=0.1)
    masks = torch.from_numpy(np.broadcast_to(mask, (len(y), *mask.shape)).copy())
    data = TrainingSet(x, y, masks if rrr_lambda else torch.zeros_like(masks), torch.zeros_like(masks))
    fit(model, data, FitConfig(epochs=20, batch_size=32, learning_rate=3e-3, weights=Weights(rrr_lambda=rrr_lambda),
                               seed=seed),
        device=torch.device("cpu"))
    return model


def _confounder_mass(model, x, mask, method):
    target = model(x).argmax(1)
    relevance = explain_images(model, x, target, method).detach().numpy()
    return irrelevant_mass(relevance, np.broadcast_to(mask, relevance.shape))


@pytest.mark.slow
def test_irrelevant_masks_move_attribution_off_a_planted_confounder():
    # faint bars in noise, a bright corner for class 1: without feedback the model takes the shortcut
    kw = dict(noise=0.4, bar=0.6)
    x, y, mask = confounded_images(256, seed=1, **kw)
    x_test, y_test, _ = confounded_images(256, seed=2, **kw)  # confounder present, as in training
    plain = _train(x, y, mask, rrr_lambda=0.0)
    corrected = _train(x, y, mask, rrr_lambda=ProjectSettings().rrr_lambda)  # the shipped default
    # input gradients are what RRR constrains. Grad-CAM (the served default) is left out: at
    # 24 px the CNN's last map is 3x3, one cell per 8 px, too coarse to resolve a 6 px corner.
    for method, factor in (("saliency", 0.6), ("input_x_gradient", 0.6)):
        before = _confounder_mass(plain, x_test, mask, method)
        after = _confounder_mass(corrected, x_test, mask, method)
        assert after < factor * before, (method, before, after)
    # the corrected model learned the bars: it still classifies without the shortcut
    x_clean, y_clean, _ = confounded_images(256, seed=3, confounded=False, **kw)
    assert accuracy(corrected, x_clean, y_clean) > 0.85
    assert accuracy(corrected, x_clean, y_clean) > accuracy(plain, x_clean, y_clean)


def test_without_masks_the_loss_is_plain_cross_entropy():
    torch.manual_seed(0)
    model = ImageCNN(3, image_size=16, width=4, dropout=0.0).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    none = torch.zeros(4, 16, 16, dtype=torch.bool)
    loss, parts = xil_loss(model, x, y, irrelevant=none, has_irrelevant=none.flatten(1).any(1), rrr_lambda=10.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)
    assert set(parts) == {"ce"}


def test_rrr_penalty_is_the_share_of_gradient_mass_inside_the_mask():
    torch.manual_seed(0)
    model = ImageCNN(2, image_size=16, width=4, dropout=0.0).eval()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    _, grad_sq = input_gradients(model, x)
    everything = torch.ones(2, 16, 16, dtype=torch.bool)
    _, parts = xil_loss(model, x, y, irrelevant=everything, has_irrelevant=torch.tensor([True, True]), rrr_lambda=1.0)
    total = grad_sq.sum((1, 2)) + EPS
    assert parts["rrr"] == pytest.approx((grad_sq.sum((1, 2)) / total).mean().item(), rel=1e-5)
    assert parts["rrr"] == pytest.approx(1.0, rel=1e-3)
    half = torch.zeros(2, 16, 16, dtype=torch.bool)
    half[:, :8] = True
    _, parts = xil_loss(model, x, y, irrelevant=half, has_irrelevant=torch.tensor([True, True]), rrr_lambda=1.0)
    expected = ((grad_sq[:, :8].sum((1, 2)) / total).mean()).item()
    assert parts["rrr"] == pytest.approx(expected, rel=1e-4)


def test_rrr_penalty_on_text_acts_on_token_embeddings():
    torch.manual_seed(0)
    model = TextCNN(2, n_buckets=100, embed_dim=8, channels=8, dropout=0.0)
    ids = torch.randint(1, 100, (3, 10))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 2] = True
    loss, parts = xil_loss(model, ids, torch.tensor([0, 1, 0]), irrelevant=mask,
                           has_irrelevant=torch.tensor([True, True, False]), rrr_lambda=5.0)
    loss.backward()
    assert 0.0 < parts["rrr"] < 1.0
    assert model.embedding.weight.grad is not None


def test_relevant_penalty_counts_mass_outside_the_relevant_region():
    torch.manual_seed(0)
    model = ImageCNN(2, image_size=16, width=4, dropout=0.0).eval()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    everywhere = torch.ones(2, 16, 16, dtype=torch.bool)
    _, parts = xil_loss(model, x, y, relevant=everywhere, has_relevant=torch.tensor([True, True]), relevant_lambda=1.0)
    assert parts["relevant"] == pytest.approx(0.0, abs=1e-6)


def test_device_is_chosen_at_run_time():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"
