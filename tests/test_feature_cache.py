"""The feature cache of frozen backbones: a second ranking runs no backbone pass, cached results
equal computed ones, a changed backbone invalidates its features, the files stay under the cap,
and a fit computes each example's features once (and none on the next fit)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.config import ProjectSettings, Settings
from ml_backend.data.fetch import Fetcher
from ml_backend.feedback.parse import Feedback
from ml_backend.inference import infer
from ml_backend.models import backbones
from ml_backend.models.feature_cache import FeatureCache, content_key
from ml_backend.project import make_context, new_model
from ml_backend.ranking.score import rank_tasks
from ml_backend.store import ProjectStore
from ml_backend.training.fit import Example, evaluate, fit_examples
from ml_backend.training.sets import Batch
from ml_backend.training.strategies import strategies_for
from ml_backend.training.trainer import batch_loss
from tests.support.backbones import save_image_backbone, save_text_backbone
from tests.support.live import ls_task, png_data_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    out = {family: save_image_backbone(root / family, family) for family in ("resnet", "vit")}
    out["bert"] = save_text_backbone(root / "bert", "bert")
    return out


def photo(i: int, height: int = 45, width: int = 70) -> np.ndarray:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    image[..., 0 if i % 2 else 2] += 150
    return image


class BackboneCalls:
    """Counts the backbone's forward passes of a model."""

    def __init__(self, model) -> None:
        network = model.network
        module = network.backbone if hasattr(network, "backbone") else network.encoder
        self.count = 0
        module.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))


def image_inputs(model, n: int, start: int = 0) -> torch.Tensor:
    return torch.stack([model.encode_image(Image.fromarray(photo(i)))[0] for i in range(start, start + n)])


@pytest.mark.parametrize("family", ["resnet", "vit", "bert"])
def test_cached_results_equal_computed_ones(dirs, image_config, text_config, family, tmp_path):
    text = family == "bert"
    ctx = make_context("2", text_config if text else image_config,
                       ProjectSettings(backbone=str(dirs[family]), attribution="gradcam"))
    model = new_model(ctx)
    model.network.eval()
    if text:
        x = torch.stack([model.encode_text(t)[0] for t in ("a great film", "an awful plot xqz", "fine")])
    else:
        x = image_inputs(model, 4)
    plain = infer(model, x, "gradcam", explain=True)
    torch.manual_seed(1)
    plain_mc = model.mc_probs(x, 4)
    model.use_feature_cache(FeatureCache(tmp_path / "features", 16))
    calls = BackboneCalls(model)
    for _ in range(2):  # computed, then read back
        cached = infer(model, x, "gradcam", explain=True)
        torch.testing.assert_close(cached.probs, plain.probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cached.relevance, plain.relevance, rtol=1e-4, atol=1e-6)
    torch.manual_seed(1)
    np.testing.assert_allclose(model.mc_probs(x, 4), plain_mc, rtol=1e-4, atol=1e-6)
    stats = model.network.feature_cache.stats()
    if text:  # evidence is a gradient at the embeddings: the encoder runs for it, the head reads the cache
        assert stats["memory_hits"] >= len(x)
    else:
        assert calls.count == 1 and stats["misses"] == len(x) and stats["memory_hits"] == 2 * len(x)


def test_the_second_ranking_hits_the_cache(dirs, image_config, tmp_path):
    # the evidence cap off: its region features are one more backbone pass, which the cache does not serve yet
    settings = ProjectSettings(backbone=str(dirs["resnet"]), acquisition="bald", mc_samples=5, max_evidence_share=1.0)
    ctx = make_context("2", image_config, settings)
    store = ProjectStore(tmp_path / "models", "2")
    model = new_model(ctx)
    model.network.classifier[1].weight.data.abs_()  # every Grad-CAM map speaks: no saliency fallback
    store.publish(model, ctx.schema.classes, {})
    tasks = [ls_task(i, {"image": png_data_uri(photo(i, 40 + i, 60))}) for i in range(40)]
    fetcher = Fetcher(Settings())

    def ranking(feature_cache_mb: int):
        loaded = store.load("v1", feature_cache_mb)
        calls = BackboneCalls(loaded.model)
        torch.manual_seed(0)  # the same MC-dropout masks
        ids, values, _ = rank_tasks(ctx, loaded, iter(tasks), fetcher, tmp_path / "spool.jsonl")
        return ids, values, calls.count, loaded.model.network.feature_cache

    ids, plain, plain_calls, _ = ranking(0)
    assert plain_calls == 2 * math.ceil(40 / 32)  # evidence, then the MC samples' features
    first = ranking(64)
    cache = first[3]
    assert first[2] == math.ceil(40 / 32) and cache.stats()["misses"] == 40
    cache.forget_memory()  # as a new process would: from the files
    second = ranking(64)
    assert second[2] == 0, "no backbone pass on the second ranking"
    assert cache.stats()["disk_hits"] == 40 and cache.stats()["misses"] == 40
    assert first[0] == second[0] == ids
    np.testing.assert_allclose(first[1], plain, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(second[1], plain, rtol=1e-4, atol=1e-6)


def test_a_changed_backbone_invalidates_its_features(image_config, tmp_path):
    directory = save_image_backbone(tmp_path / "resnet", "resnet")
    cache = FeatureCache(tmp_path / "features", 16)

    def model_and_features():
        model = new_model(make_context("2", image_config, ProjectSettings(backbone=str(directory))))
        model.use_feature_cache(cache)
        calls = BackboneCalls(model)
        model.network.eval()
        return model, model.probs(image_inputs(model, 3)), calls

    old, old_probs, _ = model_and_features()
    old_namespace = cache.root / old.network.cache_namespace()
    assert old_namespace.is_dir() and len(list(old_namespace.rglob("*.safetensors"))) == 3
    save_image_backbone(directory, "resnet", seed=1)  # new weights in the same directory
    os.utime(directory / "model.safetensors", (1, 1))
    new, new_probs, calls = model_and_features()
    assert new.network.cache_namespace() != old.network.cache_namespace()
    assert not old_namespace.exists(), "the old backbone's features are dropped"
    assert calls.count == 1 and cache.stats()["misses"] == 6  # computed again, not read back
    assert not torch.allclose(old_probs, new_probs)


def test_the_files_stay_under_the_cap_least_recently_used_first(tmp_path):
    cache = FeatureCache(tmp_path / "features", max_mb=0.1, memory_mb=0)  # about twelve 8 KiB entries
    cache.claim("ns", "somewhere")
    entries = {f"{i:040d}": {"pooled": torch.full((2048,), float(i))} for i in range(40)}
    keys = list(entries)
    for i, key in enumerate(keys):
        cache.put("ns", key, entries[key])
        if i >= 1:
            assert cache.get("ns", keys[0]) is not None  # kept in use: never the least recent
        assert cache.disk_bytes() <= 0.1 * 2**20
    assert cache.stats()["evicted"] > 0
    assert cache.get("ns", keys[0])["pooled"][0] == 0.0
    assert cache.get("ns", keys[1]) is None and cache.get("ns", keys[-1]) is not None


def test_content_keys_follow_values_not_layout():
    x = torch.randn(2, 3, 8, 8)
    assert content_key(x) == content_key(x.contiguous(memory_format=torch.channels_last))
    y = x.clone()
    y[0, 0, 0, 0] += 1
    assert content_key(x) != content_key(y) and content_key(x) != content_key(x.reshape(2, 3, 64))


def test_a_fit_computes_each_examples_features_once_and_hits_the_cache(dirs, image_config, tmp_path):
    settings = ProjectSettings(backbone=str(dirs["resnet"]), epochs=40, learning_rate=1e-2, strategies=(),
                               holdout=0.0)
    ctx = make_context("2", image_config, settings)
    cache = FeatureCache(tmp_path / "features", 64)
    n = 70

    def fitted(use_cache: bool):
        torch.manual_seed(0)
        model = new_model(ctx)
        if use_cache:
            model.use_feature_cache(cache)
        examples = [Example(i, model.encode_image(Image.fromarray(photo(i)))[0],
                            Feedback(i, i, int(i % 2 == 0), None, None, "label_only")) for i in range(n)]
        calls = BackboneCalls(model)
        fit = fit_examples(model, examples, settings, seed=0)
        metrics = evaluate(model, fit, [], settings)
        return fit.report, metrics, calls.count

    before, _, before_calls = fitted(False)
    report, metrics, calls = fitted(True)
    assert metrics["train_accuracy"] >= 0.9
    assert calls == math.ceil(n / backbones.FROZEN_BATCH), "one backbone pass per example, evaluation hits"
    assert before_calls > calls  # without the cache, evaluation runs the backbone again
    assert [h["loss"] for h in report.history] == pytest.approx([h["loss"] for h in before.history], rel=1e-4)
    again, _, again_calls = fitted(True)  # the next version's fit: every example's features read back
    assert again_calls == 0 and again.history[-1]["loss"] == pytest.approx(report.history[-1]["loss"], rel=1e-5)


def test_input_gradients_bypass_the_cache(dirs, image_config, tmp_path):
    """RRR needs the gradient at the input: those batches run the backbone whatever is cached."""
    settings = ProjectSettings(backbone=str(dirs["resnet"]), strategies=("rrr",))
    model = new_model(make_context("2", image_config, settings))
    model.use_feature_cache(FeatureCache(tmp_path / "features", 16))
    x = image_inputs(model, 2)
    model.network.eval()
    model.probs(x)  # cached now
    calls = BackboneCalls(model)
    irrelevant = torch.zeros((2, *model.mask_shape(x)), dtype=torch.bool)
    irrelevant[:, :8, :8] = True
    has = irrelevant.flatten(1).any(1)
    batch = Batch(x, torch.tensor([0, 1]), irrelevant, has, torch.zeros_like(irrelevant), torch.zeros_like(has))
    strategies = strategies_for(settings)
    loss, parts = batch_loss(model, batch, strategies, settings, 2, frozen=model.frozen_features(x))
    loss.backward()
    assert calls.count == 1 and "rrr" in parts and model.network.classifier[1].weight.grad is not None


def test_a_copy_of_a_cached_model_shares_the_cache_and_predicts_the_same(dirs, image_config, tmp_path):
    """The benchmark's rounds start from a deep copy of a base model, as a warm start does."""
    import copy

    model = new_model(make_context("2", image_config, ProjectSettings(backbone=str(dirs["resnet"]))))
    model.use_feature_cache(FeatureCache(tmp_path / "features", 16))
    clone = copy.deepcopy(model)
    assert clone.network.feature_cache is model.network.feature_cache
    assert clone.network.classifier[1].weight is not model.network.classifier[1].weight
    x = torch.stack([model.encode_image(Image.fromarray(photo(i)))[0] for i in range(3)])
    assert torch.allclose(clone.probs(x), model.probs(x))


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_labelled_tasks_region_features_are_kept_and_others_only_read(dirs, image_config, family, tmp_path):
    """The feature concept reads every labelled task's region features in every training: kept
    (keep=True), they cost no backbone pass the next time. Other tasks' (a ranking's) are read
    where kept but not stored: at four times the pooled features' size they would push those out."""
    model = new_model(make_context("2", image_config, ProjectSettings(backbone=str(dirs[family]))))
    model.network.eval()
    x = image_inputs(model, 5)
    plain = model.region_features(x)
    cache = FeatureCache(tmp_path / "features", 64)
    model.use_feature_cache(cache)
    calls = BackboneCalls(model)
    model.region_features(x[3:], keep=False)
    assert calls.count == 1 and cache.stats()["written"] == 0
    kept = model.region_features(x[:3], keep=True)
    assert calls.count == 2 and cache.stats()["written"] == 3
    cache.forget_memory()  # the next training's process
    for keep in (True, False):
        again = model.region_features(x[:3], keep=keep)
        torch.testing.assert_close(again, plain[:3], rtol=1e-2, atol=1e-2)  # kept as float16
        torch.testing.assert_close(again, kept)
    assert calls.count == 2, "no backbone pass for kept region features"
    model.probs(x[:3])
    assert calls.count == 2, "the pooled features came with them"
