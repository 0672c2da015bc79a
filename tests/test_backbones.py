"""Pretrained backbones: tiny random ResNet-, ViT-, DINOv2- and BERT-family models saved with
save_pretrained and loaded through the real offline path, served, retrained and checked."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import requests
import torch
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import ConfigError, ProjectSettings, Settings
from ml_backend.data.frame import Frame
from ml_backend.feedback.parse import Feedback
from ml_backend.jobs import make_queue
from ml_backend.models.hf_image import estimate_frame
from ml_backend.project import make_context, new_model
from ml_backend.store import ProjectStore, version_number
from ml_backend.training.fit import Example, evaluate, fit_examples
from ml_backend.training.sets import Batch
from ml_backend.training.strategies import strategies_for
from ml_backend.training.trainer import batch_loss
from tests.support.backbones import save_image_backbone, save_text_backbone
from tests.support.live import (LiveServer, annotation_webhook, brush, choice, ls_task, png_data_uri, predict_body,
                                setup_body)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {family: save_image_backbone(root / "backbones" / family, family) for family in ("resnet", "vit", "dinov2")}
    out.update({family: save_text_backbone(root / "backbones" / family, family) for family in ("bert", "distilbert")})
    return root, out


@pytest.fixture
def backend(backbone_dirs, tmp_path):
    """A backend of its own (store, versions), sharing the saved backbones under MODEL_DIR/backbones."""
    root, _ = backbone_dirs
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "backbones").symlink_to(root / "backbones", target_is_directory=True)
    settings = Settings(model_dir=model_dir, train_debounce=0.2, project=ProjectSettings(epochs=3, holdout=0.0))
    with LiveServer(create_app(settings)) as server:
        yield server, settings


def photo(task_id: int, height: int = 45, width: int = 70) -> np.ndarray:
    """A non-square picture: a red or a blue field with noise."""
    rng = np.random.default_rng(task_id)
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    image[..., 0 if task_id % 2 else 2] += 150
    return image


def image_label(task_id: int) -> str:
    return "Class A" if task_id % 2 else "Class B"


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_a_webhook_trained_image_backbone_serves_evidence_at_the_original_size(backend, image_config, family):
    server, settings = backend
    params = {"backbone": family, "strategies": ["rrr", "counterexamples"]}  # a name under MODEL_DIR/backbones
    assert requests.post(server.url + "/setup", json=setup_body(image_config, extra_params=params)).json() == \
        {"model_version": "untrained"}
    corner = np.zeros((45, 70), dtype=bool)
    corner[:10, :15] = True
    for i in range(1, 7):
        task = ls_task(i, {"image": png_data_uri(photo(i))})
        result = [choice(image_label(i))] + ([brush(corner, "Irrelevant")] if i % 3 == 0 else [])
        assert requests.post(server.url + "/webhook", json=annotation_webhook(
            "ANNOTATION_CREATED", i, task, result, image_config)).status_code == 200
    queue = make_queue(settings)
    assert queue.wait_idle(300)
    failed = [j for j in queue.jobs("2") if j["status"] == "failed"]
    assert not failed, failed[0]["traceback"]
    meta = ProjectStore(settings.model_dir, "2").list()[-1]
    assert meta["kind"] == "backbone_image" and meta["feedback"]["irrelevant"] == 2 and meta["counterexamples"] > 0
    # the frozen backbone's features went to the project's feature cache, read back by evaluation
    assert list((settings.model_dir / "projects" / "2" / "features").rglob("*.safetensors"))
    task = ls_task(50, {"image": png_data_uri(photo(50, 37, 91))})
    prediction = requests.post(server.url + "/predict", json=predict_body([task], image_config)).json()["results"][0]
    assert prediction["model_version"] == meta["version"]
    assert prediction["result"][0]["type"] == "choices"
    regions = prediction["result"][1:]
    assert regions, "evidence regions"
    for region in regions:
        assert (region["original_width"], region["original_height"]) == (91, 37)
        alpha = decode_rle(region["value"]["rle"]).reshape(37, 91, 4)[:, :, 3]
        assert alpha.any()
    # the version stores the head and its feature statistics, not the backbone's weights
    version_dir = ProjectStore(settings.model_dir, "2").versions_dir / f"v{version_number('2', meta['version'])}"
    state = torch.load(version_dir / "model.pt", weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in state} == {"classifier", "scaler"}


def test_a_text_backbone_reads_a_long_document_whole(backend, text_config, backbone_dirs):
    server, settings = backend
    params = {"backbone": "bert", "strategies": ["rrr", "counterexamples"]}
    assert requests.post(server.url + "/setup", json=setup_body(text_config, extra_params=params)).status_code == 200
    texts = ["a great film", "an awful plot xqz", "loved this story", "boring and bad xqz"]
    for i, text in enumerate(texts, 1):
        label = "Negative" if "xqz" in text else "Positive"
        result = [choice(label, "text")]
        if "xqz" in text:
            start = text.index("xqz")
            result.append({"from_name": "evidence", "to_name": "text", "type": "labels",
                           "value": {"start": start, "end": start + 3, "text": "xqz", "labels": ["Irrelevant"]}})
        requests.post(server.url + "/webhook", json=annotation_webhook(
            "ANNOTATION_CREATED", i, ls_task(i, {"text": text}), result, text_config))
    queue = make_queue(settings)
    assert queue.wait_idle(300)
    failed = [j for j in queue.jobs("2") if j["status"] == "failed"]
    assert not failed, failed[0]["traceback"]
    meta = ProjectStore(settings.model_dir, "2").list()[-1]
    assert meta["kind"] == "backbone_text" and meta["feedback"]["irrelevant"] == 2
    # 32-token windows overlapping by 8: this document of about 110 tokens takes five of them
    document = " ".join(["the film was fine and the actor was good"] * 12 + ["zzv xqz awful"])
    prediction = requests.post(server.url + "/predict",
                               json=predict_body([ls_task(9, {"text": document})], text_config)).json()["results"][0]
    spans = prediction["result"][1:]
    assert spans and prediction["result"][0]["type"] == "choices"
    for span in spans:
        value = span["value"]
        assert document[value["start"]:value["end"]] == value["text"]
    # A token in two windows sums both, so evidence favours the middle over the last window;
    # the check is that it reaches past the first window, which a truncating reader never does.
    first_window_chars = len(" ".join(["the film was fine and the actor was good"] * 4))
    assert max(span["value"]["end"] for span in spans) > first_window_chars
    # and that the last words, far past the first window, move the prediction
    retold = document.replace("zzv xqz awful", "loved this story")
    again = requests.post(server.url + "/predict",
                          json=predict_body([ls_task(10, {"text": retold})], text_config)).json()["results"][0]
    assert again["result"][0]["score"] != prediction["result"][0]["score"]  # a truncating reader gives the same bits


@pytest.mark.parametrize("name, message", [
    ("nowhere", "not found"),
    ("../escape", "under MODEL_DIR/backbones"),
])
def test_a_missing_backbone_is_a_422(backend, image_config, name, message):
    server, _ = backend
    response = requests.post(server.url + "/setup", json=setup_body(image_config, extra_params={"backbone": name}))
    assert response.status_code == 422 and message in response.json()["error"]


def test_broken_backbones_are_a_422_naming_the_problem(backend, image_config, text_config, backbone_dirs, tmp_path):
    server, settings = backend
    root = settings.model_dir / "backbones"
    (root / "empty").mkdir(exist_ok=True)
    (root / "garbled").mkdir(exist_ok=True)
    (root / "garbled" / "config.json").write_text("{not json")
    (root / "gpt").mkdir(exist_ok=True)
    (root / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    mismatched = save_image_backbone(root / "mismatched", "resnet")
    config = json.loads((mismatched / "config.json").read_text())
    config["hidden_sizes"] = [12, 24]  # the weights say 8 and 16
    (mismatched / "config.json").write_text(json.dumps(config))
    cases = [("empty", image_config, "no config.json"), ("garbled", image_config, "not readable JSON"),
             ("gpt", image_config, "'gpt2' is not supported"), ("mismatched", image_config, "cannot load it"),
             ("bert", image_config, "reads text; the label config has image")]
    for name, label_config, message in cases:
        response = requests.post(server.url + "/setup", json=setup_body(label_config, extra_params={"backbone": name}))
        assert response.status_code == 422, (name, response.text)
        assert message in response.json()["error"], (name, response.json())


def test_the_measured_frame_matches_the_processors_geometry():
    import transformers as T

    # ConvNeXt's rule: shortest edge to 64 / 0.875, then a centred 64 x 64 crop
    process = T.ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875)
    frame = estimate_frame(lambda im: process(images=im, return_tensors="pt")["pixel_values"][0], (50, 80))
    resized = (int(64 / 0.875), round(80 * int(64 / 0.875) / 50))  # (73, 117)
    scale = 50 / resized[0]
    assert frame.input_shape == (64, 64)
    assert frame.scale == pytest.approx((scale, 80 / resized[1]), rel=0.02)
    assert frame.offset == pytest.approx(((resized[0] - 64) / 2 * scale, (resized[1] - 64) / 2 * 80 / resized[1]),
                                         abs=0.6)


@pytest.mark.parametrize("original", [(28, 28), (50, 80), (300, 200)])
def test_marks_reach_every_input_pixel_the_processor_blends_them_into(original):
    # A processor's resize blends a mark's edge into the pixels around it; a mark that stopped at
    # the pixels it covers would leave that rim, still in the mark's colour, for the model to read.
    import transformers as T

    from ml_backend.models.hf_image import channel_levels

    rng = np.random.default_rng(sum(original))
    for processor in (T.ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875),
                      T.ViTImageProcessorPil(size={"height": 112, "width": 112})):
        def process(image):
            return processor(images=image, return_tensors="pt")["pixel_values"][0]

        black, white = channel_levels(process)
        frame = estimate_frame(process, original)
        H, W = original
        for _ in range(6):
            mark = np.zeros(original, dtype=bool)
            y, x = rng.integers(0, H - 3), rng.integers(0, W - 3)
            mark[y:y + rng.integers(1, max(2, H // 4)), x:x + rng.integers(1, max(2, W // 4))] = True
            picture = Image.fromarray(np.where(mark[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
            tinted = ((process(picture).double().numpy() - black) / ((white - black) / 255) > 0.5).any(axis=0)
            on_input = frame.to_input(mark)
            assert not (tinted & ~on_input).any(), (type(processor).__name__, original)
            assert (on_input & ~tinted).sum() <= 0.5 * tinted.sum() + 4 * max(on_input.shape)  # about one ring more
        background = np.zeros(original, dtype=bool)
        background[: H // 2] = True  # a background's rim is the object's edge: it keeps the cells it covers
        assert np.array_equal(frame.to_input(background), dataclasses.replace(frame, reach=None).to_input(background))


def test_marks_and_evidence_map_through_a_frame():
    frame = Frame((4, 4), (8, 16), (2.0, 2.0), (0.0, 4.0))  # a centred 8 x 8 crop of an 8 x 16 image
    mask = np.zeros((8, 16), dtype=bool)
    mask[:2, 4:6] = True  # the crop's top-left input pixel
    on_input = frame.to_input(mask)
    assert on_input[0, 0] and on_input.sum() == 1
    relevance = np.zeros((4, 4))
    relevance[0, 0] = 1.0
    back = frame.to_original(relevance)
    assert back.shape == (8, 16) and back[:2, 4:6].all() and back.sum() == 4
    assert frame.to_original(np.ones((4, 4)))[:, :4].sum() == 0  # outside the crop: nothing seen


def test_a_frozen_image_backbone_learns_through_the_training_core(backbone_dirs, image_config):
    root, dirs = backbone_dirs
    settings = ProjectSettings(backbone=str(dirs["resnet"]), epochs=40, learning_rate=1e-2, strategies=())
    ctx = make_context("2", image_config, settings)
    model = new_model(ctx)
    assert model.config["train_mode"] == "frozen"
    examples = []
    for i in range(40):
        tensor, _ = model.encode_image(Image.fromarray(photo(i)))
        examples.append(Example(i, tensor, Feedback(i, i, int(i % 2 == 0), None, None, "label_only")))
    before = [p.detach().clone() for p in model.network.backbone.parameters()]
    fitted = fit_examples(model, examples, settings, seed=0)
    assert evaluate(model, fitted, [], settings)["train_accuracy"] >= 0.9
    assert all(torch.equal(a, b) for a, b in zip(before, model.network.backbone.parameters()))  # frozen


def test_a_fine_tuned_text_backbone_learns_and_only_its_last_blocks_move(backbone_dirs, text_config):
    root, dirs = backbone_dirs
    # a random tiny encoder has nothing pretrained to keep: its block learns at the head's rate. Its
    # loss sits on a plateau for 10-20 epochs before it falls (8 initialisations), so early stopping
    # is off; the seed keeps the head's initialisation apart from the tests that ran before
    torch.manual_seed(0)
    settings = ProjectSettings(backbone=str(dirs["distilbert"]), train_mode="finetune", finetune_blocks=1, epochs=40,
                               patience=40, learning_rate=3e-3, finetune_lr_scale=1.0, strategies=())
    ctx = make_context("2", text_config, settings)
    model = new_model(ctx)
    rng = np.random.default_rng(0)
    positive, negative = ["great", "good", "loved", "fine"], ["awful", "bad", "hated", "boring"]
    examples = []
    for i in range(40):
        words = list(rng.choice(positive if i % 2 else negative, 3)) + list(rng.choice(["the", "film", "plot"], 3))
        rng.shuffle(words)
        tensor, _ = model.encode_text(" ".join(words))
        examples.append(Example(i, tensor, Feedback(i, i, i % 2, None, None, "label_only")))
    layers = model.network.encoder.transformer.layer
    first = [p.detach().clone() for p in layers[0].parameters()]
    last = [p.detach().clone() for p in layers[-1].parameters()]
    fitted = fit_examples(model, examples, settings, seed=0)
    assert evaluate(model, fitted, [], settings)["train_accuracy"] >= 0.9
    assert all(torch.equal(a, b) for a, b in zip(first, layers[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(last, layers[-1].parameters()))


@pytest.mark.parametrize("family", ["resnet", "distilbert"])
def test_fine_tuned_blocks_learn_at_a_share_of_the_heads_rate(backbone_dirs, image_config, text_config, family):
    _, dirs = backbone_dirs
    settings = ProjectSettings(backbone=str(dirs[family]), train_mode="finetune", finetune_blocks=1,
                               finetune_lr_scale=0.25)
    model = new_model(make_context("2", text_config if family == "distilbert" else image_config, settings))
    head, blocks = model.parameter_groups(2e-3, settings)
    tuned = {id(p) for block in model.network.tuned_blocks for p in block.parameters()}
    assert (head["lr"], blocks["lr"]) == (2e-3, 5e-4)
    assert {id(p) for p in blocks["params"]} == tuned and not tuned & {id(p) for p in head["params"]}
    assert {id(p) for p in head["params"] + blocks["params"]} == {id(p) for p in model.trainable_parameters()}
    frozen = new_model(make_context("2", image_config, dataclasses.replace(settings, backbone=str(dirs["resnet"]),
                                                                           train_mode="frozen")))
    assert len(frozen.parameter_groups(2e-3, settings)) == 1


@pytest.mark.parametrize("family", ["dinov2", "bert"])
def test_rrr_and_counterexamples_train_a_backbone(backbone_dirs, image_config, text_config, family):
    """RRR takes a second derivative through the backbone; counterexamples make its input."""
    _, dirs = backbone_dirs
    text = family == "bert"
    settings = ProjectSettings(backbone=str(dirs[family]), strategies=("rrr", "counterexamples"))
    ctx = make_context("2", text_config if text else image_config, settings)
    model = new_model(ctx)
    if text:
        x = torch.stack([model.encode_text(t)[0] for t in ("a great film xqz", "an awful plot xqz")])
    else:
        x = torch.stack([model.encode_image(Image.fromarray(photo(i)))[0] for i in (1, 2)])
    shape = model.mask_shape(x)
    irrelevant = torch.zeros((2, *shape), dtype=torch.bool)
    irrelevant[:, 3] = True
    from ml_backend.training.fit import fit_set
    from ml_backend.training.sets import TrainingSet

    strategies = strategies_for(settings)
    data, added = fit_set(TrainingSet(x, torch.tensor([0, 1]), irrelevant, torch.zeros_like(irrelevant)), model,
                          settings, strategies, seed=0)
    assert added["counterexamples"] == 2 * settings.counterexamples
    batch = Batch(data.x, data.y, data.irrelevant, data.has_irrelevant, data.relevant, data.has_relevant)
    loss, parts = batch_loss(model, batch, strategies, settings, len(data))
    loss.backward()
    assert parts["rrr"] >= 0 and model.network.classifier[1].weight.grad is not None


def test_a_changed_backbone_is_refused_by_its_versions(backbone_dirs, image_config, tmp_path):
    from ml_backend.models import CheckpointError, from_checkpoint

    directory = save_image_backbone(tmp_path / "resnet", "resnet")
    ctx = make_context("2", image_config, ProjectSettings(backbone=str(directory)))
    checkpoint = new_model(ctx).checkpoint(ctx.schema.classes)
    save_image_backbone(directory, "resnet", seed=1)  # new weights in the same directory
    import os

    os.utime(directory / "model.safetensors", (1, 1))
    with pytest.raises(CheckpointError, match="changed since this model was trained"):
        from_checkpoint(checkpoint)
    with pytest.raises(ConfigError):
        make_context("2", image_config, ProjectSettings(backbone=str(directory), model_kind="cnn"))


@pytest.mark.parametrize("family", ["vit", "dinov2", "resnet"])
def test_evidence_comes_from_the_backbones_own_map(backbone_dirs, image_config, family):
    """Patch tokens entering the last block (ViT families) or the last stage (CNNs), not the
    saliency fallback: those maps are non-zero for every image."""
    _, dirs = backbone_dirs
    model = new_model(make_context("2", image_config, ProjectSettings(backbone=str(dirs[family]))))
    x = torch.stack([model.encode_image(Image.fromarray(photo(i, 50, 80)))[0] for i in range(3)])
    probs, cam = model._evidence(x)
    assert cam.shape == (3, *x.shape[-2:]) and bool((cam.flatten(1).sum(1) > 0).all())
    assert torch.allclose(probs.sum(1), torch.ones(3))


def bright_photo(task_id: int) -> tuple[np.ndarray, int]:
    """Pictures far brighter than the backbone's pretraining data: the class is a dark red or
    blue square on a light noisy field."""
    rng = np.random.default_rng(task_id)
    label = task_id % 2
    image = (rng.integers(0, 40, (48, 48, 3)) + 180).astype(np.uint8)
    image[10:30, 10:30, 0 if label else 2] = 30
    return image, label


@pytest.mark.parametrize("family", ["resnet", "distilbert"])
def test_a_fine_tuned_version_serves_the_model_it_trained(backbone_dirs, image_config, text_config, family, tmp_path):
    """The version's weights, loaded fresh as /predict loads them, give the probabilities the
    trained model gives (a fine-tune once let the frozen blocks' batch-norm statistics drift to
    the project's images; the version stored only the tuned blocks, and served chance)."""
    from ml_backend.models import from_checkpoint, load_checkpoint_file

    _, dirs = backbone_dirs
    text = family == "distilbert"
    # random tiny backbones: their block learns at the head's rate (nothing pretrained to keep)
    settings = ProjectSettings(backbone=str(dirs[family]), train_mode="finetune", finetune_blocks=1, epochs=30,
                               learning_rate=3e-3, finetune_lr_scale=1.0, strategies=(), holdout=0.0)
    ctx = make_context("2", text_config if text else image_config, settings)
    model = new_model(ctx)
    rng = np.random.default_rng(0)
    examples = []
    for i in range(48):
        if text:
            label = i % 2
            words = list(rng.choice(["great", "good", "loved", "fine"] if label else ["awful", "bad", "hated", "boring"],
                                    3)) + list(rng.choice(["the", "film", "plot"], 3))
            rng.shuffle(words)
            tensor, _ = model.encode_text(" ".join(words))
        else:
            image, label = bright_photo(i)
            tensor, _ = model.encode_image(Image.fromarray(image))
        examples.append(Example(i, tensor, Feedback(i, i, label, None, None, "label_only")))
    fitted = fit_examples(model, examples, settings, seed=0)
    trained = evaluate(model, fitted, [], settings)["train_accuracy"]
    assert trained >= 0.9
    torch.save(model.checkpoint(ctx.schema.classes), tmp_path / "version.pt")
    served = from_checkpoint(load_checkpoint_file(tmp_path / "version.pt"))
    x = torch.stack([e.x for e in examples])
    assert torch.allclose(served.probs(x), model.probs(x), atol=1e-5)
    from ml_backend.training.trainer import accuracy
    assert accuracy(served, x, torch.tensor([e.feedback.label for e in examples])) == trained


def test_a_frozen_head_fits_as_a_tuned_logistic_regression_on_held_out_digits(image_config, tmp_path):
    """On a frozen backbone's features, the served head is within a point of scikit-learn's
    cross-validated logistic regression on the same standardised features, on held-out data."""
    import transformers as T
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ml_backend.training.trainer import accuracy

    torch.manual_seed(0)
    directory = tmp_path / "resnet"
    T.AutoModel.from_config(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                                           layer_type="basic")).save_pretrained(directory)
    T.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(directory)
    digits = load_digits()
    classes = "".join(f'<Choice value="d{k}"/>' for k in range(10))
    config = image_config[:image_config.index("<Choices")] + f'<Choices name="label" toName="image" choice="single">' \
        f'{classes}</Choices>' + image_config[image_config.index("</Choices>") + len("</Choices>"):]
    settings = ProjectSettings(backbone=str(directory), train_mode="frozen", strategies=(), holdout=0.0)
    model = new_model(make_context("2", config, settings))
    x = torch.stack([model.encode_image(Image.fromarray((img * 15).astype(np.uint8)).convert("RGB"))[0]
                     for img in digits.images[:1000]])
    y = torch.as_tensor(digits.target[:1000])
    train, test = slice(0, 600), slice(600, 1000)
    examples = [Example(i, x[i], Feedback(i, i, int(y[i]), None, None, "label_only")) for i in range(600)]
    fit_examples(model, examples, settings, seed=0)
    head = accuracy(model, x[test], y[test])
    with torch.no_grad():
        features = model.network.features(x).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=2000))
    probe.fit(features[train], y[train].numpy())
    tuned = probe.score(features[test], y[test].numpy())
    assert tuned > 0.6, "a probe this weak would not show whether the head fits"
    assert head >= tuned - 0.01, (head, tuned)


@pytest.mark.parametrize("family", ["vit", "dinov2", "resnet"])
def test_region_features_cover_the_input_and_tell_places_apart(backbone_dirs, image_config, family):
    """The space a marked region's concept lives in: one vector per place on a grid over the
    input, the same for the same pixels wherever the batch puts them, and different across places."""
    _, dirs = backbone_dirs
    model = new_model(make_context("2", image_config, ProjectSettings(backbone=str(dirs[family]))))
    x = torch.stack([model.encode_image(Image.fromarray(photo(i, 50, 80)))[0] for i in range(3)])
    maps = model.region_features(x)
    assert maps.dim() == 4 and maps.shape[0] == 3 and min(maps.shape[2:]) >= 2
    assert torch.allclose(model.region_features(x[1:2]), maps[1:2], atol=1e-4)
    cells = maps[0].flatten(1)
    assert float((cells - cells[:, :1]).abs().amax()) > 1e-3


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_text_backbone_gives_one_contextual_vector_per_document_token(backbone_dirs, text_config, family):
    """Word pieces and windows fold into the document's tokens, as its relevances do."""
    _, dirs = backbone_dirs
    model = new_model(make_context("3", text_config, ProjectSettings(backbone=str(dirs[family]))))
    text = " ".join(f"word{i % 7} tokenisation" for i in range(60))  # longer than one window
    x, tokens = model.encode_text(text)
    features = model.region_features(x[None])
    assert features.shape[:2] == (1, model.input_spec().max_len)
    filled = features[0].abs().sum(dim=1) > 0
    assert int(filled.sum()) == len(tokens) and bool(filled[:len(tokens)].all())


def _frozen_resnet(backbone_dirs, image_config, classes: int):
    _, dirs = backbone_dirs
    choices = "".join(f'<Choice value="c{k}"/>' for k in range(classes))
    config = image_config[:image_config.index("<Choices")] + f'<Choices name="label" toName="image" choice="single">' \
        f'{choices}</Choices>' + image_config[image_config.index("</Choices>") + len("</Choices>"):]
    return new_model(make_context("2", config, ProjectSettings(backbone=str(dirs["resnet"]), train_mode="frozen")))


def test_the_frozen_heads_penalty_is_chosen_by_held_out_rows(backbone_dirs, image_config):
    """The head's C is the one that gets the most held-out rows right: a strong penalty on few, noisy
    rows; a weaker one where ten classes are cut by a linear rule (C = 1 underfit a ViT's features of a
    patterned background by 4.5 points). Choosing leaves the head as it was (the fit warm-starts)."""
    from ml_backend.training.head import C_GRID, HEAD_C, SELECT_MIN_ROWS, fit_linear_head, select_c

    def head_accuracy(model, c, x, y, x_test, y_test):
        fit_linear_head(model, x, y, c=c)
        with torch.no_grad():
            return float((model.logits_from_frozen(x_test).argmax(1) == y_test).float().mean())

    model = _frozen_resnet(backbone_dirs, image_config, 10)
    width = model.trainable_parameters()[0].shape[1]
    rng = torch.Generator().manual_seed(0)
    teacher = torch.randn(width, 10, generator=rng)
    x, x_test = torch.randn(1500, width, generator=rng), torch.randn(2000, width, generator=rng)
    y, y_test = (x @ teacher).argmax(1), (x_test @ teacher).argmax(1)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    chosen = select_c(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))
    scores = {c: head_accuracy(model, c, x, y, x_test, y_test) for c in C_GRID}
    assert chosen > 0.1 and scores[chosen] >= scores[0.1] + 0.02, (chosen, scores)
    assert scores[chosen] >= max(scores.values()) - 0.005, (chosen, scores)
    # few rows, classes barely apart, a third of the labels wrong: the strongest penalty
    y_noisy = torch.randint(0, 10, (600,), generator=rng) % 3
    noisy = torch.randn(600, width, generator=rng) + 0.2 * torch.randn(3, width, generator=rng)[y_noisy]
    y_noisy = torch.where(torch.rand(600, generator=rng) < 0.33, torch.randint(0, 3, (600,), generator=rng), y_noisy)
    assert select_c(model, noisy, y_noisy) <= 1.0
    assert select_c(model, x[:SELECT_MIN_ROWS - 1], y[:SELECT_MIN_ROWS - 1]) == HEAD_C
    assert fit_linear_head(model, x, y).c == chosen and fit_linear_head(model, x, y, c=0.5).c == 0.5


def test_counterexamples_tie_a_frozen_heads_logits_to_their_originals(backbone_dirs, image_config):
    """A feature that only marked (shortcut) examples carry: as extra rows, counterexamples without it
    leave the linear head reading it wherever it is present; tied to their originals' logits, they
    take its weight away, and the head holds where the shortcut no longer follows the class."""
    from ml_backend.training.head import fit_linear_head

    model = _frozen_resnet(backbone_dirs, image_config, 2)
    width = model.trainable_parameters()[0].shape[1]
    gaps = []
    for seed in range(3):
        rng = torch.Generator().manual_seed(seed)
        signal = torch.zeros(width)
        signal[1:9] = 0.6  # the class's own evidence, spread over a few features

        def rows(n: int, shortcut_follows_class: bool) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % 2
            x = torch.randn(n, width, generator=rng) + (2 * y[:, None] - 1) * signal
            side = 2 * y - 1 if shortcut_follows_class else 2 * torch.randint(0, 2, (n,), generator=rng) - 1
            x[:, 0] = 3.0 * side
            return x, y

        x, y = rows(200, True)
        corrected = torch.arange(30)  # 30 tasks corrected, 3 counterexamples each: the shortcut erased
        made = x[corrected].repeat_interleave(3, 0)
        made[:, 0] = torch.randn(len(made), generator=rng)
        x_all, y_all = torch.cat([x, made]), torch.cat([y, y[corrected].repeat_interleave(3)])
        source = torch.cat([torch.full((200,), -1), corrected.repeat_interleave(3)])
        x_test, y_test = rows(2000, False)
        scores, shortcut_weights, spreads = [], [], []
        for consistency in (0.0, 0.1):
            fit_linear_head(model, x_all, y_all, c=1.0, source=source, consistency=consistency)
            with torch.no_grad():
                scores.append(float((model.logits_from_frozen(x_test).argmax(1) == y_test).float().mean()))
                weight = model.trainable_parameters()[0]
                shortcut_weights.append(float((weight[1, 0] - weight[0, 0]).abs()))
                tied = model.logits_from_frozen(x_all)
                spreads.append(float((tied[200:] - tied[source[200:]]).abs().mean()))
        # seeds 0-2 measured: the weight falls to 0.20-0.24 of its untied value, the spread to 0.20-0.24
        assert shortcut_weights[1] < 0.4 * shortcut_weights[0], shortcut_weights
        assert spreads[1] < 0.4 * spreads[0], spreads
        gaps.append(scores[1] - scores[0])
    assert min(gaps) > 0.04, gaps  # measured 0.08-0.09
