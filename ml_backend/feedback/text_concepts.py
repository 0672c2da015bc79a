"""Text corrections generalise by what was marked: the marked words, wherever they recur.

A span an annotator marks Irrelevant in one document (a spurious token, or a phrase) defines a
concept: the marked text normalised (Unicode NFKC, casefolded, every non-alphanumeric character
removed), so "Zorbly", "ZORBLY", "zorbly!", "zor-bly", "Zor bly" and the word pieces "zor ##bly"
are one concept, "zorbly". Every occurrence of a concept in any labelled document, aligned to
whole words, is then marked Irrelevant there too, unless that document's annotator marked the
token Relevant. One mark is enough to define a concept.

Documents are matched through their tokens (the hashed-token CNN's words or a backbone's word
pieces), so a match maps back to exactly the tokens it covers:

- a concept is a maximal run of consecutive marked tokens (adjacent marked words make one
  phrase; the marks alone cannot tell two neighbouring spans from one);
- a document's normalised text is the concatenation of its tokens' normalised texts, and an
  occurrence counts only where it starts at the start and ends at the end of a token that also
  begins / ends a word (no letter or digit directly before / after it in the document). So "or"
  never matches inside "for", even where a word-piece tokenizer splits "for" into "f ##o ##r",
  while "zor-bly" (three tokens) matches "zorbly". Scripts written without spaces (Chinese,
  Japanese) therefore only match whole runs of their characters;
- concepts shorter than ``min_chars`` (default 2) normalised characters stay local to the
  document they were marked in: a lone letter or digit ("s" of "it's", "5" of "$5") would match
  nearly every document. Pure punctuation normalises to nothing and never defines a concept.

Marks also carry by their *shape*, so that one class's tags find the other classes' (corrections
drawn from one class only): a marked span's surface with each run of letters written ``a`` and of
digits ``9`` ("#promo" and "#ticket" are "#a", "[ref-kx]" and "[case-vq]" are "[a-a]"). A shape
that begins or ends with a symbol (a word's inner hyphen or apostrophe is spelling, not a tag)
matches every whole-token span of that shape, if it is validated on the corrected documents: marked
in at least two of them, and at least ``MIN_SHAPE_PRECISION`` of its occurrences there are marked
(so "(a)" never spreads where the annotators left parenthesised words alone).

Marks of two or more symbol-led shapes ("#a" and "@a": a hashtag and a mention) show a family, not
one form: then every symbol-led chunk (symbols, then letters or digits, inner symbols allowed, closing
symbols kept and sentence punctuation left out: "[ref-kx]", "(zorbly)", "$5") is the concept, under
the same validation. One corrected tag per document, ranked by uncertainty, leaves the tags the model
trusts most uncorrected: they share no shape with the marked ones, only the family.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ml_backend.data.text import Token

MIN_CHARS = 2
MIN_SHAPE_PRECISION = 0.85  # share of a shape's occurrences in the corrected documents that are marked
FAMILY_MIN_SHAPES = 2  # distinct symbol-led shapes marked before every symbol-led chunk is the concept
SYMBOL_LED = "symbol-led"
TEXT_RULES = ("words", "shape", "family")  # normalised words and phrases; tag shapes; the symbol-led family
_SYMBOL_LED = re.compile(r"(?<!\S)[^\w\s]+[^\W_]+(?:[^\w\s]+[^\W_]+)*[^\w\s.,;:!?]*")
_NON_ALNUM = re.compile(r"[\W_]+")  # sre's \w is str.isalnum() plus "_"


@dataclass
class TextConcepts:
    """Masks after matching, which documents got marks only from others, and the concepts."""

    irrelevant: torch.Tensor  # (N, L) bool: own marks | matched tokens that are not marked Relevant
    added: torch.Tensor  # (N,) bool: documents with no Irrelevant mark of their own that now have one
    concepts: list[str]  # normalised keys, sorted


def normalize(text: str) -> str:
    """NFKC, casefolded, alphanumerics only."""
    if text.isascii():
        return _NON_ALNUM.sub("", text.lower())
    return _NON_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


class _Normalizer:
    """``normalize`` memoised on the token's surface text (documents repeat their words)."""

    def __init__(self) -> None:
        self.cache: dict[str, str] = {}

    def __call__(self, piece: str) -> str:
        out = self.cache.get(piece)
        if out is None:
            out = self.cache[piece] = normalize(piece)
        return out


def _runs(marked: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) positions of each maximal run of True."""
    edges = np.diff(np.concatenate([[0], marked.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def marked_concepts(docs: Sequence[tuple[str, Sequence[Token]]], irrelevant: torch.Tensor,
                    min_chars: int = MIN_CHARS) -> list[str]:
    """Sorted normalised keys of the marked runs of tokens, ``min_chars`` long or longer."""
    norm = _Normalizer()
    keys: set[str] = set()
    marks = irrelevant.detach().to("cpu", torch.bool).numpy()
    for (text, tokens), row in zip(docs, marks):
        kept = tokens[:len(row)]
        for first, last in _runs(row[:len(kept)]):
            # the tokens' own normalised texts, as documents are matched (text between tokens is not seen)
            key = "".join(norm(text[t.start:t.end]) for t in kept[first:last + 1])
            if len(key) >= max(min_chars, 1):
                keys.add(key)
    return sorted(keys)


def _layout(text: str, tokens: Sequence[Token], norm: _Normalizer) -> tuple[str, dict[int, int], dict[int, int]]:
    """The document's normalised text and, at each position where a word starts (ends) at a token
    boundary, the index of that token."""
    parts: list[str] = []
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    pos, size, cache = 0, len(text), norm.cache
    for i, t in enumerate(tokens):
        s, e = t.start, t.end
        piece = cache.get(text[s:e])  # inlined: this loop is the cost of matching
        if piece is None:
            piece = norm(text[s:e])
        if not piece:
            continue
        if s == 0 or not (text[s - 1].isalnum() and text[s].isalnum()):
            starts[pos] = i
        pos += len(piece)
        if e >= size or not (text[e].isalnum() and text[e - 1].isalnum()):
            ends[pos] = i
        parts.append(piece)
    return "".join(parts), starts, ends


def find_concepts(text: str, tokens: Sequence[Token], concepts: Sequence[str]) -> list[int]:
    """Indices of ``tokens`` covered by whole-word occurrences of the normalised ``concepts``."""
    return sorted(_find(text, tokens, concepts, None, _Normalizer()))


def _find(text: str, tokens: Sequence[Token], concepts: Sequence[str], pattern: re.Pattern | None,
          norm: _Normalizer) -> set[int]:
    flat, starts, ends = _layout(text, tokens, norm)
    if pattern is not None and pattern.search(flat) is None:
        return set()
    hits: set[int] = set()
    for key in concepts:
        j = flat.find(key)
        while j != -1:
            first, last = starts.get(j), ends.get(j + len(key))
            if first is not None and last is not None:
                hits.update(range(first, last + 1))  # punctuation tokens inside the match too
            j = flat.find(key, j + 1)
    return hits


def shape(surface: str) -> str:
    """Letters -> ``a``, digits -> ``9``, whitespace -> one space; symbols kept."""
    return re.sub(r"\s+", " ", re.sub(r"[^\W\d_]+", "a", re.sub(r"\d+", "9", surface))).strip()


def _is_tag_shape(form: str) -> bool:
    return (len(form) >= 2 and any(c in "a9" for c in form)
            and not (form[0] in "a9 " and form[-1] in "a9 "))


def _shape_regex(form: str) -> re.Pattern:
    parts = {"a": r"[^\W\d_]+", "9": r"\d+", " ": r"\s+"}
    return re.compile(r"(?<!\w)" + "".join(parts.get(c, re.escape(c)) for c in form) + r"(?!\w)")


def _shape_hits(text: str, tokens: Sequence[Token], regex: re.Pattern) -> list[list[int]]:
    """Token indices of each occurrence of the shape that starts and ends on token boundaries."""
    starts = {t.start: i for i, t in enumerate(tokens)}
    ends = {t.end: i for i, t in enumerate(tokens)}
    out = []
    for m in regex.finditer(text):
        first, last = starts.get(m.start()), ends.get(m.end())
        if first is not None and last is not None and first <= last:
            out.append(list(range(first, last + 1)))
    return out


def _marked_forms(docs: Sequence[tuple[str, Sequence[Token]]], marks: np.ndarray) -> dict[str, set[int]]:
    """Tag shape of each marked run -> the documents it was marked in."""
    seen: dict[str, set[int]] = {}
    for d, ((text, tokens), row) in enumerate(zip(docs, marks)):
        kept = tokens[:len(row)]
        for first, last in _runs(row[:len(kept)]):
            form = shape(text[kept[first].start:kept[last].end])
            if _is_tag_shape(form):
                seen.setdefault(form, set()).add(d)
    return seen


def _validated(docs: Sequence[tuple[str, Sequence[Token]]], marks: np.ndarray, regex: re.Pattern) -> bool:
    """At least ``MIN_SHAPE_PRECISION`` of the regex's occurrences in the corrected documents are marked."""
    hit = total = 0
    for d in np.flatnonzero(marks.any(axis=1)):
        text, tokens = docs[d]
        for span in _shape_hits(text, tokens[:marks.shape[1]], regex):
            total += 1
            hit += bool(marks[d, span].all())
    return bool(total) and hit >= MIN_SHAPE_PRECISION * total


def marked_shapes(docs: Sequence[tuple[str, Sequence[Token]]], irrelevant: torch.Tensor,
                  rules: Sequence[str] = TEXT_RULES) -> list[str]:
    """The tag shapes of the marked runs that the corrected documents validate, and the symbol-led
    family (``SYMBOL_LED``) where two or more symbol-led shapes were marked (module docstring)."""
    marks = irrelevant.detach().to("cpu", torch.bool).numpy()
    seen = _marked_forms(docs, marks)
    out = [form for form, where in sorted(seen.items())
           if "shape" in rules and len(where) >= 2 and _validated(docs, marks, _shape_regex(form))]
    led = [form for form in seen if form[0] not in "a9 "]
    if ("family" in rules and len(led) >= FAMILY_MIN_SHAPES and len(set().union(*(seen[f] for f in led))) >= 2
            and _validated(docs, marks, _SYMBOL_LED)):
        out.append(SYMBOL_LED)
    return out


def match_marked_text(docs: Sequence[tuple[str, Sequence[Token]]], irrelevant: torch.Tensor,
                      relevant: torch.Tensor, min_chars: int = MIN_CHARS,
                      rules: Sequence[str] = TEXT_RULES) -> TextConcepts:
    """Own Irrelevant marks plus every whole-word occurrence of a marked concept in any document,
    except on tokens that document marked Relevant.

    ``docs[i]`` is a document's text and its tokens in mask order (character offsets into the
    text); masks are (N, L) bool, and tokens beyond L are not seen. ``rules``: which of
    ``TEXT_RULES`` carry the marks (all, by default; the benchmarks compare them).
    """
    if irrelevant.dim() != 2 or irrelevant.shape != relevant.shape or len(docs) != irrelevant.shape[0]:
        raise ValueError(f"need {len(docs)} documents and two (N, L) masks, got {tuple(irrelevant.shape)} "
                         f"and {tuple(relevant.shape)}")
    own = irrelevant.any(dim=1)
    concepts = marked_concepts(docs, irrelevant, min_chars) if "words" in rules else []
    shapes = marked_shapes(docs, irrelevant, rules)
    if not concepts and not shapes:
        return TextConcepts(irrelevant.clone(), torch.zeros_like(own), concepts)
    length = irrelevant.shape[1]
    matched = np.zeros(tuple(irrelevant.shape), dtype=bool)
    pattern = re.compile("|".join(map(re.escape, concepts))) if concepts else None
    regexes = [_SYMBOL_LED if form == SYMBOL_LED else _shape_regex(form) for form in shapes]
    norm = _Normalizer()
    for i, (text, tokens) in enumerate(docs):
        hits = _find(text, tokens[:length], concepts, pattern, norm) if concepts else set()
        for regex in regexes:
            hits.update(t for span in _shape_hits(text, tokens[:length], regex) for t in span)
        if hits:
            matched[i, sorted(hits)] = True
    matched_t = torch.from_numpy(matched).to(irrelevant.device)
    marks = irrelevant | (matched_t & ~relevant.to(torch.bool))
    return TextConcepts(marks, marks.any(dim=1) & ~own, concepts + [f"shape {form}" for form in shapes])
