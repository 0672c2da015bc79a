"""Text corrections generalise by what was marked (feedback.text_concepts)."""
from __future__ import annotations

import re
import time

import pytest
import torch

from ml_backend.data.text import Token, tokenize
from ml_backend.feedback.text_concepts import find_concepts, marked_concepts, match_marked_text, normalize


def words(text: str) -> list[Token]:
    """Whitespace-separated tokens (punctuation stays attached)."""
    return [Token(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def pieces(text: str, cuts: dict[str, list[int]]) -> list[Token]:
    """Word pieces: each word in ``cuts`` split at the given offsets ("zorbly" at [3] -> zor ##bly)."""
    out = []
    for t in words(text):
        bounds = [0, *cuts.get(t.text, []), len(t.text)]
        out += [Token(text[t.start + a:t.start + b], t.start + a, t.start + b) for a, b in zip(bounds, bounds[1:])]
    return out


def masks(docs, marked: dict[int, list[int]], length: int = 12, relevant: dict[int, list[int]] | None = None):
    irr = torch.zeros(len(docs), length, dtype=torch.bool)
    rel = torch.zeros_like(irr)
    for i, pos in marked.items():
        irr[i, pos] = True
    for i, pos in (relevant or {}).items():
        rel[i, pos] = True
    return irr, rel


def marked_texts(docs, mask: torch.Tensor) -> list[list[str]]:
    return [[t.text for t, m in zip(tokens, row) if m] for (_, tokens), row in zip(docs, mask.tolist())]


def test_normalize():
    for form in ("Zorbly", "ZORBLY", "zorbly!", "zor-bly", "Zor bly", "(zorbly)", "ｚｏｒｂｌｙ"):
        assert normalize(form) == "zorbly"
    assert normalize("free  shipping!") == "freeshipping"
    assert normalize("Straße") == "strasse"
    assert normalize("?!") == ""


def test_case_and_punctuation_variants_match():
    texts = ["a zorbly here", "ZORBLY first", "then Zorbly!", "see (zorbly) now", "a zor-bly b", "x Zor bly y",
             "nothing to see"]
    docs = [(t, tokenize(t)) for t in texts]
    irr, rel = masks(docs, {0: [1]})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == ["zorbly"]
    assert marked_texts(docs, out.irrelevant) == [["zorbly"], ["ZORBLY"], ["Zorbly"], ["zorbly"],
                                                  ["zor", "-", "bly"], ["Zor", "bly"], []]
    assert out.added.tolist() == [False, True, True, True, True, True, False]


def test_marked_variant_defines_the_concept():
    texts = ["buy (Zor-bly)! now", "a zorbly b"]
    docs = [(t, tokenize(t)) for t in texts]  # buy ( Zor - bly ) ! now
    irr, rel = masks(docs, {0: [1, 2, 3, 4, 5, 6]})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == ["zorbly"]
    assert marked_texts(docs, out.irrelevant)[1] == ["zorbly"]


def test_wordpiece_splits():
    texts = ["the zorbly film", "a ZORBLY plot", "zor bly here", "for or"]
    docs = [(texts[0], pieces(texts[0], {"zorbly": [3]})), (texts[1], pieces(texts[1], {"ZORBLY": [1, 2, 4]})),
            (texts[2], words(texts[2])), (texts[3], pieces(texts[3], {"for": [1]}))]
    assert [t.text for t in docs[0][1]] == ["the", "zor", "bly", "film"]
    irr, rel = masks(docs, {0: [1, 2]})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == ["zorbly"]
    assert marked_texts(docs, out.irrelevant) == [["zor", "bly"], ["Z", "O", "RB", "LY"], ["zor", "bly"], []]


def test_phrase_anywhere_but_not_its_words_alone():
    texts = ["free  shipping! on this", "we say free shipping at the end", "Free-Shipping first",
             "free of shipping", "shipping free"]
    docs = [(t, tokenize(t)) for t in texts]
    irr, rel = masks(docs, {0: [0, 1, 2]})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == ["freeshipping"]
    assert marked_texts(docs, out.irrelevant) == [["free", "shipping", "!"], ["free", "shipping"],
                                                  ["Free", "-", "Shipping"], [], []]


def test_token_boundaries():
    texts = ["or else", "for the forum", "a bor ing", "or"]
    docs = [(t, tokenize(t)) for t in texts]
    irr, rel = masks(docs, {0: [0]})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == ["or"]
    assert marked_texts(docs, out.irrelevant) == [["or"], [], [], ["or"]]
    # inside a word split into pieces: no match either
    assert find_concepts("forum", pieces("forum", {"forum": [1, 3]}), ["or"]) == []
    assert find_concepts("x zorbly_y", tokenize("x zorbly_y"), ["zorbly"]) == []


def test_relevant_is_never_overridden():
    texts = ["zorbly is noise", "zorbly matters here", "zorbly again"]
    docs = [(t, tokenize(t)) for t in texts]
    irr, rel = masks(docs, {0: [0]}, relevant={1: [0]})
    out = match_marked_text(docs, irr, rel)
    assert marked_texts(docs, out.irrelevant) == [["zorbly"], [], ["zorbly"]]
    assert out.added.tolist() == [False, False, True]


def test_truncated_tokens_are_not_seen():
    long = "w " * 10 + "zorbly"
    texts = ["zorbly", long, "Zor-bly", "a zor-bly"]  # the last one's occurrence is cut by the window
    docs = [(t, tokenize(t)) for t in texts]
    irr, rel = masks(docs, {0: [0]}, length=3)
    out = match_marked_text(docs, irr, rel)
    assert out.irrelevant.tolist() == [[True, False, False], [False] * 3, [True] * 3, [False] * 3]


def test_marks_beyond_the_tokens_are_padding():
    docs = [("zorbly", tokenize("zorbly")), ("a zorbly", tokenize("a zorbly"))]
    irr, rel = masks(docs, {0: [0, 1, 2]}, length=4)  # positions 1..3 of document 0 are padding
    assert marked_concepts(docs, irr) == ["zorbly"]
    assert match_marked_text(docs, irr, rel).irrelevant[1].tolist() == [False, True, False, False]


def test_no_marks_unchanged():
    docs = [("a zorbly", tokenize("a zorbly")), ("b", tokenize("b"))]
    irr, rel = masks(docs, {})
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == [] and not out.irrelevant.any() and not out.added.any()


def test_empty_and_short_keys_stay_local():
    texts = ["wow !!! it's 5 great", "so !!! it's 5 fine", "wow again"]
    docs = [(t, tokenize(t)) for t in texts]  # wow ! ! ! it ' s 5 great
    irr, rel = masks(docs, {0: [1, 2, 3, 6], 1: [7]})  # "!!!", "s" and "5"
    out = match_marked_text(docs, irr, rel)
    assert out.concepts == []
    assert torch.equal(out.irrelevant, irr)
    assert match_marked_text(docs, irr, rel, min_chars=1).concepts == ["5", "s"]
    irr2, _ = masks(docs, {0: [0]})
    assert marked_texts(docs, match_marked_text(docs, irr2, rel).irrelevant)[2] == ["wow"]


def test_bert_fast_tokenizer_pieces():
    import string

    import transformers as T

    from tests.support.backbones import WORDS

    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase) + list(string.digits)
             + list(string.punctuation) + list(WORDS) + ["##" + c for c in string.ascii_lowercase + string.digits])
    tokenizer = T.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    assert tokenizer.is_fast  # transformers 5: the tokenizers backend, with offsets

    def doc(text: str) -> tuple[str, list[Token]]:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        return text, [Token(text[s:e], s, e) for s, e in enc["offset_mapping"] if e > s]

    docs = [doc(t) for t in ("the zorbly film", "a ZOR-BLY plot!", "for the (Zorbly)", "or for", "zorblyx")]
    assert len(docs[0][1]) > 3  # "zorbly" is word pieces here
    irr = torch.zeros(len(docs), 40, dtype=torch.bool)
    irr[0, 1:7] = True  # z ##o ##r ##b ##l ##y
    irr[3, 0:2] = True  # o ##r
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    assert out.concepts == ["or", "zorbly"]
    got = ["".join(t.text for t, m in zip(tokens, row) if m) for (_, tokens), row in zip(docs, out.irrelevant.tolist())]
    assert got == ["zorbly", "ZOR-BLY", "Zorbly", "or", ""]


def test_fast_enough():
    body = " ".join(["the", "box", "arrived", "on", "tuesday", "and", "great", "price"] * 15)
    texts = [body[: 300 + i % 200] + (" Zor-bly!" if i % 3 else " free shipping") + " " + body[:300]
             for i in range(10_000)]
    docs = [(t, tokenize(t)) for t in texts]
    irr = torch.zeros(len(docs), 128, dtype=torch.bool)
    for i in range(3):
        tokens = docs[i][1]
        irr[i, [k for k, t in enumerate(tokens[:128]) if t.text in ("Zor", "-", "bly", "free", "shipping")]] = True
    started = time.perf_counter()
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    assert time.perf_counter() - started < 5.0  # ~0.5 s here; generous for a loaded machine
    assert out.concepts == ["freeshipping", "zorbly"]
    assert int(out.added.sum()) == len(docs) - 3


def _tagged(texts: list[str]):
    return [(t, tokenize(t)) for t in texts]


def _mark(docs, spans: dict[int, list[str]], length: int = 16) -> torch.Tensor:
    """Irrelevant masks over the tokens of the given substrings of each document."""
    irr = torch.zeros(len(docs), length, dtype=torch.bool)
    for i, subs in spans.items():
        text, tokens = docs[i]
        for sub in subs:
            start = text.index(sub)
            for j, t in enumerate(tokens):
                if t.start >= start and t.end <= start + len(sub):
                    irr[i, j] = True
    return irr


def test_one_classs_tags_find_the_other_classs_by_their_shape():
    """Corrections from the positive class only: #promo and [ref-kx] marked; the negative class's
    #ticket and [case-vq] share their shape (#a, [a-a]) and are found too."""
    docs = _tagged(["great box #promo arrived", "love it [ref-kx] works", "perfect #promo item",
                    "awful #ticket broke", "poor [case-vq] hinge", "fine item today", "sturdy [ref-kx] lid"])
    irr = _mark(docs, {0: ["#promo"], 1: ["[ref-kx]"], 2: ["#promo"], 6: ["[ref-kx]"]})
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    got = marked_texts(docs, out.irrelevant)
    assert got[3] == ["#", "ticket"] and got[4] == ["[", "case", "-", "vq", "]"] and got[5] == []
    assert "shape #a" in out.concepts and "shape [a-a]" in out.concepts


def test_a_shape_the_annotators_left_alone_elsewhere_does_not_spread():
    """'(zorbly)' is marked twice, but the corrected documents hold unmarked parenthesised words: the
    shape (a) is not the concept, only the word is. A word's inner hyphen is spelling, never a shape."""
    docs = _tagged(["nice (zorbly) box (mostly)", "good (zorbly) lid (again)", "great well-made item",
                    "bad (quennic) thing", "poor well-made lid"])
    irr = _mark(docs, {0: ["(zorbly)"], 1: ["(zorbly)"], 2: ["well-made"]})
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    got = marked_texts(docs, out.irrelevant)
    assert got[3] == [] and not any(c.startswith("shape") for c in out.concepts)
    assert got[4] == ["well", "-", "made"]  # the word itself, by its normalised key, as before


def test_two_marked_tag_shapes_find_a_third_by_their_family():
    """Ranked by uncertainty, the corrected documents hold hashtags and mentions but never the
    bracket tags the model trusts most: two symbol-led shapes marked show a family, and the bracket
    tags of both classes are found (trailing sentence punctuation left out); plain words and a word's
    inner hyphen are not."""
    docs = _tagged(["great box #promo arrived", "love it @dealhub works", "awful @helpline broke",
                    "poor #ticket hinge", "fine item [ref-kx].", "bad lid [case-vq] again", "a well-made lid"])
    irr = _mark(docs, {0: ["#promo"], 1: ["@dealhub"], 2: ["@helpline"], 3: ["#ticket"]})
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    got = marked_texts(docs, out.irrelevant)
    assert got[4] == ["[", "ref", "-", "kx", "]"] and got[5] == ["[", "case", "-", "vq", "]"]
    assert got[6] == [] and "shape symbol-led" in out.concepts


def test_one_marked_tag_shape_or_unmarked_symbol_led_words_keep_the_family_closed():
    """One shape is a form, not a family; and where the corrected documents hold symbol-led words
    the annotators left alone ('(mostly)'), the family does not validate."""
    one = _tagged(["great #promo box", "awful #ticket lid", "fine [ref-kx] item"])
    irr = _mark(one, {0: ["#promo"], 1: ["#ticket"]})
    out = match_marked_text(one, irr, torch.zeros_like(irr))
    assert marked_texts(one, out.irrelevant)[2] == [] and "shape symbol-led" not in out.concepts
    docs = _tagged(["great #promo box (mostly)", "love @dealhub works", "awful @helpline broke",
                    "fine [ref-kx] item"])
    irr = _mark(docs, {0: ["#promo"], 1: ["@dealhub"], 2: ["@helpline"]})
    out = match_marked_text(docs, irr, torch.zeros_like(irr))
    assert marked_texts(docs, out.irrelevant)[3] == [] and "shape symbol-led" not in out.concepts
