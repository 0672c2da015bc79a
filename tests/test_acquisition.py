"""Acquisition functions on hand-built probability arrays with known answers; the queue's order."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml_backend.config import ProjectSettings, Settings
from ml_backend.data.fetch import Fetcher
from ml_backend.data.text import token_id
from ml_backend.models.common import TextKind
from ml_backend.project import make_context
from ml_backend.ranking.acquisition import (
    ACQUISITIONS, ALEX, BALD, Entropy, LeastConfidence, Margin, Random, get_acquisition, ls_score,
    ls_scores, rank,
)
from ml_backend.ranking.evidence_share import evidence_groups, rank_by_class_and_evidence
from ml_backend.ranking.score import rank_tasks
from ml_backend.store import LoadedModel
from tests.support.live import ls_task

# row 0 confident, row 1 uniform (most uncertain), row 2 two-way tie, row 3 fairly confident
P = np.array([
    [0.90, 0.05, 0.05],
    [1 / 3, 1 / 3, 1 / 3],
    [0.50, 0.50, 0.00],
    [0.70, 0.20, 0.10],
])


def test_registry_names_and_errors():
    assert set(ACQUISITIONS.names()) == {"random", "least_confidence", "margin", "entropy", "bald", "alex"}
    for name in ACQUISITIONS.names():
        assert isinstance(get_acquisition(name), ACQUISITIONS.get(name))
        assert get_acquisition(name).name == name
    assert get_acquisition("ALEX", b=2).b == 2
    with pytest.raises(ValueError, match="unknown acquisition"):
        get_acquisition("nope")


def test_least_confidence_exact():
    np.testing.assert_allclose(LeastConfidence().scores(P), [0.1, 2 / 3, 0.5, 0.3])
    assert rank(LeastConfidence().scores(P))[0] == 1


def test_margin_exact():
    # 1 - (p1 - p2): uniform and the two-way tie both have zero gap
    np.testing.assert_allclose(Margin().scores(P), [1 - 0.85, 1.0, 1.0, 1 - 0.5])
    assert list(rank(Margin().scores(P))) == [1, 2, 3, 0]
    assert np.all(Margin().scores(np.ones((3, 1))) == 0)  # one class: nothing to decide


def test_entropy_exact():
    expected = [
        -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05)),
        math.log(3),
        math.log(2),
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
    ]
    s = Entropy().scores(P)
    np.testing.assert_allclose(s, expected)
    assert np.all(np.isfinite(s))  # 0 log 0 = 0
    assert list(rank(s)) == [1, 3, 2, 0]  # H(.7, .2, .1) = 0.80 > log 2 = 0.69


def test_uniform_row_is_most_uncertain_for_all_uncertainty_functions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5) * 0.5, size=20)
    p[7] = 0.2
    for acq in (LeastConfidence(), Margin(), Entropy()):
        assert rank(acq.scores(p))[0] == 7, acq.name


def test_mean_of_mc_samples_is_used_when_only_mc_given():
    mc = np.stack([P, P[::-1]])
    for acq in (LeastConfidence(), Margin(), Entropy()):
        np.testing.assert_allclose(acq.scores(mc_probs=mc), acq.scores(mc.mean(0)))


def test_numerically_safe_on_bad_rows():
    bad = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [np.nan, 1.0, 0.0], [2.0, 2.0, 0.0]])
    for name in ("least_confidence", "margin", "entropy"):
        s = get_acquisition(name).scores(bad)
        assert np.all(np.isfinite(s)), name
    # an all-zero row is treated as uniform; unnormalised rows are renormalised
    np.testing.assert_allclose(Entropy().scores(bad), [math.log(3), 0.0, 0.0, math.log(2)])


def test_bald_zero_when_samples_agree_high_when_confident_samples_disagree():
    agree = np.stack([P] * 5)
    np.testing.assert_allclose(BALD().scores(mc_probs=agree), 0.0, atol=1e-12)

    # two tasks, two classes, T = 2: task 0's samples are confident but disagree,
    # task 1's samples are both uniform (aleatoric, not epistemic)
    mc = np.array([
        [[1.0, 0.0], [0.5, 0.5]],
        [[0.0, 1.0], [0.5, 0.5]],
    ])
    s = BALD().scores(mc_probs=mc)
    np.testing.assert_allclose(s, [math.log(2), 0.0], atol=1e-9)
    # entropy cannot tell them apart, BALD can
    np.testing.assert_allclose(Entropy().scores(mc_probs=mc), [math.log(2), math.log(2)])


def test_bald_exact_small_case():
    # one task, T = 2: p1 = (0.8, 0.2), p2 = (0.4, 0.6); mean (0.6, 0.4)
    mc = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])

    def h(*q):
        return -sum(x * math.log(x) for x in q)

    expected = h(0.6, 0.4) - (h(0.8, 0.2) + h(0.4, 0.6)) / 2
    np.testing.assert_allclose(BALD().scores(mc_probs=mc), [expected])
    assert BALD().scores(mc)[0] == pytest.approx(expected)  # (T, N, K) passed positionally


def test_bald_needs_mc():
    with pytest.raises(ValueError):
        BALD().scores(P)


def test_random_is_seeded():
    a = Random(seed=3).scores(P)
    b = Random(seed=3).scores(P)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4,)
    assert not np.array_equal(a, Random(seed=4).scores(P))


def test_rank_ties_are_stable_by_index_and_nan_last():
    s = np.array([0.5, 1.0, 0.5, 1.0, np.nan, 0.2])
    assert list(rank(s)) == [1, 3, 0, 2, 5, 4]
    assert list(rank(np.zeros(4))) == [0, 1, 2, 3]


def test_ls_score_monotonic_lowest_for_top_task():
    n = 5
    values = [ls_score(i, n) for i in range(n)]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(a < b for a, b in zip(values, values[1:]))
    assert ls_score(0, 1) == 0.0
    with pytest.raises(ValueError):
        ls_score(5, 5)


def test_ls_scores_in_task_order_and_distinct_on_ties():
    s = np.array([0.1, 0.9, 0.5, 0.9])
    ls = ls_scores(s)
    # rank: 1, 3, 2, 0 -> positions 3, 0, 2, 1 -> / 3
    np.testing.assert_allclose(ls, [1.0, 0.0, 2 / 3, 1 / 3])
    assert int(np.argmin(ls)) == int(rank(s)[0])
    assert len(set(ls.tolist())) == len(ls)  # deterministic even for tied acquisition values
    # Label Studio orders ascending by score: that reproduces our ranking
    np.testing.assert_array_equal(np.argsort(ls, kind="stable"), rank(s))


def test_rank_with_groups_interleaves_them_best_first():
    # class 0 holds the three most uncertain tasks; interleaved (max_share 0), one task of each class first
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.5])
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert list(rank(s)[:2]) == [0, 1]
    assert list(rank(s, groups)) == [0, 3, 1, 5, 2, 4]
    assert list(rank(s, np.zeros(6))) == list(rank(s))  # one group: the plain order
    three = rank(s, np.array([0, 0, 0, 1, 1, 2]))
    assert set(three[:3].tolist()) == {0, 3, 5} and list(three[:3]) == [0, 3, 5]
    ls = ls_scores(s, groups)
    np.testing.assert_array_equal(np.argsort(ls, kind="stable"), rank(s, groups))
    with pytest.raises(ValueError, match="one value per task"):
        rank(s, np.zeros(5))


def test_rank_caps_a_class_share_of_every_prefix():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    groups = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # the six most uncertain are class 0
    assert list(rank(s, groups, max_share=1.0)) == list(rank(s))
    half = list(rank(s, groups, max_share=0.5))
    assert half == [0, 6, 1, 7, 2, 3, 4, 5]  # class 1 runs out after two: the rest by score
    for n in range(1, 5):
        assert sum(groups[half[:n]] == 0) <= max(1, -(-n // 2))
    # ten classes with spread-out uncertainty: a cap of half changes nothing but the first two
    rng = np.random.default_rng(0)
    many, classes = rng.random(200), rng.integers(0, 10, 200)
    plain, capped = rank(many), rank(many, classes, 0.5)
    assert classes[capped[0]] != classes[capped[1]]
    assert sorted(capped.tolist()) == list(range(200)) and np.mean(plain[:20] == capped[:20]) > 0.5


def _capped_reference(scores: np.ndarray, groups: np.ndarray, max_share: float) -> list[int]:
    """The cap's definition, place by place: the best task of a group under the cap, else of the
    least represented group (a scan of every group: slow, plain)."""
    order = [int(i) for i in np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")]
    left = {g: [i for i in order if groups[i] == g] for g in np.unique(groups)}
    out: list[int] = []
    while len(out) < len(order):
        cap = max(1, math.ceil(max_share * (len(out) + 1) - 1e-9))
        counts = {g: sum(groups[i] == g for i in out) for g in left}
        open_ = [g for g in left if left[g] and counts[g] < cap]
        pool = open_ or [g for g in left if left[g]]
        best = min(pool, key=lambda g: (0 if open_ else counts[g], order.index(left[g][0])))
        out.append(left[best].pop(0))
    return out


def test_rank_with_a_cap_follows_its_definition_on_random_queues():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        scores = np.round(rng.random(n), 1)  # ties
        scores[rng.random(n) < 0.1] = np.nan
        groups = rng.integers(0, k, n)
        share = float(rng.choice([0.0, 0.3, 0.5, 0.8]))
        assert rank(scores, groups, share).tolist() == _capped_reference(scores, groups, share)


# ---------------------------------------------------------------------------- each evidence group's share capped


def _blobs(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float = 0.05) -> np.ndarray:
    return np.concatenate([c + noise * rng.standard_normal((n, centres.shape[1])) for c in centres])


def test_evidence_groups_are_the_modes_of_each_class_and_distinct_across_classes():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    content = np.concatenate([_blobs(rng, centres[:3], 60), _blobs(rng, centres[3:], 80)])
    truth = np.repeat([0, 1, 2, 3], [60, 60, 60, 80])
    predicted = np.repeat([0, 1], [180, 80])
    groups = evidence_groups(content, predicted)
    for mode in range(4):  # each mode one group, its own
        assert len(set(groups[truth == mode].tolist())) == 1
    assert len(set(groups.tolist())) == 4
    one = evidence_groups(_blobs(rng, centres[:1], 100), np.zeros(100, int))
    assert set(one.tolist()) == {0}
    with pytest.raises(ValueError, match="one evidence vector per task"):
        evidence_groups(content[:5], predicted)


def test_an_evidence_group_holds_at_most_its_share_of_each_class_queue():
    # class 0: group 10 holds its four most uncertain tasks, group 11 the next two; class 1: one group
    s = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4])
    classes = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    groups = np.array([10, 10, 10, 10, 11, 11, 12, 12, 12])
    assert list(rank_by_class_and_evidence(s, None, 1.0, groups, 1.0)) == list(rank(s))
    assert list(rank_by_class_and_evidence(s, classes, 0.5, groups, 1.0)) == list(rank(s, classes, 0.5))
    one_class = list(rank_by_class_and_evidence(s, None, 1.0, groups, 0.5))
    assert one_class == [0, 4, 1, 5, 2, 6, 3, 7, 8]
    both = list(rank_by_class_and_evidence(s, classes, 1.0, groups, 0.5))
    assert both == [0, 4, 1, 5, 2, 3, 6, 7, 8]  # class 0's k-th place keeps its k-th best score
    assert list(rank_by_class_and_evidence(s, classes, 0.5, groups, 0.5))[:4] == [0, 6, 4, 7]
    rng = np.random.default_rng(1)
    for _ in range(100):  # every prefix of every class's queue within the cap; every task once
        n = int(rng.integers(2, 60))
        s, classes = rng.random(n), rng.integers(0, 3, n)
        groups = classes * 10 + rng.integers(0, 4, n)
        order = rank_by_class_and_evidence(s, classes, 0.5, groups, 0.5)
        assert sorted(order.tolist()) == list(range(n))
        for c in np.unique(classes):
            queue = groups[[i for i in order if classes[i] == c]].tolist()
            for m in range(len(queue)):  # over the cap only when no group under it has tasks left
                cap = max(1, math.ceil(0.5 * (m + 1)))
                if queue[:m].count(queue[m]) >= cap:
                    assert all(queue[:m].count(g) >= cap for g in queue[m:])


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_the_ranking_job_spreads_a_class_queue_over_what_its_evidence_lies_on(tmp_path, text_config, share):
    """Twelve tasks hold word a (the first class, most uncertain), twelve word b (the same class, a
    little less uncertain): the plain queue serves every a first; with ``max_evidence_share`` 0.5
    the class's queue alternates a and b, each one's most uncertain first."""
    ctx = make_context("2", text_config, ProjectSettings(acquisition="entropy", max_class_share=1.0,
                                                         max_evidence_share=share))
    model = _WordScoresKind(_WordScores())
    model.network.eval()
    texts = [f"a w{i}" for i in range(12)] + [f"b w{i}" for i in range(12)]
    tasks = [ls_task(i + 1, {"text": text}) for i, text in enumerate(texts)]
    ids, values, scores = rank_tasks(ctx, LoadedModel("p2-v1", model, ctx.schema.classes), iter(tasks),
                                     Fetcher(Settings()), tmp_path / "spool.jsonl")
    queue = [texts[ids[i] - 1][0] for i in np.argsort(scores, kind="stable")]
    assert queue[:4] == (["a", "b", "a", "b"] if share < 1 else ["a"] * 4), queue


# ---------------------------------------------------------------------------- ALEX


def _alex_case():
    """6 tasks, K = 2. Entropy order: 0, 1, 2, 3, 4, 5 (0 most uncertain)."""
    p1 = np.array([0.5, 0.55, 0.6, 0.7, 0.8, 0.95])
    probs = np.stack([p1, 1 - p1], axis=1)
    labeled = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])  # mass on the left half
    expl = np.array([
        [1.0, 1.0, 0.0, 0.0],  # like the labeled ones
        [1.0, 1.0, 0.1, 0.0],
        [0.0, 0.0, 1.0, 1.0],  # mass on the right half: diverges most
        [0.0, 0.0, 1.0, 1.0],  # diverges too, but not a candidate for b = 1 (k = 3)
        [0.0, 0.0, 1.0, 1.0],
        [1.0, 1.0, 0.0, 0.0],
    ])
    return probs, expl, labeled


def test_alex_picks_candidate_whose_explanation_differs():
    probs, expl, labeled = _alex_case()
    alex = ALEX(b=1, k_factor=3)
    assert list(alex.candidates(probs)) == [0, 1, 2]
    order = alex.rank(probs, explanations=expl, labeled_explanations=labeled)
    # top b by divergence, then the other candidates by uncertainty, then the rest by uncertainty
    assert list(order) == [2, 0, 1, 3, 4, 5]


def test_alex_top_b_ordered_by_divergence():
    probs, expl, labeled = _alex_case()
    expl = expl.copy()
    expl[1] = [0.0, 1.0, 1.0, 1.0]  # diverges, less than task 2
    expl[3] = [1.0, 1.0, 0.0, 0.0]  # like the labeled ones
    alex = ALEX(b=2, k_factor=2)  # candidates 0, 1, 2, 3
    d = alex.divergence(expl, labeled)
    assert d[2] > d[1] > d[0] and d[1] > d[3]
    order = alex.rank(probs, explanations=expl, labeled_explanations=labeled)
    assert list(order) == [2, 1, 0, 3, 4, 5]


def test_alex_without_labeled_explanations_equals_entropy_order():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=30)
    expl = rng.random((30, 16))
    ent = rank(Entropy().scores(probs))
    for lab in (None, np.zeros((0, 16))):
        order = ALEX(b=3).rank(probs, explanations=expl, labeled_explanations=lab)
        np.testing.assert_array_equal(order, ent)
    np.testing.assert_array_equal(ALEX(b=3).rank(probs), ent)


def test_alex_divergence_matches_mean_kl_and_is_safe():
    rng = np.random.default_rng(2)
    e = rng.random((3, 5))
    lab = rng.random((4, 5))
    lab[0, 2] = 0.0  # a zero in a labeled explanation must not give inf
    d = ALEX().divergence(e, lab)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    p = e / e.sum(1, keepdims=True)
    q = np.clip(lab / lab.sum(1, keepdims=True), 1e-12, 1)
    brute = np.array([np.mean([np.sum(pi * np.log(pi / qj)) for qj in q]) for pi in p])
    np.testing.assert_allclose(d, brute, rtol=1e-9)
    # identical explanations diverge by zero; all-zero maps are uniform, not NaN
    np.testing.assert_allclose(ALEX().divergence(lab[1:2], lab[1:2]), [0.0], atol=1e-12)
    assert np.isfinite(ALEX().divergence(np.zeros((1, 5)), np.zeros((2, 5)))).all()


def test_alex_reads_only_candidate_rows_and_accepts_images():
    probs, expl, labeled = _alex_case()
    masked = expl.copy()
    masked[3:] = 0.0  # non-candidates need not be computed
    a = ALEX(b=1).rank(probs, explanations=masked, labeled_explanations=labeled)
    b = ALEX(b=1).rank(probs, explanations=expl, labeled_explanations=labeled)
    np.testing.assert_array_equal(a, b)
    # (N, H, W) maps are flattened
    img = ALEX(b=1).rank(probs, explanations=expl.reshape(6, 2, 2),
                         labeled_explanations=labeled.reshape(2, 2, 2))
    np.testing.assert_array_equal(img, b)


def test_alex_scores_give_distinct_ls_scores_and_candidate_set_clipped():
    probs, expl, labeled = _alex_case()
    alex = ALEX(b=5, k_factor=3)  # k = 15 > N = 6
    s = alex.scores(probs, explanations=expl, labeled_explanations=labeled)
    assert len(set(s.tolist())) == 6
    ls = ls_scores(s)
    assert ls[rank(s)[0]] == 0.0
    with pytest.raises(ValueError):
        alex.scores(probs, explanations=expl[:3], labeled_explanations=labeled)
    with pytest.raises(ValueError):
        ALEX(uncertainty="bald")


# ---------------------------------------------------------------------------- the queue, each class's share capped


class _WordScores(torch.nn.Module):
    """Text: logit of the first class = the sum of its words' weights (a known margin per task)."""

    WEIGHTS = {"a": 0.1, "b": 0.2, "c": 0.3, "d": -0.4, "e": -2.0, "f": 2.0}

    def __init__(self, n_buckets: int = 1000, max_len: int = 16) -> None:
        super().__init__()
        self.config = {"n_classes": 2, "max_len": max_len, "n_buckets": n_buckets}
        self.embedding = torch.nn.Embedding(n_buckets, 1)
        with torch.no_grad():
            self.embedding.weight.zero_()
            for word, weight in self.WEIGHTS.items():
                self.embedding.weight[token_id(word, n_buckets)] = weight

    def forward_embedded(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = (emb[..., 0] * mask).sum(dim=1)
        return torch.stack([b, torch.zeros_like(b)], dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embedding(ids), ids != 0)

    def token_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Each word's own fixed vector: what the evidence groups compare."""
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(self.config["n_buckets"], 4, generator=generator)
        return table[ids]


class _WordScoresKind(TextKind):  # no name: not registered
    network_class = _WordScores


@pytest.mark.parametrize("balance", [False, True])
def test_the_ranking_job_balances_the_queue_over_predicted_classes(tmp_path, text_config, balance):
    """The three most uncertain tasks are predicted as the first class: the plain queue starts with
    them; with ``max_class_share`` 0.5 it alternates, each class's most uncertain first."""
    ctx = make_context("2", text_config, ProjectSettings(acquisition="entropy", max_class_share=0.5 if balance else 1.0))
    model = _WordScoresKind(_WordScores())
    model.network.eval()
    words = ["a", "b", "c", "d", "e", "f"]  # task i + 1 holds word i
    tasks = [ls_task(i + 1, {"text": word}) for i, word in enumerate(words)]
    ids, values, scores = rank_tasks(ctx, LoadedModel("p2-v1", model, ctx.schema.classes), iter(tasks),
                                     Fetcher(Settings()), tmp_path / "spool.jsonl")
    queue = [ids[i] for i in np.argsort(scores, kind="stable")]  # what Label Studio serves first
    # margins: a 0.1, b 0.2, c 0.3 (first class), d 0.4 (second), f 2, e 2 -> entropy order a b c d (e f)
    assert queue[:4] == ([1, 4, 2, 5] if balance else [1, 2, 3, 4]), queue
