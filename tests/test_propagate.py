import dataclasses

import pytest
import torch

from ml_backend.config import ProjectSettings
from ml_backend.feedback.propagate import propagate, recurring_tokens
from ml_backend.project import make_context, new_model
from ml_backend.training.fit import fit_set
from ml_backend.training.sets import TrainingSet
from ml_backend.training.strategies import strategies_for
from ml_backend.training.strategies.counterexamples import donor_pool, donor_rows, example_keys


def corner_masks(n: int, marked: list[int], size: int = 8) -> torch.Tensor:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in marked:
        masks[i, :2, :2] = True
    return masks


@pytest.mark.parametrize("min_support, marked", [(0, [0, 1, 2]), (2, [0]), (3, [0, 1])])
def test_nothing_propagates_when_off_or_without_enough_corrections(min_support, marked):
    ids = torch.tensor([[5, 7, 0], [5, 9, 0], [5, 3, 4], [6, 5, 0]])
    irrelevant = torch.zeros_like(ids, dtype=torch.bool)
    for i in marked:
        irrelevant[i, 0] = True  # token 5
    out = propagate(ids, irrelevant, torch.zeros_like(irrelevant), min_support)
    assert torch.equal(out.irrelevant, irrelevant) and not out.added.any()


def test_a_relevant_token_is_never_overridden():
    ids = torch.tensor([[5, 7], [5, 9], [5, 3], [3, 5]])
    irrelevant = torch.zeros_like(ids, dtype=torch.bool)
    irrelevant[0, 0] = irrelevant[1, 0] = True
    relevant = torch.zeros_like(irrelevant)
    relevant[3, 1] = True
    out = propagate(ids, irrelevant, relevant, min_support=2)
    assert out.irrelevant[2].tolist() == [True, False] and not out.irrelevant[3].any()
    assert out.added.tolist() == [False, False, True, False]


def test_text_propagates_tokens_not_positions():
    ids = torch.tensor([[5, 7, 9, 0], [7, 5, 5, 0], [3, 5, 4, 0], [2, 3, 4, 6]])
    irrelevant = torch.zeros_like(ids, dtype=torch.bool)
    irrelevant[0, 0] = True  # token 5 in document 0
    irrelevant[1, 1] = irrelevant[1, 2] = True  # token 5 twice in document 1
    irrelevant[0, 3] = True  # padding is never a token
    irrelevant[1, 0] = True  # token 7 once: not enough support
    assert recurring_tokens(ids, irrelevant, 2).tolist() == [5]
    out = propagate(ids, irrelevant, torch.zeros_like(irrelevant), min_support=2)
    assert out.irrelevant[2].tolist() == [False, True, False, False]
    assert out.added.tolist() == [False, False, True, False]
    assert recurring_tokens(ids, irrelevant, 3).numel() == 0  # document 1 counts once


def test_counterexamples_are_c_per_correction_and_one_per_propagated_task(image_config):
    settings = dataclasses.replace(ProjectSettings(), strategies=("rrr", "counterexamples"), counterexamples=3,
                                   image_size=16).validate()
    ctx = make_context("p", image_config, settings)
    model = new_model(ctx)
    n = 6
    irrelevant = corner_masks(n, [0, 1], size=16)
    data = TrainingSet(torch.rand(n, 3, 16, 16), torch.arange(n) % 2, irrelevant, torch.zeros_like(irrelevant))
    out, info = fit_set(data, model, settings, strategies_for(settings), seed=0)
    assert info == {"propagated_to": 4, "generalised_by": ["position"], "counterexamples": 2 * 3 + 4}
    assert len(out) == n + 10 and out.has_irrelevant[:n].all()
    assert out.propagated.tolist() == [False] * 2 + [True] * 4 + [False] * 10
    copies = out.x[n:]
    # each copy keeps its task's pixels outside the corner and changes the corner
    assert torch.equal(copies[6:, :, 2:, :], data.x[2:, :, 2:, :])
    assert not torch.equal(copies[6:, :, :2, :2], data.x[2:, :, :2, :2])
    off = dataclasses.replace(settings, propagate_min_support=0)
    out, info = fit_set(data, model, off, strategies_for(off), seed=0)
    assert info["propagated_to"] == 0 and len(out) == n + 6


def test_substitute_donors_are_other_tasks_drawn_without_copying_the_set():
    x = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    keys = example_keys(x)
    drawn = set()
    for i in range(40):
        drawn_now = x[donor_rows(i, keys, k=3)]
        values = drawn_now[:, 0, 0, 0].tolist()
        assert len(set(values)) == 3 and float(i) not in values  # three other tasks
        assert torch.equal(drawn_now, x[donor_rows(i, keys, k=3)])  # the same in every version
        drawn |= set(values)
    assert len(drawn) > 30  # spread over the tasks, not always the same few
    assert donor_rows(0, keys[:1]) is None


def test_a_large_sets_donors_come_from_a_bounded_stable_pool():
    """With propagation every example gets a copy: each draws from a pool of bounded size, which a
    new task joins or leaves only now and then, not from the whole set."""
    x = torch.arange(3000, dtype=torch.float32).view(3000, 1, 1, 1).expand(3000, 1, 2, 2).contiguous()
    keys = example_keys(x)
    pool = donor_pool(keys, size=256)
    assert len(set(pool.tolist())) == 256
    grown = donor_pool(example_keys(torch.cat([x, x[:1] + 5000])), size=256)
    assert len(set(pool.tolist()) & set(grown.tolist())) >= 255
    for i in (0, int(pool[0]), 2999):
        drawn = x[donor_rows(i, keys, pool, k=16)][:, 0, 0, 0].long().tolist()
        assert len(set(drawn)) == 16 and i not in drawn and set(drawn) <= set(pool.tolist())


def test_a_marked_word_reaches_other_documents_in_any_case_or_spelling(text_config):
    from ml_backend.data.text import tokenize

    settings = dataclasses.replace(ProjectSettings(), strategies=("counterexamples",)).validate()
    model = new_model(make_context("p", text_config, settings))
    texts = ["great blender zorbly", "Zorbly! it broke", "works fine, ZOR-BLY", "nothing to see here"]
    encoded = [model.encode_text(t) for t in texts]
    x = torch.stack([ids for ids, _ in encoded])
    irrelevant = torch.zeros_like(x, dtype=torch.bool)
    irrelevant[0, 2] = True  # "zorbly" in the first review
    docs = [(t, tokens) for t, (_, tokens) in zip(texts, encoded)]
    data = TrainingSet(x, torch.tensor([0, 1, 0, 1]), irrelevant, torch.zeros_like(irrelevant))
    out, info = fit_set(data, model, settings, strategies_for(settings), seed=0, docs=docs)
    marked = [[t.text for t, m in zip(tokenize(text), out.irrelevant[i]) if m] for i, text in enumerate(texts)]
    assert marked == [["zorbly"], ["Zorbly"], ["ZOR", "-", "BLY"], []]
    assert info["propagated_to"] == 2 and info["generalised_by"] == ["text"]
