"""Evidence clusters (``ml_backend.discovery``): descriptors, clustering, the shortcut ranking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_backend.discovery import Descriptors, EvidenceDescriber, StrategyClustering
from ml_backend.discovery.evidence import CONTENT_DIMS, FIT_ROWS, PLACE_CELLS


def synthetic(n_per_class: int, shortcut_classes: tuple[int, ...], seed: int = 0, classes: int = 6) -> Descriptors:
    """Tasks whose evidence content varies a lot (an object's) except in ``shortcut_classes``,
    where every task's evidence lies on the same content (a swatch), each class its own shade."""
    rng = np.random.default_rng(seed)
    place, content, predicted = [], [], []
    swatch = rng.standard_normal(CONTENT_DIMS)
    for cls in range(classes):
        centre = rng.standard_normal(CONTENT_DIMS)
        for _ in range(n_per_class):
            if cls in shortcut_classes:
                c = swatch + 0.15 * rng.standard_normal(CONTENT_DIMS) + 0.1 * cls
                p = np.zeros(PLACE_CELLS ** 2)
                p[0] = 1.0
                p += 0.05 * rng.random(PLACE_CELLS ** 2)
            else:
                c = centre + 1.5 * rng.standard_normal(CONTENT_DIMS)
                p = rng.random(PLACE_CELLS ** 2)
            place.append(np.sqrt(p / p.sum()))
            content.append(c / np.linalg.norm(c))
            predicted.append(cls)
    n = len(predicted)
    return Descriptors(np.array(place, np.float32), np.array(content, np.float32), np.zeros((n, 4), np.float16),
                       np.array(predicted))


def test_repeated_evidence_of_two_classes_is_one_suspicious_cluster_ranked_first():
    d = synthetic(120, shortcut_classes=(1, 4))
    clusters = StrategyClustering().fit(d)
    top = clusters[0]
    assert top.suspicious and set(top.classes) == {1, 4}
    assert len(top.rows) == 240 and set(d.predicted[top.rows]) == {1, 4}
    assert not any(c.suspicious for c in clusters[1:])
    assert sorted(np.concatenate([c.rows for c in clusters]).tolist()) == list(range(len(d)))  # a partition
    assert top.repetition > max(c.repetition for c in clusters[1:])
    assert len(top.representatives) == 12 and set(top.representatives) <= set(top.rows)


def test_evidence_that_varies_everywhere_makes_no_suspicious_cluster():
    clusters = StrategyClustering().fit(synthetic(120, shortcut_classes=()))
    assert clusters and not any(c.suspicious for c in clusters)


def test_each_class_version_of_a_shortcut_joins_the_top_cluster_even_when_their_contents_differ():
    """A pattern per class (each class its own grating): the contents of the classes' shortcuts
    have nothing in common, yet each repeats across its class, and they are one cluster."""
    rng = np.random.default_rng(1)
    parts = [synthetic(100, shortcut_classes=(0,), seed=s, classes=1) for s in range(3)]
    for cls, d in enumerate(parts):
        d.content[:] = rng.standard_normal(CONTENT_DIMS) + 0.1 * rng.standard_normal((100, CONTENT_DIMS))
        d.content /= np.linalg.norm(d.content, axis=1, keepdims=True)
        d.predicted[:] = cls
    objects = synthetic(100, shortcut_classes=(), seed=5, classes=4)
    objects.predicted += 3
    d = Descriptors(*(np.concatenate([getattr(p, f) for p in parts + [objects]])
                      for f in ("place", "content", "maps", "predicted")))
    top = StrategyClustering().fit(d)[0]
    assert top.suspicious and top.repeating and sorted(top.rows.tolist()) == list(range(300))


def test_a_few_alike_objects_in_a_class_are_not_a_shortcut():
    d = synthetic(120, shortcut_classes=())
    twins = np.flatnonzero(d.predicted == 2)[:30]  # a quarter of one class: the same plain digit
    d.content[twins] = d.content[twins[0]] + 0.01 * np.random.default_rng(0).standard_normal((30, CONTENT_DIMS))
    d.content[twins] /= np.linalg.norm(d.content[twins], axis=1, keepdims=True)
    assert not any(c.repeating for c in StrategyClustering().fit(d))


def test_a_cluster_mark_grows_over_the_rest_of_what_it_lies_on_in_its_own_image():
    from ml_backend.discovery.describe import grown_marks

    class NoFeatures:
        def device(self) -> torch.device:
            return torch.device("cpu")

        def region_features(self, x: torch.Tensor, keep: bool = False) -> None:
            return None

    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0  # the object
    x[:, 0, :3, :3] = x[:, 0, -3:, -3:] = 0.5  # the same swatch in two corners
    marks = np.zeros((2, 16, 16), bool)
    marks[:, 0, 0] = True  # the served evidence: one pixel of one swatch
    grown = grown_marks(NoFeatures(), x, marks)
    assert grown[:, :3, :3].all() and grown[:, -3:, -3:].all() and not grown[:, 4:12, 4:12].any()
    assert np.array_equal(grown_marks(NoFeatures(), x, np.zeros_like(marks)), np.zeros_like(marks))


def test_alike_features_grow_a_mark_over_a_shortcut_but_not_over_the_whole_picture():
    from ml_backend.discovery.describe import grown_marks

    class Features:
        """Region features on a 4x4 grid: ``alike`` cells share the marked cell's vector."""

        def __init__(self, alike: torch.Tensor) -> None:
            self.alike = alike

        def device(self) -> torch.device:
            return torch.device("cpu")

        def region_features(self, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
            f = torch.randn(len(x), 8, 4, 4, generator=torch.Generator().manual_seed(0))
            f[:, :, self.alike] = torch.arange(8.0)[None, :, None] * 3
            return f

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # no two pixels alike in colour
    marks = np.zeros((3, 16, 16), bool)
    marks[:, 0, 0] = True
    corners = torch.zeros(4, 4, dtype=torch.bool)
    corners[0, 0] = corners[3, 3] = True  # 2 cells of 16: a shortcut's share of the picture
    grown = grown_marks(Features(corners), x, marks)
    assert grown[:, :4, :4].all() and grown[:, 12:, 12:].all() and grown.mean() == pytest.approx(2 / 16)
    everywhere = torch.ones(4, 4, dtype=torch.bool)
    assert grown_marks(Features(everywhere), x, marks).sum() == marks.sum()  # the picture itself: left alone


def test_the_cost_is_bounded_by_the_landmarks_for_many_tasks():
    d = synthetic(8000, shortcut_classes=(2,))  # 48,000 tasks
    clusters = StrategyClustering(landmarks=300).fit(d)
    assert sum(len(c.rows) for c in clusters) == len(d)
    assert clusters[0].suspicious and set(clusters[0].classes) == {2}


def test_the_describer_streams_batches_and_projects_wide_features():
    rng = torch.Generator().manual_seed(0)
    describer = EvidenceDescriber()
    total = 0
    for size in (100, 300, 250, 7):  # the statistics are fitted once FIT_ROWS tasks arrived
        relevance = torch.rand(size, 32, 32, generator=rng)
        features = torch.randn(size, 2048, 4, 4, generator=rng)
        describer.add(relevance, features, np.arange(size) % 3)
        total += size
    d = describer.result()
    assert total > FIT_ROWS and len(d) == total == len(describer)
    assert d.content.shape == (total, CONTENT_DIMS) and np.allclose(np.linalg.norm(d.content, axis=1), 1, atol=1e-4)
    assert d.place.shape == (total, PLACE_CELLS ** 2) and np.allclose((d.place ** 2).sum(axis=1), 1, atol=1e-4)
    assert d.maps.shape == (total, 256) and d.predicted.tolist()[:5] == [0, 1, 2, 0, 1]


def test_texts_are_described_per_token_and_kinds_without_features_by_place_alone():
    describer = EvidenceDescriber()
    relevance = torch.zeros(5, 40)
    relevance[:, 3] = 1.0  # evidence on token 3 in every document
    describer.add(relevance, torch.randn(5, 40, 16), np.zeros(5))
    d = describer.result()
    assert d.content.shape == (5, 16) and d.place.shape == (5, 16)
    bare = EvidenceDescriber()
    bare.add(torch.rand(4, 8, 8), None, np.zeros(4))
    assert bare.result().content.shape == (4, 0)
    with pytest.raises(ValueError, match="region features are missing"):
        describer.add(relevance, None, np.zeros(5))


def test_on_digits_the_top_suspicious_cluster_is_the_decoy_and_clean_evidence_is_not_suspicious():
    """The suite's four-corner decoy: the CNN trained without feedback reads two classes off the
    corners. With no correction at all, the top suspicious cluster is those tasks; the same
    model family on the digits with one random corner (no gap) shows no suspicious cluster."""
    from benchmarks.xil.data import PROBLEMS
    from benchmarks.xil.discovery import _clusters, _truth
    from benchmarks.xil.loop import Backend, prepare_problem, train_base
    from benchmarks.xil.suite import METHODS, settings_for

    torch.set_num_threads(1)
    found = {}
    for problem in ("decoy_digits_4", "decoy_digits"):
        data = PROBLEMS[problem](0)
        settings = settings_for(data.image_size, METHODS["default"])
        backend = Backend(prepare_problem(data, settings), settings, torch.device("cpu"))
        model, _ = train_base(backend, clean=False, epochs=20, seed=0)
        clusters, _, _ = _clusters(model, backend, 0)
        found[problem] = (clusters, _truth(model, backend))
    clusters, truth = found["decoy_digits_4"]
    assert truth.sum() >= 100  # the shortcut is there to find
    top = clusters[0]
    assert top.suspicious
    hits = truth[top.rows].sum()
    assert hits / len(top.rows) >= 0.85 and hits / truth.sum() >= 0.75
    clusters, truth = found["decoy_digits"]
    assert truth.sum() < 60 and not any(c.suspicious for c in clusters)


def _png(uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_an_image_thumbnail_is_the_rescaled_input_at_most_64_px_with_the_evidence_in_red():
    from ml_backend.discovery.thumbnails import image_thumbnail

    x = torch.randn(3, 224, 160) * 0.2 - 1.5  # a backbone's normalised input: values far from [0, 1]
    relevance = np.zeros((224, 160), dtype=np.float32)
    relevance[:56, :40] = 1.0  # all the evidence in the top-left corner
    pixels = _png(image_thumbnail(x, relevance, keep_mass=0.95))
    assert pixels.shape == (64, 46, 3) and pixels.max() > 200 and pixels.min() < 60  # stretched to [0, 255]
    reddish = (pixels[..., 0].astype(int) - pixels[..., 1]) > 60
    assert reddish[2:14, 2:9].mean() > 0.8 and reddish[24:, 20:].mean() < 0.05
    grey = _png(image_thumbnail(torch.rand(1, 32, 32), np.zeros((32, 32)), 0.2))  # one channel, no evidence
    assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 1]).all()


def test_a_text_thumbnail_is_a_window_of_tokens_around_the_evidence():
    from ml_backend.data.text import tokenize
    from ml_backend.discovery.thumbnails import TEXT_WINDOW, thumbnail

    tokens = tokenize(" ".join(f"w{i}" for i in range(200)))
    relevance = np.zeros(256, dtype=np.float32)
    relevance[[120, 121]] = 1.0
    shown = thumbnail(7, torch.zeros(256, dtype=torch.long), relevance, 0.9, tokens)
    assert shown["task"] == 7 and len(shown["tokens"]) == TEXT_WINDOW
    assert [t for t, hit in shown["tokens"] if hit] == ["w120", "w121"]
    assert shown["before"] + len(shown["tokens"]) + shown["after"] == 200 and 0 < shown["before"] < 120
    short = thumbnail(8, torch.zeros(256, dtype=torch.long), relevance[:5], 0.9, tokens[:3])
    assert short["tokens"] == [["w0", False], ["w1", False], ["w2", False]] and short["after"] == 0
