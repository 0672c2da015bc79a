"""Text confounders that a correction by token id does not generalise: generated reviews as in
``data.decoy_text`` (label = majority of sentiment words; label 0 Positive, 1 Negative).

- ``text_variants``: the spurious token ("zorbly" Positive, "quennic" Negative) in a different
  surface form per review: case (zorbly, Zorbly, ZORBLY), split (zor-bly, zor bly) and attached
  punctuation ("zorbly!", "(zorbly)", "zorbly,", '"zorbly"'). The span covers the whole form.
- ``text_phrase``: a spurious phrase anywhere in the review ("free shipping included" Positive,
  "order number follows" Negative). Its words are also common neutral words of every review, in
  both classes, so no single word is the confounder: only the phrase is.
- ``text_tags``: a tag anywhere in the review, drawn at random from its class's family of three
  (Positive: "#promo", "[ref-kx]", "@dealhub"; Negative: "#ticket", "[case-vq]", "@helpline").
  No word of a tag is a word of the reviews or of the other class's tags (only the punctuation
  "#", "[", "-", "]", "@" is shared), so one corrected tag names no other tag of either class.

In training the spurious form follows the label; at test the label is balanced against it (each
class gets either form in equal numbers), so a model that relies on it is at chance. The clean
training twin has the same labels and no spurious form (``text_tags``: tags balanced against the
label, as at test, so the upper bound sees the tags but not their correlation); the clean test
twin has none.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from benchmarks.xil.data import NEGATIVE, NEUTRAL, POSITIVE, SPURIOUS, TEXT_CONFIG, Problem, Split

Insert = Callable[[np.random.Generator, int], str]  # (rng, spurious class) -> the text to insert

SPLITS = {"zorbly": ("zor", "bly"), "quennic": ("quen", "nic")}
CASES = (str.lower, str.capitalize, str.upper)
WRAPS = ("{}", "{}!", "({})", "{},", '"{}"')
PHRASES = ("free shipping included", "order number follows")  # Positive, Negative
PHRASE_WORDS = tuple(w for p in PHRASES for w in p.split())
TAGS = (("#promo", "[ref-kx]", "@dealhub"), ("#ticket", "[case-vq]", "@helpline"))  # Positive, Negative


def variant(rng: np.random.Generator, cls: int) -> str:
    """A random surface form of class ``cls``'s spurious token."""
    token = SPURIOUS[cls]
    head, tail = SPLITS[token]
    word = (token, f"{head}-{tail}", f"{head} {tail}")[int(rng.integers(0, 3))]
    word = CASES[int(rng.integers(0, len(CASES)))](word)
    return WRAPS[int(rng.integers(0, len(WRAPS)))].format(word)


def phrase(rng: np.random.Generator, cls: int) -> str:
    return PHRASES[cls]


def tag(rng: np.random.Generator, cls: int) -> str:
    """One of class ``cls``'s three tags, at random."""
    return TAGS[cls][int(rng.integers(0, len(TAGS[cls])))]


def _review(rng: np.random.Generator, label: int, insert: Optional[str], extra: tuple[str, ...],
            n_extra: tuple[int, int]) -> tuple[str, list[tuple[int, int]]]:
    """Sentiment and neutral words (plus ``n_extra`` words of ``extra``) shuffled, ``insert`` at a
    random place; the span of ``insert``."""
    major, minor = (POSITIVE, NEGATIVE) if label == 0 else (NEGATIVE, POSITIVE)
    while True:
        words = list(rng.choice(major, rng.integers(2, 4))) + list(rng.choice(minor, rng.integers(0, 2)))
        words += list(rng.choice(NEUTRAL, rng.integers(8, 16)))
        if extra:
            words += list(rng.choice(extra, rng.integers(*n_extra)))
        rng.shuffle(words)
        text = " ".join(words)
        if not any(p in text for p in PHRASES):  # a phrase by chance would be an unmarked confounder
            break
    if insert is None:
        return text + ".", []
    at = int(rng.integers(0, len(words) + 1))
    before = " ".join(words[:at])
    start = len(before) + (1 if at else 0)
    text = " ".join(words[:at] + [insert] + words[at:]) + "."
    return text, [(start, start + len(insert))]


def _balanced(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % 2)


def _independent(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Each class gets either spurious form in equal numbers: the form says nothing of the label."""
    other = np.zeros(len(labels), dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        other[idx] = _balanced(rng, len(idx))
    return other


def _problem(name: str, title: str, seed: int, insert: Insert, extra: tuple[str, ...], n_extra: tuple[int, int],
             note: str, n_train: int, n_test: int, clean_with_forms: bool = False) -> Problem:
    """``clean_with_forms``: the clean training twin carries the spurious forms too, independent of the
    label (the upper bound then differs only by the correlation); otherwise it has none."""
    rng = np.random.default_rng(5000 + seed + 97 * sum(map(ord, name)))
    ytr, yte = _balanced(rng, n_train), _balanced(rng, n_test)
    other = _independent(rng, yte)  # at test the form says nothing
    clean_forms = _independent(rng, ytr) if clean_with_forms else None

    def reviews(labels: np.ndarray, forms: Optional[np.ndarray]) -> list[tuple[str, list[tuple[int, int]]]]:
        return [_review(rng, int(y), None if forms is None else insert(rng, int(f)), extra, n_extra)
                for y, f in zip(labels, labels if forms is None else forms)]

    def split(items: list, labels: np.ndarray, first: int) -> Split:
        tasks: list[dict[str, Any]] = [{"id": first + i, "data": {"text": t}} for i, (t, _) in enumerate(items)]
        return Split(tasks, labels, [s for _, s in items])

    def decorrelated() -> Split:  # its own random stream: the other sets stay as they were
        twin_rng = np.random.default_rng((5000 + seed, 97 * sum(map(ord, name)), 7))
        forms = _independent(twin_rng, ytr)
        items = [_review(twin_rng, int(y), insert(twin_rng, int(f)), extra, n_extra) for y, f in zip(ytr, forms)]
        return split(items, ytr, 400_000)

    return Problem(
        name=name, title=title, kind="text", label_config=TEXT_CONFIG.read_text(), image_size=0,
        train=split(reviews(ytr, ytr), ytr, 1),
        test=split(reviews(yte, other), yte, 100_000),
        clean_train=split(reviews(ytr, clean_forms), ytr, 200_000),
        clean_test=split(reviews(yte, None), yte, 300_000),
        decorrelated_train=None if clean_with_forms else decorrelated(), clean_carries_confounder=clean_with_forms,
        notes=[f"{n_train} training / {n_test} test reviews (balanced); label = majority of 2-3 vs 0-1 sentiment "
               f"words; {note}"],
    )


def text_variants(seed: int, n_train: int = 1000, n_test: int = 500) -> Problem:
    return _problem("text_variants", "Text variants: a spurious token in changing surface forms", seed, variant,
                    (), (0, 1), f"spurious {SPURIOUS[0]!r} (Positive) / {SPURIOUS[1]!r} (Negative) in a random "
                    "case, split (zor-bly, zor bly) and punctuation per review", n_train, n_test)


def text_phrase(seed: int, n_train: int = 1000, n_test: int = 500) -> Problem:
    return _problem("text_phrase", "Text phrase: a spurious multi-word phrase anywhere", seed, phrase,
                    PHRASE_WORDS, (2, 5), f"spurious phrases {PHRASES[0]!r} (Positive) / {PHRASES[1]!r} (Negative); "
                    "2-4 of their words also appear loose in every review", n_train, n_test)


def text_tags(seed: int, n_train: int = 1000, n_test: int = 500) -> Problem:
    return _problem("text_tags", "Text tags: a tag from a per-class family anywhere", seed, tag, (), (0, 1),
                    f"spurious tags {' / '.join(TAGS[0])} (Positive) and {' / '.join(TAGS[1])} (Negative), one "
                    "drawn at random per review; the clean bound trains on tags independent of the label",
                    n_train, n_test, clean_with_forms=True)


TEXT_PROBLEMS = {
    "text_variants": lambda seed, quick=False: text_variants(seed),
    "text_phrase": lambda seed, quick=False: text_phrase(seed),
    "text_tags": lambda seed, quick=False: text_tags(seed),
}
