"""Bayes-by-backprop layers, the Bayesian CNN, its tempered ELBO and the thesis' activation evidence.

Training here runs through ``trainer.batch_loss``: the kind's own KL term and the ActivationEvidence
strategy, exactly what a project's fit runs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from sklearn.datasets import load_digits

from ml_backend.config import ProjectSettings
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.models import adapt
from ml_backend.models.bayesian import BayesConv2d, BayesianCNN, BayesianCNNKind, BayesLinear
from ml_backend.training.losses import activation_evidence_loss, activation_evidence_scale, pool_mask
from ml_backend.training.sets import Batch
from ml_backend.training.strategies.activation_evidence import ActivationEvidence
from ml_backend.training.trainer import batch_loss
from tests.support.data import bars

S = 16
TEMPERED = ProjectSettings(kl_weight=0.01)  # 360 examples cannot outweigh the full KL of a useful posterior


def batch(x: torch.Tensor, y: torch.Tensor, irrelevant: torch.Tensor | None = None) -> Batch:
    irrelevant = torch.zeros(len(y), *x.shape[2:], dtype=torch.bool) if irrelevant is None else irrelevant
    relevant = torch.zeros_like(irrelevant)
    return Batch(x, y, irrelevant, irrelevant.flatten(1).any(1), relevant, relevant.flatten(1).any(1))


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def test_kl_is_positive_finite_and_matches_closed_form():
    torch.manual_seed(0)
    layer = BayesLinear(5, 3, prior_sigma=0.1)
    with torch.no_grad():
        layer.weight_rho.uniform_(-4, 0)
    sigma = F.softplus(layer.weight_rho)
    q = torch.distributions.Normal(layer.weight_mu, sigma)
    p = torch.distributions.Normal(0.0, 0.1)
    qb = torch.distributions.Normal(layer.bias_mu, F.softplus(layer.bias_rho))
    expected = torch.distributions.kl_divergence(q, p).sum() + torch.distributions.kl_divergence(qb, p).sum()
    torch.testing.assert_close(layer.kl(), expected)
    model = BayesianCNN(2, image_size=S, in_channels=1, width=4)
    kl = model.kl()
    assert torch.isfinite(kl) and kl > 0
    kl.backward()  # differentiable in mu and rho
    assert model.last_conv.weight_rho.grad.abs().sum() > 0


def test_training_adds_the_tempered_kl_per_example():
    """The negative ELBO per example (thesis Eq. 5.7): CE + kl_weight * KL / n_train, as fit runs it."""
    torch.manual_seed(0)
    model = adapt(BayesianCNN(3, image_size=S, in_channels=1, width=4).eval())  # mean weights: no sampling
    assert isinstance(model, BayesianCNNKind)
    x, y = torch.rand(4, 1, S, S), torch.tensor([0, 1, 2, 0])
    kl = model.network.kl()
    ce = F.cross_entropy(model.network(x), y)
    for kl_weight, n_train in ((1.0, 360), (0.01, 360), (0.01, 7)):
        settings = ProjectSettings(kl_weight=kl_weight)
        loss, parts = batch_loss(model, batch(x, y), [], settings, n_train)
        torch.testing.assert_close(loss, ce + kl_weight * kl / n_train)
        assert parts["kl"] == pytest.approx(kl.item()) and parts["ce"] == pytest.approx(ce.item())
    term = model.training_terms(batch(x, y), 360, TEMPERED, {})
    torch.testing.assert_close(term, 0.01 * kl / 360)
    term.backward()  # the KL term trains the posterior's spread
    assert model.network.last_conv.weight_rho.grad.abs().sum() > 0


def test_lrt_matches_weight_sampling_moments():
    torch.manual_seed(0)
    layer = BayesConv2d(2, 1, 3, padding=1, init_sigma=0.3)
    layer.sample = True
    x = torch.rand(1, 2, 5, 5)
    with torch.no_grad():
        samples = torch.stack([layer(x) for _ in range(4000)])
        var = F.conv2d(x * x, F.softplus(layer.weight_rho) ** 2, F.softplus(layer.bias_rho) ** 2, padding=1)
        mean = F.conv2d(x, layer.weight_mu, layer.bias_mu, padding=1)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(samples.var(0), var, atol=0, rtol=0.15)


def test_sampling_switch_and_mc_samples_differ():
    torch.manual_seed(0)
    model = BayesianCNN(3, image_size=S, in_channels=1, width=4)
    for layer in model.bayes_layers():
        with torch.no_grad():
            layer.weight_rho.fill_(-2.0)  # visible posterior spread
    x = torch.rand(5, 1, S, S)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()  # mean weights
    assert torch.equal(model(x), model(x))
    with model.sampling(False):
        model.train()
        assert torch.equal(model(x), model(x))
    model.eval()
    with model.sampling(True):
        assert not torch.equal(model(x), model(x))
    assert model.sample is None
    probs = model.mc_probs(x, T=6)
    assert probs.shape == (6, 5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 5))
    assert probs.std(0).min() > 0
    assert model.sample is None and not model.training
    rebuilt = BayesianCNN(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_preactivation_access_and_clamping():
    torch.manual_seed(0)
    model = BayesianCNN(2, image_size=S, in_channels=1, width=4).eval()
    x = torch.rand(3, 1, S, S)
    logits, preact = model.forward_with_preact(x)
    assert preact.shape == (3, 8, S // 4, S // 4)
    torch.testing.assert_close(preact, model.last_conv_preactivation(x))
    torch.testing.assert_close(logits, model(x))
    clamped, _ = model.forward_with_preact(x, torch.ones(1, 1, S // 4, S // 4, dtype=torch.bool))
    zero_features = model.head(torch.zeros(3, 8))
    torch.testing.assert_close(clamped, zero_features)


def test_activation_evidence_loss_values():
    preact = torch.zeros(2, 3, 4, 4)
    preact[0, :, 0, 0] = torch.tensor([2.0, -2.0, 1.0])
    preact[1] = 5.0  # example 1 has no feedback
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 1, 1] = True  # one pixel -> feature cell (0, 0)
    cells = pool_mask(mask, (4, 4))
    assert cells.shape == (2, 1, 4, 4) and cells.sum() == 1 and cells[0, 0, 0, 0]
    # three masked units; relu keeps 2 and 1: (4 + 1) / (2 * 0.5^2 * 3)
    torch.testing.assert_close(activation_evidence_loss(preact, mask, sigma=0.5), torch.tensor(5 / 1.5))
    torch.testing.assert_close(activation_evidence_loss(preact, mask, 0.5, positive_only=False), torch.tensor(9 / 1.5))
    assert activation_evidence_scale(preact, mask) == pytest.approx(5 / 3)
    assert activation_evidence_scale(preact, mask, positive_only=True) == pytest.approx(1.0)
    empty = torch.zeros_like(mask)
    assert activation_evidence_loss(preact, empty, 1.0) == 0 and activation_evidence_scale(preact, empty) == 0.0


def test_predictive_entropy_higher_out_of_distribution():
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    labels = torch.tensor(digits.target)
    x, y = images[labels < 2], labels[labels < 2]
    unseen_digits = images[labels >= 2][:400]
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    kind = adapt(BayesianCNN(2, image_size=8, in_channels=1, width=16))
    model = kind.network
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(20):
        for b in torch.randperm(len(x)).split(64):
            # tempered KL: 360 examples cannot outweigh the full KL of a useful posterior
            loss, _ = batch_loss(kind, batch(x[b], y[b]), [], TEMPERED, len(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    p_train = kind.probs(x, mc_samples=20)  # what serving predicts: the posterior's MC average
    assert (p_train.argmax(1) == y).float().mean() > 0.95
    h_train = entropy(p_train).mean()
    assert entropy(model.mc_probs(unseen_digits, T=20).mean(0)).mean() > 3 * h_train
    assert entropy(model.mc_probs(noise, T=20).mean(0)).mean() > 3 * h_train


def confounded_bars(n: int, g: torch.Generator, confound: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return bars(n, g, S, confound)


def test_activation_evidence_moves_gradcam_off_a_planted_confounder():
    g = torch.Generator().manual_seed(0)
    x, y = confounded_bars(300, g)
    x_test, y_test = confounded_bars(200, g)
    corner = torch.zeros(S, S, dtype=torch.bool)
    corner[:4, :4] = True

    def train(with_evidence: bool) -> BayesianCNN:
        torch.manual_seed(0)
        kind = adapt(BayesianCNN(2, image_size=S, in_channels=1, width=8))
        model = kind.network
        strategies = [ActivationEvidence(sigma=0.1)] if with_evidence else []
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        model.train()
        for _ in range(10):
            for b in torch.randperm(len(x)).split(64):
                loss, parts = batch_loss(kind, batch(x[b], y[b], corner.expand(len(b), S, S)), strategies, TEMPERED,
                                         len(x))
                assert ("activation_evidence" in parts) is with_evidence
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval()

    def gradcam_mass(model: BayesianCNN) -> float:
        cam = LayerGradCam(model, model.cam_layer).attribute(x_test, target=y_test, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, (S, S))[:, 0].detach()
        return irrelevant_mass(cam.clamp_min(0), corner.expand(len(x_test), S, S))

    plain, corrected = train(False), train(True)
    for model in (plain, corrected):
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.95
    mass_plain, mass_corrected = gradcam_mass(plain), gradcam_mass(corrected)
    assert mass_plain > 0.02  # the uncorrected model looks at the corner
    assert mass_corrected < 0.5 * mass_plain
    masks = corner.expand(len(x_test), S, S)
    with torch.no_grad():
        scale_plain = activation_evidence_scale(plain.last_conv_preactivation(x_test), masks, positive_only=True)
        scale_corrected = activation_evidence_scale(corrected.last_conv_preactivation(x_test), masks,
                                                    positive_only=True)
    assert scale_corrected < 0.5 * scale_plain
