"""LS annotation JSON -> Feedback: CAIPI's three cases, masks, spans, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_backend.data.images import image_to_tensor
from ml_backend.data.text import tokenize
from ml_backend.feedback.parse import (
    CancelledAnnotation,
    Feedback,
    FeedbackError,
    feedback_counts,
    parse_annotation,
)
from ml_backend.labelstudio import rle
from ml_backend.labelstudio.schema import parse_label_config

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"


@pytest.fixture(scope="module")
def image_schema():
    return parse_label_config((CONFIGS / "image_classification_evidence.xml").read_text())


@pytest.fixture(scope="module")
def text_schema():
    return parse_label_config((CONFIGS / "text_classification_evidence.xml").read_text())


def choice(label: str, from_name: str = "label", to_name: str = "image") -> dict:
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}


def brush(mask: np.ndarray, label: str, from_name: str = "evidence") -> dict:
    h, w = mask.shape
    return {
        "id": f"r-{label}",
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }


def span(text: str, start: int, end: int, label: str) -> dict:
    return {
        "from_name": "evidence",
        "to_name": "text",
        "type": "labels",
        "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
    }


def annotation(results: list, ann_id: int = 7, task_id: int = 3, **extra) -> dict:
    return {"id": ann_id, "task": task_id, "result": results, "was_cancelled": False, **extra}


TASK = {"id": 3, "data": {"image": "/data/upload/1/cat.png"}}


def quadrant(h: int = 128, w: int = 128) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[: h // 2, : w // 2] = True
    return mask


# --- CAIPI's three cases ---------------------------------------------------------------


def test_right_for_the_right_reasons_keeps_evidence_without_masks(image_schema):
    ann = annotation([choice("Class B"), brush(quadrant(), "Model evidence")])
    fb = parse_annotation(ann, TASK, image_schema, image_size=64)
    assert fb == Feedback(task_id=3, annotation_id=7, label=1, irrelevant=None, relevant=None, kind="accepted")


def test_wrong_label_gives_label_only(image_schema):
    fb = parse_annotation(annotation([choice("Class A")]), TASK, image_schema, image_size=64)
    assert (fb.label, fb.irrelevant, fb.relevant, fb.kind) == (0, None, None, "label_only")


def test_changed_label_with_kept_evidence_is_not_an_endorsement(image_schema):
    prediction = {"result": [choice("Class B"), brush(quadrant(), "Model evidence")]}
    ann = annotation([choice("Class A"), brush(quadrant(), "Model evidence")], prediction=prediction)
    assert parse_annotation(ann, TASK, image_schema, image_size=64).kind == "label_only"
    ann = annotation([choice("Class B"), brush(quadrant(), "Model evidence")], prediction=prediction)
    assert parse_annotation(ann, TASK, image_schema, image_size=64).kind == "accepted"


def test_right_for_wrong_reasons_gives_irrelevant_mask(image_schema):
    # The model's evidence region relabelled Irrelevant by the annotator.
    ann = annotation([choice("Class A"), brush(quadrant(), "Irrelevant")])
    fb = parse_annotation(ann, TASK, image_schema, image_size=64)
    assert fb.kind == "irrelevant" and fb.label == 0 and fb.relevant is None
    assert fb.irrelevant.dtype == bool and fb.irrelevant.shape == (64, 64)
    # the quadrant and the one-pixel rim the 2x downscale blends it into
    assert fb.irrelevant[:32, :32].all() and fb.irrelevant.sum() == 33 * 33


@pytest.mark.parametrize("original, size", [(28, 64), (28, 56), (200, 64), (64, 64), (50, 64)])
def test_a_mark_covers_every_pixel_the_image_resize_blends_it_into(image_schema, original, size):
    # A mark read at the model's input size must cover the blended rim the image's resize leaves
    # around it: the rim still carries the mark's colour, and a model reads the shortcut from it.
    rng = np.random.default_rng(original + size)
    for _ in range(5):
        mark = np.zeros((original, original), dtype=bool)
        y, x = rng.integers(0, original - 4, size=2)
        h, w = rng.integers(1, max(2, original // 5), size=2)
        mark[y:y + h, x:x + w] = True
        picture = Image.fromarray(np.where(mark[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
        tinted = image_to_tensor(picture, size).amax(dim=0).numpy() > 0
        fb = parse_annotation(annotation([choice("Class A"), brush(mark, "Irrelevant")]), TASK, image_schema,
                              image_size=size)
        assert not (tinted & ~fb.irrelevant).any()  # no pixel of the mark's colour left unmarked
        assert np.array_equal(fb.irrelevant, tinted)  # and nothing the mark does not reach


def test_irrelevant_regions_are_ored_and_evidence_adds_nothing(image_schema):
    a = np.zeros((32, 32), dtype=bool)
    a[:4, :4] = True
    b = np.zeros((32, 32), dtype=bool)
    b[20:, 10:12] = True
    evidence = np.zeros((32, 32), dtype=bool)
    evidence[10:15, 10:15] = True
    ann = annotation(
        [brush(a, "Irrelevant"), brush(evidence, "Model evidence"), brush(b, "Irrelevant"), choice("Class B")]
    )
    fb = parse_annotation(ann, TASK, image_schema, image_size=32)
    assert np.array_equal(fb.irrelevant, a | b)
    assert fb.kind == "irrelevant"


def test_relevant_and_both(image_schema):
    irr = quadrant(32, 32)
    rel = np.zeros((32, 32), dtype=bool)
    rel[24:, 24:] = True
    fb = parse_annotation(annotation([choice("Class A"), brush(rel, "Relevant")]), TASK, image_schema, image_size=32)
    assert fb.kind == "relevant" and fb.irrelevant is None and np.array_equal(fb.relevant, rel)
    fb = parse_annotation(
        annotation([choice("Class A"), brush(rel, "Relevant"), brush(irr, "Irrelevant")]),
        TASK,
        image_schema,
        image_size=32,
    )
    assert fb.kind == "irrelevant+relevant"
    assert np.array_equal(fb.irrelevant, irr) and np.array_equal(fb.relevant, rel)


def test_results_of_other_controls_are_ignored(image_schema):
    ann = annotation(
        [
            choice("Class A"),
            brush(quadrant(), "Irrelevant", from_name="other_brush"),
            {"from_name": "notes", "to_name": "image", "type": "textarea", "value": {"text": ["hi"]}},
        ]
    )
    fb = parse_annotation(ann, TASK, image_schema, image_size=64)
    assert (fb.label, fb.irrelevant, fb.kind) == (0, None, "label_only")


def test_no_choice_gives_label_none(image_schema):
    fb = parse_annotation(annotation([brush(quadrant(), "Irrelevant")]), TASK, image_schema, image_size=16)
    assert fb.label is None and fb.kind == "irrelevant"
    fb = parse_annotation(annotation([brush(quadrant(), "Model evidence")]), TASK, image_schema, image_size=16)
    assert fb.label is None and fb.kind == "label_only"


def test_empty_brush_region_counts_as_nothing_marked(image_schema):
    ann = annotation([choice("Class A"), brush(np.zeros((10, 10), dtype=bool), "Irrelevant")])
    fb = parse_annotation(ann, TASK, image_schema, image_size=16)
    assert fb.irrelevant is None and fb.kind == "label_only"


# --- resizing --------------------------------------------------------------------------


def test_cells_mostly_covered_stay_marked_and_the_rim_is_the_blend(image_schema):
    # (mark, size, the cells at least half covered, how far the resize blends the mark's edge)
    big = np.zeros((120, 90), dtype=bool)  # H x W; non-square original
    big[:60, 45:] = True  # top-right quadrant
    small = np.zeros((8, 8), dtype=bool)
    small[2:4, 4:8] = True
    half = np.zeros((100, 100), dtype=bool)
    half[:50] = True
    cases = [(big, 30, (slice(0, 15), slice(15, 30)), 1),  # 4x and 3x down: one cell of blend
             (small, 32, (slice(8, 16), slice(16, 32)), 2)]  # 4x up: two cells
    for mark, size, covered, rim in cases:
        fb = parse_annotation(annotation([brush(mark, "Irrelevant")]), TASK, image_schema, image_size=size)
        inner = np.zeros((size, size), dtype=bool)
        inner[covered] = True
        padded = np.pad(inner, rim)
        grown = np.zeros_like(inner)
        for dy in range(2 * rim + 1):
            for dx in range(2 * rim + 1):
                grown |= padded[dy:dy + size, dx:dx + size]
        assert fb.irrelevant[inner].all(), size
        assert not (fb.irrelevant & ~grown).any() and (fb.irrelevant & ~inner).any(), size
    # a background (over a quarter of the image) keeps the cells it covers: its rim is the object's edge
    fb = parse_annotation(annotation([brush(half, "Irrelevant")]), TASK, image_schema, image_size=64)
    expected = np.zeros((64, 64), dtype=bool)
    expected[:32] = True
    assert np.array_equal(fb.irrelevant, expected)


def test_a_thin_mark_survives_downscaling(image_schema):
    mask = np.zeros((256, 256), dtype=bool)
    mask[101, 37] = True  # one pixel: plain resampling would drop it
    fb = parse_annotation(annotation([brush(mask, "Irrelevant")]), TASK, image_schema, image_size=16)
    assert fb.irrelevant is not None
    assert np.argwhere(fb.irrelevant).tolist() == [[101 * 16 // 256, 37 * 16 // 256]]


def test_without_image_size_masks_stay_at_original_size(image_schema):
    mask = quadrant(20, 30)
    fb = parse_annotation(annotation([brush(mask, "Irrelevant")]), TASK, image_schema)
    assert np.array_equal(fb.irrelevant, mask)


# --- text ------------------------------------------------------------------------------

TEXT = "The movie was great, but the popcorn was stale."


def text_task(text: str = TEXT) -> dict:
    return {"id": 5, "data": {"text": text}}


def test_span_marks_exactly_the_overlapping_tokens(text_schema):
    tokens = tokenize(TEXT)
    start = TEXT.index("popcorn")
    # a span from inside "the" (partial overlap) to the end of "popcorn"
    ann = annotation([choice("Negative", to_name="text"), span(TEXT, start - 2, start + 7, "Irrelevant")])
    fb = parse_annotation(ann, text_task(), text_schema, max_len=20)
    assert fb.irrelevant.shape == (20,) and fb.irrelevant.dtype == bool
    marked = [t.text for t, m in zip(tokens, fb.irrelevant) if m]
    assert marked == ["the", "popcorn"]
    assert not fb.irrelevant[len(tokens) :].any()  # padding never marked
    assert fb.label == 1 and fb.kind == "irrelevant"


def test_span_boundaries_are_end_exclusive(text_schema):
    tokens = tokenize(TEXT)
    great = next(t for t in tokens if t.text == "great")
    comma = next(t for t in tokens if t.text == ",")
    # [great.start, great.end) touches the comma's start but does not overlap it
    fb = parse_annotation(annotation([span(TEXT, great.start, great.end, "Relevant")]), text_task(), text_schema)
    assert fb.relevant.shape == (len(tokens),)
    assert [t.text for t, m in zip(tokens, fb.relevant) if m] == ["great"]
    fb = parse_annotation(annotation([span(TEXT, comma.start, comma.end, "Relevant")]), text_task(), text_schema)
    assert [t.text for t, m in zip(tokens, fb.relevant) if m] == [","]


def test_spans_beyond_max_len_are_dropped(text_schema):
    start = TEXT.index("stale")
    fb = parse_annotation(annotation([span(TEXT, start, start + 5, "Irrelevant")]), text_task(), text_schema, max_len=4)
    assert fb.irrelevant is None and fb.kind == "label_only"


def test_text_argument_overrides_task_data(text_schema):
    other = "bad stale thing"
    fb = parse_annotation(annotation([span(other, 4, 9, "Irrelevant")]), {"id": 5, "data": {}}, text_schema, text=other)
    assert fb.irrelevant.tolist() == [False, True, False]


def test_text_evidence_kept_is_accepted(text_schema):
    ann = annotation([choice("Positive", to_name="text"), span(TEXT, 14, 19, "Model evidence")])
    fb = parse_annotation(ann, text_task(), text_schema, max_len=32)
    assert (fb.label, fb.irrelevant, fb.kind) == (0, None, "accepted")


# --- errors ----------------------------------------------------------------------------


def test_cancelled_annotation_raises_a_feedback_error(image_schema):
    ann = annotation([choice("Class A")], was_cancelled=True)
    with pytest.raises(CancelledAnnotation, match="cancelled"):
        parse_annotation(ann, TASK, image_schema)
    assert issubclass(CancelledAnnotation, FeedbackError)


def test_unknown_label_is_an_error(image_schema):
    with pytest.raises(FeedbackError, match="'Dog' is not one of"):
        parse_annotation(annotation([choice("Dog")]), TASK, image_schema)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda r: r["value"].update(rle=[1, 2, 3]), "bad brush RLE"),
        (lambda r: r["value"].update(rle=r["value"]["rle"][:-4]), "bad brush RLE"),
        (lambda r: r.update(original_width=99), "bad brush RLE"),
        (lambda r: r.pop("original_height"), "original_width/original_height"),
        (lambda r: r["value"].pop("rle"), "without RLE"),
        (lambda r: r["value"].pop("brushlabels"), "brushlabels"),
    ],
)
def test_malformed_brush_results_are_errors(image_schema, mutate, match):
    result = brush(np.random.default_rng(0).random((16, 16)) < 0.5, "Irrelevant")
    mutate(result)
    with pytest.raises(FeedbackError, match=match):
        parse_annotation(annotation([result]), TASK, image_schema, image_size=8)


@pytest.mark.parametrize(
    "ann,match",
    [
        ({"id": "x", "result": []}, "integer 'id'"),
        ({"id": 1, "result": "nope"}, "must be a list"),
        ({"id": 1, "result": [5]}, "must be an object"),
        ({"id": 1, "result": [{"from_name": "label", "type": "choices", "value": {}}]}, "value.choices"),
        (
            {
                "id": 1,
                "result": [{"from_name": "label", "type": "choices", "value": {"choices": ["Class A", "Class B"]}}],
            },
            "one choice",
        ),
    ],
)
def test_malformed_annotations_are_errors(image_schema, ann, match):
    with pytest.raises(FeedbackError, match=match):
        parse_annotation(ann, TASK, image_schema)


def test_bad_spans_are_errors(text_schema):
    for start, end in [(5, 5), (-1, 3), (0, len(TEXT) + 1), ("0", 3)]:
        result = span(TEXT, 0, 3, "Irrelevant")
        result["value"].update(start=start, end=end)
        with pytest.raises(FeedbackError, match="span"):
            parse_annotation(annotation([result]), text_task(), text_schema)


def test_missing_text_is_an_error(text_schema):
    with pytest.raises(FeedbackError, match="no text field"):
        parse_annotation(annotation([span(TEXT, 0, 3, "Irrelevant")]), {"id": 5, "data": {}}, text_schema)


def test_task_id_falls_back_to_annotation_task(image_schema):
    fb = parse_annotation(annotation([choice("Class A")], task_id=42), {}, image_schema)
    assert fb.task_id == 42
    with pytest.raises(FeedbackError, match="task id"):
        parse_annotation({"id": 1, "result": []}, {}, image_schema)


def test_feedback_counts(image_schema):
    items = [
        parse_annotation(annotation([choice("Class A")]), TASK, image_schema),
        parse_annotation(annotation([choice("Class A")]), TASK, image_schema),
        parse_annotation(annotation([choice("Class A"), brush(quadrant(), "Irrelevant")]), TASK, image_schema),
    ]
    assert feedback_counts(items) == {
        "accepted": 0,
        "label_only": 2,
        "irrelevant": 1,
        "relevant": 0,
        "irrelevant+relevant": 0,
    }
    assert feedback_counts([]) == dict.fromkeys(feedback_counts([]), 0)


def test_a_brush_mask_declaring_a_huge_size_is_refused_before_decoding(image_schema):
    """55 KB of RLE can declare a 16384 x 16384 mask (1 GB decoded): refused from the header."""
    region = {"from_name": "evidence", "to_name": "image", "type": "brushlabels", "original_width": 16384,
              "original_height": 16384, "value": {"format": "rle", "rle": rle.encode(np.zeros((8, 8), bool)),
                                                  "brushlabels": ["Irrelevant"]}}
    annotation = {"id": 1, "task": 1, "result": [region]}
    with pytest.raises(FeedbackError, match="16384 x 16384 pixels is over the limit"):
        parse_annotation(annotation, {"id": 1, "data": {}}, image_schema, image_size=64)
