"""Multi-label Choices (``choice="multiple"``): parsed from the config, annotations and results;
trained with a sigmoid per class (BCE); served as every class above the threshold, each with
its own evidence; ranked by uncertainty over independent labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings
from ml_backend.feedback.parse import FeedbackError, LabelSet, parse_annotation
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models import from_checkpoint
from ml_backend.models.cnn import CNNKind, ImageCNN
from ml_backend.project import make_context, new_model
from ml_backend.ranking.acquisition import ALEX, BALD, Entropy, LeastConfidence, Margin
from ml_backend.store import ProjectStore
from ml_backend.training.losses import label_loss
from ml_backend.training.fit import Example, fit_examples
from ml_backend.training.sets import TrainingSet, label_tensor
from ml_backend.training.strategies import strategies_for
from ml_backend.training.trainer import accuracy, batch_loss
from tests.support.live import ls_task, png_data_uri, predict_body, setup_body

CLASSES = ("Cat", "Dog", "Bird")
IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="multiple">
    <Choice value="Cat"/><Choice value="Dog"/><Choice value="Bird"/>
  </Choices>
  <BrushLabels name="evidence" toName="image">
    <Label value="Model evidence"/><Label value="Irrelevant"/><Label value="Relevant"/>
  </BrushLabels>
</View>"""
SIZE = 24
CORNERS = ((0, 0), (0, 14), (14, 0))  # each class: a bright square at its own place
FREE = (14, 14)  # a noise corner no class uses (marked Irrelevant in training)


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 3, S, S), y (N, 3) multi-hot): each class present on its own, with probability 1/2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, len(CLASSES))).astype(np.float32)
    x = rng.uniform(0, 0.5, size=(n, SIZE, SIZE)).astype(np.float32)
    for i in range(n):
        for k, (r, c) in enumerate(CORNERS):
            if y[i, k]:
                x[i, r:r + 8, c:c + 8] += 0.5
    return torch.from_numpy(x).unsqueeze(1).repeat(1, 3, 1, 1), torch.from_numpy(y)


def multi_model(seed: int = 0, image_size: int = SIZE) -> CNNKind:
    torch.manual_seed(seed)
    model = CNNKind(ImageCNN(len(CLASSES), image_size=image_size, width=8, dropout=0.1))
    model.multi_label = True
    return model


# --- parsing -------------------------------------------------------------------------------

def test_choice_multiple_is_multi_label():
    assert parse_label_config(IMAGE_CONFIG).multi_label
    assert not parse_label_config(IMAGE_CONFIG.replace(' choice="multiple"', "")).multi_label
    assert not parse_label_config(IMAGE_CONFIG.replace("multiple", "single")).multi_label


def _annotation(choices: list) -> dict:
    return {"id": 5, "task": 9, "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                            "value": {"choices": choices}}]}


def test_an_annotation_with_several_choices_is_a_label_set():
    schema = parse_label_config(IMAGE_CONFIG)
    feedback = parse_annotation(_annotation(["Bird", "Cat"]), {"id": 9}, schema, image_size=SIZE)
    assert feedback.label == LabelSet((0, 2), 3) and feedback.kind == "label_only"
    assert feedback.label.multi_hot().tolist() == [1.0, 0.0, 1.0]
    assert parse_annotation(_annotation(["Dog"]), {"id": 9}, schema).label == LabelSet((1,), 3)
    assert parse_annotation(_annotation([]), {"id": 9}, schema).label is None
    with pytest.raises(FeedbackError, match="not one of the config's classes"):
        parse_annotation(_annotation(["Cat", "Fish"]), {"id": 9}, schema)
    single = parse_label_config(IMAGE_CONFIG.replace(' choice="multiple"', ""))
    with pytest.raises(FeedbackError, match="expected one choice"):
        parse_annotation(_annotation(["Cat", "Dog"]), {"id": 9}, single)


def test_the_prediction_it_started_from_decides_accepted():
    schema = parse_label_config(IMAGE_CONFIG)
    kept = {"from_name": "evidence", "to_name": "image", "type": "brushlabels", "original_width": 4,
            "original_height": 4, "value": {"format": "rle", "rle": [0], "brushlabels": ["Model evidence"]}}
    annotation = _annotation(["Cat", "Bird"])
    annotation["result"].append(kept)
    annotation["prediction"] = {"result": [{"from_name": "label", "type": "choices",
                                            "value": {"choices": ["Bird", "Cat"]}}]}
    assert parse_annotation(annotation, {"id": 9}, schema).kind == "accepted"
    annotation["prediction"]["result"][0]["value"]["choices"] = ["Cat"]
    assert parse_annotation(annotation, {"id": 9}, schema).kind == "label_only"


# --- training ------------------------------------------------------------------------------

def test_multi_hot_labels_train_with_a_bce_per_class():
    y = label_tensor([LabelSet((0, 2), 3), LabelSet((1,), 3)])
    assert y.dtype == torch.float32 and y.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert label_tensor([1, 0]).dtype == torch.long
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1).mean()
    assert torch.allclose(label_loss(logits, y), expected)


def test_every_strategy_of_a_plain_model_trains_multi_label_batches():
    """Counterexamples keep each copy's multi-hot row; RRR and relevant take log-sigmoid gradients."""
    x, y = squares(8, seed=0)
    irrelevant = torch.zeros(8, SIZE, SIZE, dtype=torch.bool)
    irrelevant[:4, 14:, 14:] = True
    relevant = torch.zeros_like(irrelevant)
    relevant[4:, :8, :8] = True
    data = TrainingSet(x, y, irrelevant, relevant)
    model = multi_model()
    settings = ProjectSettings(strategies=("counterexamples", "rrr", "relevant"), propagate_min_support=0)
    strategies = strategies_for(settings)
    augmented = strategies[0].augment(data, model, seed=0)
    assert augmented.y.shape == (8 + 4 * 3, 3)
    assert torch.equal(augmented.y[8:11], y[0].expand(3, 3))
    from ml_backend.training.trainer import GatheredBatch

    idx = torch.arange(8)
    batch = GatheredBatch(x, idx, torch.device("cpu"), y, irrelevant, irrelevant.flatten(1).any(1), relevant,
                          relevant.flatten(1).any(1))
    loss, parts = batch_loss(model, batch, strategies, settings, 8)
    loss.backward()
    assert {"ce", "rrr", "relevant"} <= set(parts) and all(np.isfinite(v) for v in parts.values())


SEEDS = (0, 1, 2)


def _examples(x: torch.Tensor, y: torch.Tensor) -> list[Example]:
    from ml_backend.feedback.parse import Feedback

    out = []
    for i in range(len(y)):
        label = LabelSet(tuple(int(k) for k in torch.nonzero(y[i]).flatten()), len(CLASSES))
        irrelevant = np.zeros((SIZE, SIZE), dtype=bool)
        if i % 4 == 0:
            irrelevant[14:, 14:] = True  # the free corner marked Irrelevant: counterexamples fill it
        mask = irrelevant if irrelevant.any() else None
        out.append(Example(i, x[i], Feedback(i, i, label, mask, None, "irrelevant" if mask is not None
                                             else "label_only")))
    return out


def test_it_learns_a_generated_multi_label_problem_over_several_seeds():
    """Three independent labels (chance: 1/2 per label, 1/8 for all three right): with the default
    strategy and some Irrelevant marks, every seed learns each label, and most tasks' whole set."""
    x, y = squares(192, seed=10)
    x_test, y_test = squares(200, seed=11)
    settings = ProjectSettings(epochs=25, batch_size=32, learning_rate=3e-3, patience=25, propagate_min_support=0)
    per_label, exact = [], []
    for seed in SEEDS:
        model = multi_model(seed)
        fitted = fit_examples(model, _examples(x, y), settings, seed=seed, device=torch.device("cpu"))
        assert fitted.added["counterexamples"] > 0
        per_label.append(accuracy(model, x_test, y_test))
        exact.append(float(((model.probs(x_test) > 0.5) == (y_test > 0.5)).all(1).float().mean()))
    assert min(per_label) > 0.9, per_label
    assert min(exact) > 0.7, exact


# --- serving -------------------------------------------------------------------------------

def _serving_model(settings, bias: tuple[float, ...]) -> str:
    """A published multi-label model whose classes' probabilities are set by the final bias."""
    model = multi_model(image_size=32)
    linear = [m for m in model.network.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.mul_(0.01)
        linear.bias.copy_(torch.tensor(bias))
    return ProjectStore(settings.model_dir, "2").publish(model, CLASSES, {})


def _image_task(task_id: int = 1) -> dict:
    rng = np.random.default_rng(task_id)
    image = (rng.uniform(0, 255, size=(40, 48, 3))).astype(np.uint8)
    return ls_task(task_id, {"image": png_data_uri(image)})


def test_a_published_multi_label_model_reloads_as_one():
    model = multi_model()
    checkpoint = {**model.checkpoint(CLASSES), "multi_label": True}
    assert from_checkpoint(checkpoint).multi_label
    assert not from_checkpoint(model.checkpoint(CLASSES)).multi_label  # older checkpoints: single-label


def test_serves_every_class_above_the_threshold_each_with_its_own_evidence(settings):
    version = _serving_model(settings, (4.0, -4.0, 4.0))
    client = create_app(settings).test_client()
    assert client.post("/setup", json=setup_body(IMAGE_CONFIG)).get_json() == {"model_version": version}
    [prediction] = client.post("/predict", json=predict_body([_image_task()], IMAGE_CONFIG)).get_json()["results"]
    choices = [r for r in prediction["result"] if r["type"] == "choices"]
    assert [c["value"]["choices"] for c in choices] == [["Cat", "Bird"]]
    regions = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert {r["meta"]["text"][0] for r in regions} == {"evidence for Cat", "evidence for Bird"}
    assert len({r["id"] for r in regions}) == len(regions)
    assert all(r["original_width"] == 48 and r["original_height"] == 40 for r in regions)
    p = 1 / (1 + np.exp(-4.0))
    assert prediction["score"] == pytest.approx(p, abs=0.02)  # the least certain decision


def test_the_threshold_is_a_project_setting(settings):
    _serving_model(settings, (1.0, -4.0, 4.0))  # Cat ~0.73, Bird ~0.98
    client = create_app(settings).test_client()
    body = predict_body([_image_task()], IMAGE_CONFIG)
    body["params"]["extra_params"] = {"multi_label_threshold": 0.9}
    [prediction] = client.post("/predict", json=body).get_json()["results"]
    assert [r["value"]["choices"] for r in prediction["result"] if r["type"] == "choices"] == [["Bird"]]
    body["params"]["extra_params"] = {"multi_label_threshold": 0.99}
    [prediction] = client.post("/predict", json=body).get_json()["results"]
    assert prediction["result"] == [] and 0 < prediction["score"] < 1
    bad = client.post("/setup", json=setup_body(IMAGE_CONFIG, extra_params={"multi_label_threshold": 1.5}))
    assert bad.status_code == 422 and "multi_label_threshold" in bad.get_json()["error"]


def test_a_single_label_version_is_not_served_for_a_multi_label_config(settings):
    model = CNNKind(ImageCNN(len(CLASSES), image_size=32))
    ProjectStore(settings.model_dir, "2").publish(model, CLASSES, {})
    client = create_app(settings).test_client()
    assert client.post("/setup", json=setup_body(IMAGE_CONFIG)).get_json() == {"model_version": "untrained"}


def test_text_serves_each_class_with_its_own_spans(settings, text_config):
    from ml_backend.models.text import TextCNN, TextCNNKind

    config = text_config.replace('choice="single"', 'choice="multiple"').replace(
        '<Choice value="Negative"/>', '<Choice value="Negative"/><Choice value="Funny"/>')
    model = TextCNNKind(TextCNN(3))
    model.multi_label = True
    linear = [m for m in model.network.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.mul_(0.01)
        linear.bias.copy_(torch.tensor([4.0, -4.0, 4.0]))
    ProjectStore(settings.model_dir, "2").publish(model, ("Positive", "Negative", "Funny"), {})
    client = create_app(settings).test_client()
    text = "a lovely and very funny film about a kettle"
    [prediction] = client.post("/predict", json=predict_body([ls_task(1, {"text": text})], config)).get_json()["results"]
    assert [r["value"]["choices"] for r in prediction["result"] if r["type"] == "choices"] == [["Positive", "Funny"]]
    spans = [r for r in prediction["result"] if r["type"] == "labels"]
    assert {r["meta"]["text"][0] for r in spans} == {"evidence for Positive", "evidence for Funny"}
    assert all(text[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"] for r in spans)


@pytest.mark.parametrize("kind", ["senn", "bayesian_cnn"])
def test_kinds_without_multi_label_refuse_it_at_setup(settings, kind):
    client = create_app(settings).test_client()
    response = client.post("/setup", json=setup_body(IMAGE_CONFIG, extra_params={"model_kind": kind}))
    assert response.status_code == 422 and "single-label Choices only" in response.get_json()["error"]


def test_a_new_model_for_a_multi_label_project_is_multi_label():
    ctx = make_context("2", IMAGE_CONFIG, ProjectSettings(image_size=32))
    assert new_model(ctx).multi_label
    assert not new_model(make_context("2", IMAGE_CONFIG.replace(' choice="multiple"', ""),
                                      ProjectSettings(image_size=32))).multi_label


# --- acquisition ---------------------------------------------------------------------------

def test_entropy_is_over_independent_labels():
    probs = np.array([[0.9, 0.9, 0.1], [0.5, 0.95, 0.05], [0.5, 0.5, 0.5]])  # rows need not sum to 1
    scores = Entropy().scores(probs, multi_label=True)
    assert scores[2] > scores[1] > scores[0]
    assert scores[2] == pytest.approx(3 * np.log(2))
    # the same rows read as one distribution would rank the first and third alike (both near uniform)
    assert not np.allclose(scores, Entropy().scores(probs))


def test_margin_and_least_confidence_take_the_least_certain_label():
    probs = np.array([[0.99, 0.6, 0.01], [0.8, 0.8, 0.2], [1.0, 0.0, 1.0]])
    margin = Margin().scores(probs, multi_label=True)
    assert margin == pytest.approx([1 - 0.2, 1 - 0.6, 0.0])
    least = LeastConfidence().scores(probs, multi_label=True)
    assert least == pytest.approx([0.4, 0.2, 0.0])


def test_bald_sums_the_disagreement_of_each_label():
    agree = np.array([[0.5, 0.5]] * 4)  # uncertain but every sample agrees: no information
    disagree = np.array([[0.99, 0.5], [0.01, 0.5], [0.99, 0.5], [0.01, 0.5]])  # label 0 disputed
    both = np.array([[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.01, 0.99]])  # both disputed
    mc = np.stack([agree, disagree, both], axis=1)  # (T=4, N=3, K=2)
    scores = BALD().scores(mc_probs=mc, multi_label=True)
    assert scores[0] == pytest.approx(0.0, abs=1e-9) and scores[2] == pytest.approx(2 * scores[1], rel=1e-6)
    assert scores[1] > 0.5


def test_alex_ranks_multi_label_uncertainty_first_without_labeled_explanations():
    probs = np.array([[0.99, 0.01], [0.5, 0.5], [0.7, 0.9]])
    order = np.argsort(-ALEX(b=1).scores(probs, multi_label=True))
    assert order.tolist() == [1, 2, 0]
    explanations = np.eye(3)[:, :3]
    top = np.argsort(-ALEX(b=1, k_factor=2).scores(probs, explanations=explanations,
                                                    labeled_explanations=np.array([[0.0, 1.0, 0.0]]),
                                                    multi_label=True))
    assert top[0] in (1, 2) and top[-1] == 0


@pytest.mark.parametrize("acquisition", ["bald", "alex", "margin"])
def test_the_ranking_job_scores_a_multi_label_project_by_its_labels(tmp_path, acquisition):
    from ml_backend.config import Settings
    from ml_backend.data.fetch import Fetcher
    from ml_backend.ranking.score import labeled_explanations, prepare_readable, rank_tasks

    ctx = make_context("2", IMAGE_CONFIG, ProjectSettings(image_size=32, acquisition=acquisition, mc_samples=4,
                                                          alex_batch=2))
    store = ProjectStore(tmp_path / "models", "2")
    version = store.publish(new_model(ctx), ctx.schema.classes, {})
    loaded = store.load(version)
    assert loaded.model.multi_label
    tasks = [_image_task(i) for i in range(1, 6)]
    fetcher = Fetcher(Settings())
    labeled = labeled_explanations(ctx, loaded, prepare_readable(ctx, loaded, [_image_task(9)], fetcher))
    assert labeled.shape == (1, 16 * 16)
    ids, values, scores = rank_tasks(ctx, loaded, iter(tasks), fetcher, tmp_path / "spool.jsonl", labeled=labeled)
    assert ids == [1, 2, 3, 4, 5] and sorted(scores.tolist()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.all(values >= 0)
