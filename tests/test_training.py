import numpy as np
import pytest
import torch

from ml_backend.config import ProjectSettings
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.inference import resolve_device
from ml_backend.models import adapt
from ml_backend.models.base import ModelKind
from ml_backend.models.cnn import CNNKind, ImageCNN
from ml_backend.models.text import TextCNN
from ml_backend.training.losses import EPS
from ml_backend.training.sets import Batch, TrainingSet
from ml_backend.training.strategies.relevant import RelevantRegion
from ml_backend.training.strategies.rrr import RRR
from ml_backend.training.fit import fit_set
from ml_backend.training.strategies import strategies_for
from ml_backend.training.trainer import FitConfig, accuracy, batch_loss, fit
from tests.support.data import confounded_images


def _train(x, y, mask, settings: ProjectSettings, seed: int = 0) -> ModelKind:
    """The training core's path (propagation, each strategy's examples and terms) with every task's
    confounder marked Irrelevant, or none when ``settings`` has no strategies."""
    torch.manual_seed(seed)
    model = CNNKind(ImageCNN(2, image_size=x.shape[-1], width=8, dropout=0.1))
    masks = torch.from_numpy(np.broadcast_to(mask, (len(y), *mask.shape)).copy())
    marked = masks if settings.strategies else torch.zeros_like(masks)
    strategies = strategies_for(settings)
    data, _ = fit_set(TrainingSet(x, y, marked, torch.zeros_like(masks)), model, settings, strategies, seed)
    fit(model, data, FitConfig(epochs=20, batch_size=32, learning_rate=3e-3, seed=seed), strategies,
        device=torch.device("cpu"))
    return model


def _confounder_mass(model: ModelKind, x, mask, method):
    target = model.probs(x).argmax(1)
    relevance = model.relevance(x, target, method).detach().numpy()
    return irrelevant_mass(relevance, np.broadcast_to(mask, relevance.shape))


def _batch(x, y, irrelevant=None, has_irrelevant=None, relevant=None, has_relevant=None) -> Batch:
    shape = (len(y), *(x.shape[1:] if x.dtype == torch.long else x.shape[2:]))
    none = torch.zeros(shape, dtype=torch.bool)
    irrelevant = none if irrelevant is None else irrelevant
    relevant = none if relevant is None else relevant
    has_irrelevant = irrelevant.flatten(1).any(1) if has_irrelevant is None else has_irrelevant
    has_relevant = relevant.flatten(1).any(1) if has_relevant is None else has_relevant
    return Batch(x, y, irrelevant, has_irrelevant, relevant, has_relevant)


SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_irrelevant_masks_move_the_model_off_a_planted_confounder():
    """The shipped default strategies, over several seeds: the corrected model no longer looks at
    the confounder and still classifies by the bars when the confounder is gone.

    RRR alone is not asserted here: its gradient-share penalty can be met by inflating input
    gradients outside the mask instead of ignoring the corner (measured: the corner's squared
    gradient mass unchanged, the total up 400-2000x, clean accuracy at chance on 8 of 12 seeds).
    Counterexamples, in the default, are what remove the shortcut.
    """
    # faint bars in noise, a bright corner for class 1: without feedback the model takes the shortcut
    kw = dict(noise=0.4, bar=0.6)
    x, y, mask = confounded_images(256, seed=1, **kw)
    x_test, y_test, _ = confounded_images(256, seed=2, **kw)  # confounder present, as in training
    x_clean, y_clean, _ = confounded_images(256, seed=3, confounded=False, **kw)
    plain = _train(x, y, mask, ProjectSettings(strategies=()))
    # One seed's trajectory decides too much on its own (and differs between machines): the
    # corrected model is judged by its mean over several seeds.
    corrected = [_train(x, y, mask, ProjectSettings(), seed=seed) for seed in SEEDS]
    # Grad-CAM (the served default) is left out: at 24 px the CNN's last map is 3x3, one cell per
    # 8 px, too coarse to resolve a 6 px corner.
    for method, factor in (("saliency", 0.6), ("input_x_gradient", 0.6)):
        before = _confounder_mass(plain, x_test, mask, method)
        after = [_confounder_mass(model, x_test, mask, method) for model in corrected]
        assert np.mean(after) < factor * before, (method, before, after)
    # it learned the bars: it classifies without the shortcut, and a lit corner no longer decides
    clean = [accuracy(model, x_clean, y_clean) for model in corrected]
    plain_clean = accuracy(plain, x_clean, y_clean)
    assert np.mean(clean) > 0.85 and min(clean) > plain_clean, (clean, plain_clean)
    lit = x_clean.clone()
    lit[:, :, torch.from_numpy(mask)] = 1.0  # the corner as class 1 shows it in training
    assert np.mean([accuracy(model, lit, y_clean) for model in corrected]) > 0.8


def test_without_masks_the_loss_is_plain_cross_entropy():
    torch.manual_seed(0)
    model = adapt(ImageCNN(3, image_size=16, width=4, dropout=0.0).eval())
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    loss, parts = batch_loss(model, _batch(x, y), [RRR(10.0), RelevantRegion(1.0)], ProjectSettings(), n_train=4)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model.network(x), y).item(), rel=1e-6)
    assert set(parts) == {"ce"}


def test_rrr_penalty_is_the_share_of_gradient_mass_inside_the_mask():
    torch.manual_seed(0)
    model = adapt(ImageCNN(2, image_size=16, width=4, dropout=0.0).eval())
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    _, grad_sq = model.input_gradients(x)
    assert grad_sq.shape == (2, 16, 16)
    everything = torch.ones(2, 16, 16, dtype=torch.bool)
    _, parts = batch_loss(model, _batch(x, y, everything, torch.tensor([True, True])), [RRR(1.0)],
                          ProjectSettings(), n_train=2)
    total = grad_sq.sum((1, 2)) + EPS
    assert parts["rrr"] == pytest.approx((grad_sq.sum((1, 2)) / total).mean().item(), rel=1e-5)
    assert parts["rrr"] == pytest.approx(1.0, rel=1e-3)
    half = torch.zeros(2, 16, 16, dtype=torch.bool)
    half[:, :8] = True
    _, parts = batch_loss(model, _batch(x, y, half, torch.tensor([True, True])), [RRR(1.0)],
                          ProjectSettings(), n_train=2)
    expected = ((grad_sq[:, :8].sum((1, 2)) / total).mean()).item()
    assert parts["rrr"] == pytest.approx(expected, rel=1e-4)


def test_rrr_penalty_on_text_acts_on_token_embeddings():
    torch.manual_seed(0)
    model = adapt(TextCNN(2, n_buckets=100, embed_dim=8, channels=8, dropout=0.0))
    ids = torch.randint(1, 100, (3, 10))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 2] = True
    _, grad_sq = model.input_gradients(ids)
    assert grad_sq.shape == (3, 10)  # one squared gradient per token
    loss, parts = batch_loss(model, _batch(ids, torch.tensor([0, 1, 0]), mask, torch.tensor([True, True, False])),
                             [RRR(5.0)], ProjectSettings(), n_train=3)
    loss.backward()
    assert 0.0 < parts["rrr"] < 1.0
    assert model.network.embedding.weight.grad is not None


def test_relevant_penalty_counts_mass_outside_the_relevant_region():
    torch.manual_seed(0)
    model = adapt(ImageCNN(2, image_size=16, width=4, dropout=0.0).eval())
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    everywhere = torch.ones(2, 16, 16, dtype=torch.bool)
    _, parts = batch_loss(model, _batch(x, y, relevant=everywhere, has_relevant=torch.tensor([True, True])),
                          [RelevantRegion(1.0)], ProjectSettings(), n_train=2)
    assert parts["relevant"] == pytest.approx(0.0, abs=1e-6)


def test_device_is_chosen_at_run_time():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_a_corrected_example_always_trains_and_the_holdout_keeps_its_place():
    from ml_backend.feedback.parse import Feedback
    from ml_backend.training.fit import Example, in_holdout, split_holdout

    mark = np.zeros((8, 8), dtype=bool)
    mark[0, 0] = True
    examples = [Example(i, torch.zeros(3, 8, 8), Feedback(i, i, 0, mark if i % 3 == 0 else None, None,
                                                          "irrelevant" if i % 3 == 0 else "label_only"))
                for i in range(300)]
    train, held = split_holdout(examples, 0.2)
    held_ids = {e.task_id for e in held}
    assert held and {e.task_id for e in train} | held_ids == set(range(300)) and len(train) + len(held) == 300
    assert not any(i % 3 == 0 for i in held_ids)  # every corrected task trains
    assert held_ids == {i for i in range(300) if in_holdout(i, 0.2) and i % 3}  # the rest keeps its side


def test_a_cosine_schedule_brings_the_learning_rate_down_to_zero_and_constant_holds_it():
    x, y, mask = confounded_images(64, size=16, seed=0)
    for schedule in ("constant", "cosine"):
        model = CNNKind(ImageCNN(2, image_size=16, width=4, dropout=0.0))
        unmarked = torch.zeros(len(y), 16, 16, dtype=torch.bool)
        data = TrainingSet(x, y, unmarked, unmarked.clone())
        report = fit(model, data, FitConfig(epochs=4, batch_size=16, learning_rate=1e-2, patience=100,
                                            lr_schedule=schedule), device=torch.device("cpu"))
        rates = [epoch["lr"] for epoch in report.history]
        if schedule == "constant":
            assert rates == [1e-2] * 4
        else:
            assert rates[0] < 1e-2 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-6


def test_auto_gives_each_model_kind_its_own_schedule():
    """The CNN's fits anneal; the Bayesian CNN's hold the rate (its short fits learned too little under cosine)."""
    from ml_backend.models.bayesian import BayesianCNN, BayesianCNNKind

    x, y, _ = confounded_images(32, size=16, seed=0)
    unmarked = torch.zeros(len(y), 16, 16, dtype=torch.bool)
    data = TrainingSet(x, y, unmarked, unmarked.clone())
    config = FitConfig.from_settings(ProjectSettings(epochs=3, batch_size=16, patience=100), 0)
    assert config.lr_schedule == "auto"
    cnn = fit(CNNKind(ImageCNN(2, image_size=16, width=4, dropout=0.0)), data, config, device=torch.device("cpu"))
    assert cnn.history[-1]["lr"] < 1e-6
    bayesian = fit(BayesianCNNKind(BayesianCNN(2, image_size=16, width=4)), data, config, device=torch.device("cpu"))
    assert [epoch["lr"] for epoch in bayesian.history] == [config.learning_rate] * 3


def test_the_learning_rate_schedule_is_a_checked_setting():
    from ml_backend.config import ConfigError

    assert FitConfig.from_settings(ProjectSettings(lr_schedule="cosine"), 0).lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="lr_schedule"):
        ProjectSettings().with_overrides({"lr_schedule": "step"})
