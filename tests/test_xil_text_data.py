"""The text confounder problems of the XIL benchmark (benchmarks/xil/text_data.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.xil.text_data import PHRASE_WORDS, PHRASES, SPLITS, TEXT_PROBLEMS, text_phrase, text_variants
from ml_backend.data.text import tokenize
from ml_backend.feedback.text_concepts import match_marked_text, normalize

KEYS = ("zorbly", "quennic")


@pytest.fixture(scope="module")
def problems():
    return {"text_variants": text_variants(0, n_train=200, n_test=100),
            "text_phrase": text_phrase(0, n_train=200, n_test=100)}


def spurious_class(problem_name: str, text: str, spans) -> int:
    """Which class's spurious form the span holds."""
    (start, end), = spans
    form = normalize(text[start:end])
    keys = KEYS if problem_name == "text_variants" else tuple(normalize(p) for p in PHRASES)
    assert form in keys, text[start:end]
    return keys.index(form)


@pytest.mark.parametrize("name", ["text_variants", "text_phrase"])
def test_spans_cover_exactly_the_spurious_form(problems, name):
    p = problems[name]
    for split in (p.train, p.test):
        for task, spans in zip(split.tasks, split.confounders):
            text = task["data"]["text"]
            (start, end), = spans
            span = text[start:end]
            assert span == span.strip() and (start == 0 or text[start - 1] == " ")
            assert text[end] in " ."
            if name == "text_phrase":
                assert span in PHRASES and sum(text.count(ph) for ph in PHRASES) == 1
            else:
                outside = {t.text.lower() for t in tokenize(text[:start] + " " + text[end:])}
                assert not outside & {*KEYS, *(part for parts in SPLITS.values() for part in parts)}
    clean = zip(p.clean_train.tasks + p.clean_test.tasks, p.clean_train.confounders + p.clean_test.confounders)
    for task, spans in clean:
        text = task["data"]["text"]
        assert spans == [] and not any(k in normalize(text) for k in KEYS) and not any(ph in text for ph in PHRASES)


@pytest.mark.parametrize("name", ["text_variants", "text_phrase"])
def test_labels_balanced_and_confounded_only_in_training(problems, name):
    p = problems[name]
    for split in (p.train, p.test, p.clean_train, p.clean_test):
        assert np.bincount(split.labels).tolist() == [len(split.labels) // 2] * 2
    assert np.array_equal(p.clean_train.labels, p.train.labels)
    train = [spurious_class(name, t["data"]["text"], s) for t, s in zip(p.train.tasks, p.train.confounders)]
    test = [spurious_class(name, t["data"]["text"], s) for t, s in zip(p.test.tasks, p.test.confounders)]
    assert np.array_equal(train, p.train.labels)
    assert np.mean(np.array(test) == p.test.labels) == 0.5


def test_variants_vary_and_phrase_words_occur_in_both_classes(problems):
    forms = {t["data"]["text"][a:b] for t, ((a, b),) in zip(problems["text_variants"].train.tasks,
                                                             problems["text_variants"].train.confounders)}
    assert len(forms) > 20 and any("-" in f for f in forms) and any(f.isupper() for f in forms)
    p = problems["text_phrase"]
    for word in PHRASE_WORDS:  # outside the phrase, every phrase word is in reviews of both classes
        for c in (0, 1):
            assert any(word in (t["data"]["text"][:a] + t["data"]["text"][b:]).split()
                       for t, ((a, b),), y in zip(p.train.tasks, p.train.confounders, p.train.labels) if y == c)


@pytest.mark.parametrize("name", ["text_variants", "text_phrase"])
def test_one_mark_per_class_finds_every_confounder(problems, name):
    """Marking one review of each class generalises to exactly the confounder's tokens everywhere."""
    p = problems[name]
    texts = [t["data"]["text"] for t in p.train.tasks]
    docs = [(t, tokenize(t)) for t in texts]
    length = max(len(tokens) for _, tokens in docs)

    def on_span(tokens, spans):
        (a, b), = spans
        return torch.tensor([a <= t.start and t.end <= b for t in tokens] + [False] * (length - len(tokens)))

    truth = torch.stack([on_span(tokens, s) for (_, tokens), s in zip(docs, p.train.confounders)])
    first = [int(np.flatnonzero(p.train.labels == c)[0]) for c in (0, 1)]
    irr = torch.zeros_like(truth)
    irr[first] = truth[first]
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    assert len(out.concepts) == 2
    assert not (out.irrelevant & ~truth).any()  # nothing outside the confounder
    for (text, tokens), row, spans in zip(docs, out.irrelevant, p.train.confounders):
        (a, b), = spans
        assert normalize("".join(t.text for t, m in zip(tokens, row) if m)) == normalize(text[a:b])


def test_registry():
    assert set(TEXT_PROBLEMS) == {"text_variants", "text_phrase", "text_tags"}
    p = TEXT_PROBLEMS["text_variants"](1, quick=True)
    assert p.kind == "text" and len(p.train.tasks) == 1000 and len(p.test.tasks) == 500
