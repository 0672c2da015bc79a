"""Counterfactual on demand (issue 16): the regions an annotator draws in ``params.context`` get the
prediction without them (Irrelevant) or with only them (Relevant), its evidence, and a read-only
summary; an empty context keeps today's answer, and a bad one is a clear 4xx, never a 500."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings, Settings
from ml_backend.data.fetch import Fetcher
from ml_backend.data.prepare import prepare_task
from ml_backend.data.text import token_id
from ml_backend.explain.counterfactual import donor_bank, replaced_positions
from ml_backend.feedback.parse import parse_annotation
from ml_backend.interactive import render_counterfactual
from ml_backend.labelstudio import rle
from ml_backend.labelstudio.interactive import ContextError, Marks, context_marks, interactive_schema
from ml_backend.labelstudio.schema import parse_label_config
from ml_backend.models import adapt
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.common import ImageKind, TextKind
from ml_backend.models.text import TextCNN
from ml_backend.project import make_context
from ml_backend.store import LoadedModel, ProjectStore
from tests.support.live import ls_task, png_data_uri, predict_body

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"
SIDE, CORNER = 32, 8  # original image side; the bright corner that decides the class (4 x 4 on the 16 px input)
WORD = "xqz"  # the word that decides the text class


# --- two tiny models whose reasons are known ---------------------------------------------------------------

class CornerNet(nn.Module):
    """Class B exactly when the top-left quarter-by-quarter corner of the input is bright."""

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.config = {"n_classes": 2, "image_size": size}
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] // 4
        b = self.scale * (x[:, :, :side, :side].mean(dim=(1, 2, 3)) - 0.8)
        return torch.stack([torch.zeros_like(b), b], dim=1)


class CornerKind(ImageKind):  # no name: not registered
    network_class = CornerNet


class WordNet(nn.Module):
    """Class "Positive" exactly when the text holds WORD."""

    def __init__(self, n_buckets: int = 1000, max_len: int = 16) -> None:
        super().__init__()
        self.config = {"n_classes": 2, "max_len": max_len, "n_buckets": n_buckets}
        self.embedding = nn.Embedding(n_buckets, 1)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[token_id(WORD, n_buckets)] = 1.0

    def forward_embedded(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = 10.0 * ((emb[..., 0] * mask).sum(dim=1) - 0.5)
        return torch.stack([b, torch.zeros_like(b)], dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embedding(ids), ids != 0)


class WordKind(TextKind):
    network_class = WordNet


def config(name: str) -> str:
    return (ROOT / "label_config" / f"{name}_classification_evidence.xml").read_text()


def corner_image(bright: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 40, (SIDE, SIDE, 3))
    if bright:
        img[:CORNER, :CORNER] = 255
    return img.astype(np.uint8)


def mask(rows: slice, cols: slice, shape: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def brush(label: str, marked: np.ndarray, from_name: str = "evidence") -> dict:
    """A brush region as Label Studio's labeling UI serializes it into ``context.result``."""
    height, width = marked.shape
    return {"id": "drawn1", "from_name": from_name, "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
            "value": {"format": "rle", "rle": rle.encode(marked), "brushlabels": [label]}}


def span(label: str, text: str, word: str) -> dict:
    start = text.index(word)
    return {"id": "drawn2", "from_name": "evidence", "to_name": "text", "type": "labels", "origin": "manual",
            "value": {"start": start, "end": start + len(word), "text": word, "labels": [label]}}


def counterfactual_of(kind_model, label_config: str, data: dict, regions: list[dict], attribution: str = "saliency",
                      donors: torch.Tensor | None = None):
    ctx = make_context("2", label_config, ProjectSettings().with_overrides({"attribution": attribution}))
    loaded = LoadedModel("v1", kind_model, ctx.schema.classes, donors=donors)
    kind_model.network.eval()
    item = prepare_task(ctx.schema, kind_model, ls_task(1, data), Fetcher(Settings()))
    return render_counterfactual(ctx, loaded, item, context_marks({"result": regions}, ctx.schema))


# --- the core ------------------------------------------------------------------------------------------------

def test_replaced_positions_are_irrelevant_marks_and_all_but_relevant_ones():
    irrelevant = np.array([True, False, False, False])
    relevant = np.array([False, False, True, True])
    assert replaced_positions(irrelevant, None, (4,)).tolist() == [True, False, False, False]
    assert replaced_positions(None, relevant, (4,)).tolist() == [True, True, False, False]
    assert replaced_positions(irrelevant, relevant, (4,)).tolist() == [True, True, False, False]
    assert not replaced_positions(None, None, (4,)).any()
    with pytest.raises(ValueError, match="does not fit"):
        replaced_positions(np.ones(3, dtype=bool), None, (4,))


# --- images ----------------------------------------------------------------------------------------------------

def test_irrelevant_region_removed_changes_the_class_and_says_so():
    item = counterfactual_of(CornerKind(CornerNet()), config("image"), {"image": png_data_uri(corner_image())},
                             [brush("Irrelevant", mask(slice(0, CORNER), slice(0, CORNER)))])
    facts = item["counterfactual"]
    assert facts["mode"] == "without" and facts["changed"] is True
    assert facts["before"]["label"] == "Class B" and facts["before"]["score"] > 0.9
    assert facts["after"]["label"] == "Class A" and item["score"] == facts["after"]["score"]
    assert not [r for r in item["result"] if r["type"] == "choices"], "the annotator's choice must not be touched"
    [text] = [r for r in item["result"] if r["type"] == "textarea"]
    assert text["from_name"] == "counterfactual" and text["to_name"] == "image" and text["readonly"] is True
    line = text["value"]["text"][0]
    assert "Without the Irrelevant" in line and "Class A" in line and "was Class B" in line and "class changes" in line


def test_the_removed_region_is_filled_from_the_versions_donors():
    """A bright donor bank refills the bright corner: the class stays; random values (no bank) lose it."""
    image = {"image": png_data_uri(corner_image())}
    corner = [brush("Irrelevant", mask(slice(0, CORNER), slice(0, CORNER)))]
    bright = torch.ones(4, 3, 16, 16)
    kept = counterfactual_of(CornerKind(CornerNet()), config("image"), image, corner, donors=bright)
    assert kept["counterfactual"]["after"]["label"] == "Class B" and kept["counterfactual"]["changed"] is False
    lost = counterfactual_of(CornerKind(CornerNet()), config("image"), image, corner, donors=None)
    assert lost["counterfactual"]["after"]["label"] == "Class A"
    # a bank of another input size (an older version, another image_size) is not used
    odd = counterfactual_of(CornerKind(CornerNet()), config("image"), image, corner, donors=torch.ones(4, 3, 8, 8))
    assert odd["counterfactual"]["after"]["label"] == "Class A"


def test_donor_bank_draws_from_every_class():
    x = torch.arange(20, dtype=torch.float32)[:, None]
    y = torch.tensor([0] * 16 + [1] * 3 + [2])
    bank = donor_bank(x, y, 6, seed=1)
    classes = y[bank[:, 0].long()]
    assert len(bank) == 6 and set(classes.tolist()) == {0, 1, 2} and len(set(bank[:, 0].tolist())) == 6
    assert torch.equal(bank, donor_bank(x, y, 6, seed=1))
    multi_hot = torch.nn.functional.one_hot(y, 3).float()
    assert set(y[donor_bank(x, multi_hot, 3)[:, 0].long()].tolist()) == {0, 1, 2}
    assert len(donor_bank(x, y, 50)) == 20 and len(donor_bank(x, y, 0)) == 0


def test_a_version_keeps_its_donors(tmp_path):
    store = ProjectStore(tmp_path, "2")
    model = adapt(ImageCNN(2, image_size=16))
    donors = torch.rand(5, 3, 16, 16)
    with_bank = store.publish(model, ("Class A", "Class B"), {}, donors=donors)
    without = store.publish(model, ("Class A", "Class B"), {})
    loaded = store.load(with_bank).donors
    assert loaded.dtype == torch.float32 and torch.allclose(loaded, donors, atol=1e-3)
    assert store.load(without).donors is None
    assert store.load(with_bank, donors=False).donors is None  # training and ranking do not read them
    (store.versions_dir / "v1" / "donors.pt").write_bytes(b"not a tensor")
    assert store.load(with_bank).donors is None  # a damaged bank never keeps the version from serving


def test_irrelevant_region_elsewhere_keeps_the_class():
    item = counterfactual_of(CornerKind(CornerNet()), config("image"), {"image": png_data_uri(corner_image())},
                             [brush("Irrelevant", mask(slice(16, 32), slice(16, 32)))])
    assert item["counterfactual"]["after"]["label"] == "Class B" and item["counterfactual"]["changed"] is False
    assert "same class" in item["result"][0]["value"]["text"][0]


def test_relevant_region_alone_is_sufficient_and_its_evidence_lands_at_original_coordinates():
    item = counterfactual_of(CornerKind(CornerNet()), config("image"), {"image": png_data_uri(corner_image())},
                             [brush("Relevant", mask(slice(0, 12), slice(0, 12)))])
    facts = item["counterfactual"]
    assert facts["mode"] == "only" and facts["after"]["label"] == "Class B" and facts["changed"] is False
    assert "the marked part suffices" in item["result"][0]["value"]["text"][0]
    regions = [r for r in item["result"] if r["type"] == "brushlabels"]
    assert regions, "the evidence recomputed on the counterfactual input is missing"
    for region in regions:
        assert region["value"]["brushlabels"] == ["Counterfactual evidence"] and region["readonly"] is True
        assert (region["original_width"], region["original_height"]) == (SIDE, SIDE)
        assert region["id"].startswith("counterfactual-")
    shown = np.zeros((SIDE, SIDE), dtype=bool)
    for region in regions:
        shown |= rle.decode(region["value"]["rle"], SIDE, SIDE) > 0
    assert shown[:CORNER, :CORNER].any()  # the evidence mass kept (20%) covers part of the decisive corner
    assert not shown[CORNER + 4:, :].any() and not shown[:, CORNER + 4:].any()


def test_relevant_region_without_the_decisive_part_changes_the_class():
    item = counterfactual_of(CornerKind(CornerNet()), config("image"), {"image": png_data_uri(corner_image())},
                             [brush("Relevant", mask(slice(12, 32), slice(12, 32)))])
    assert item["counterfactual"]["after"]["label"] == "Class A" and item["counterfactual"]["changed"] is True


def test_the_same_marks_give_the_same_answer():
    data = {"image": png_data_uri(corner_image())}
    regions = [brush("Irrelevant", mask(slice(0, 16), slice(0, 16)))]
    first = counterfactual_of(CornerKind(CornerNet()), config("image"), data, regions)
    assert counterfactual_of(CornerKind(CornerNet()), config("image"), data, regions) == first


# --- multi-label ---------------------------------------------------------------------------------------------------

class TwoCornersNet(CornerNet):
    """Multi-label: Class A when the top-left corner is bright, Class B when the bottom-right one is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] // 4
        corners = torch.stack([x[:, :, :side, :side].mean(dim=(1, 2, 3)), x[:, :, -side:, -side:].mean(dim=(1, 2, 3))],
                              dim=1)
        return self.scale * (corners - 0.8)


class TwoCornersKind(ImageKind):
    network_class = TwoCornersNet


def two_corners_counterfactual(regions: list[dict]) -> dict:
    img = corner_image()
    img[-CORNER:, -CORNER:] = 255
    model = TwoCornersKind(TwoCornersNet())
    model.multi_label = True
    multi = config("image").replace('choice="single"', 'choice="multiple"')
    return counterfactual_of(model, multi, {"image": png_data_uri(img)}, regions)


def test_multi_label_irrelevant_region_removes_its_class_and_keeps_the_other():
    item = two_corners_counterfactual([brush("Irrelevant", mask(slice(0, CORNER), slice(0, CORNER)))])
    facts = item["counterfactual"]
    assert facts["before"]["labels"] == ["Class A", "Class B"] and facts["after"]["labels"] == ["Class B"]
    assert facts["changed"] is True and facts["after"]["scores"]["Class A"] < 0.5 < facts["after"]["scores"]["Class B"]
    assert 0.5 <= item["score"] <= 1.0 and not [r for r in item["result"] if r["type"] == "choices"]
    line = item["result"][0]["value"]["text"][0]
    assert re.search(r": Class B 0\.9\d \(was Class A 0\.9\d, Class B 0\.9\d\); no longer Class A\.", line), line
    regions = [r for r in item["result"] if r["type"] == "brushlabels"]
    assert regions and all(r["value"]["brushlabels"] == ["Counterfactual evidence"] and r["readonly"] for r in regions)
    assert {r["meta"]["text"][0] for r in regions} == {"evidence for Class B"}  # only the class served after
    shown = np.zeros((SIDE, SIDE), dtype=bool)
    for region in regions:
        shown |= rle.decode(region["value"]["rle"], SIDE, SIDE) > 0
    assert shown[-CORNER:, -CORNER:].any() and not shown[:SIDE // 2, :SIDE // 2].any()


def test_multi_label_relevant_region_alone_keeps_only_its_class():
    item = two_corners_counterfactual([brush("Relevant", mask(slice(0, 12), slice(0, 12)))])
    facts = item["counterfactual"]
    assert facts["mode"] == "only" and facts["after"]["labels"] == ["Class A"] and facts["changed"] is True
    assert "no longer Class B" in item["result"][0]["value"]["text"][0]
    untouched = two_corners_counterfactual([brush("Irrelevant", mask(slice(16, 24), slice(0, 8)))])
    assert untouched["counterfactual"]["changed"] is False
    assert "same classes" in untouched["result"][0]["value"]["text"][0]


# --- text --------------------------------------------------------------------------------------------------------

TEXT = f"the plot was fine and {WORD} the actor was good"


def test_irrelevant_word_removed_changes_the_text_class():
    item = counterfactual_of(WordKind(WordNet()), config("text"), {"text": TEXT}, [span("Irrelevant", TEXT, WORD)])
    facts = item["counterfactual"]
    assert (facts["before"]["label"], facts["after"]["label"], facts["changed"]) == ("Positive", "Negative", True)
    assert [r["type"] for r in item["result"]][0] == "textarea"
    assert not [r for r in item["result"] if r["type"] == "choices"]


def test_relevant_word_alone_keeps_the_text_class_and_its_evidence_is_that_word():
    item = counterfactual_of(WordKind(WordNet()), config("text"), {"text": TEXT}, [span("Relevant", TEXT, WORD)],
                             attribution="gradcam")  # on tokens: input x gradient
    assert item["counterfactual"]["after"]["label"] == "Positive" and item["counterfactual"]["mode"] == "only"
    spans = [r for r in item["result"] if r["type"] == "labels"]
    assert [s["value"]["text"] for s in spans] == [WORD]
    assert spans[0]["value"]["labels"] == ["Counterfactual evidence"] and spans[0]["readonly"] is True
    assert TEXT[spans[0]["value"]["start"]:spans[0]["value"]["end"]] == WORD


def test_irrelevant_word_elsewhere_keeps_the_text_class():
    item = counterfactual_of(WordKind(WordNet()), config("text"), {"text": TEXT}, [span("Irrelevant", TEXT, "plot")])
    assert item["counterfactual"]["after"]["label"] == "Positive" and not item["counterfactual"]["changed"]


# --- the label configs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["image", "text"])
def test_shipped_configs_carry_the_counterfactual_text_and_label(name):
    label_config = config(name)
    where = interactive_schema(label_config, parse_label_config(label_config))
    assert (where.text_name, where.evidence_label) == ("counterfactual", "Counterfactual evidence")
    assert 'smart="true"' in label_config  # the evidence control asks the backend while the annotator draws


def test_a_config_without_them_still_gets_the_facts():
    label_config = (SUPPORT / "image_evidence_no_counterfactual.xml").read_text()
    item = counterfactual_of(CornerKind(CornerNet()), label_config, {"image": png_data_uri(corner_image())},
                             [brush("Irrelevant", mask(slice(0, CORNER), slice(0, CORNER)))])
    assert item["result"] == [] and item["counterfactual"]["changed"] is True


def test_submitted_counterfactual_results_are_not_feedback():
    """Label Studio accepts the TextArea suggestion into the annotation; submitted, it teaches nothing."""
    schema = parse_label_config(config("image"))
    item = counterfactual_of(CornerKind(CornerNet()), config("image"), {"image": png_data_uri(corner_image())},
                             [brush("Relevant", mask(slice(0, 12), slice(0, 12)))])
    choice = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["Class B"]}}
    feedback = parse_annotation({"id": 5, "result": [choice, *item["result"]]}, {"id": 1}, schema, image_size=16)
    assert feedback.kind == "label_only" and feedback.irrelevant is None and feedback.relevant is None


# --- over /predict: empty, malformed ----------------------------------------------------------------------------

@pytest.fixture
def client(settings):
    for name, project, network in (("image", "2", ImageCNN(2, image_size=32)), ("text", "3", TextCNN(2))):
        torch.manual_seed(0)
        schema = parse_label_config(config(name))
        ProjectStore(settings.model_dir, project).publish(adapt(network), schema.classes, {"source": "test"})
    return create_app(settings).test_client()


def image_body(context, tasks=None):
    body = predict_body(tasks or [ls_task(1, {"image": png_data_uri(corner_image())})], config("image"))
    body["params"]["context"] = context
    return body


@pytest.mark.parametrize("context", [None, {}, {"result": []}, {"result": None},
                                     {"result": [{"from_name": "label", "type": "choices",
                                                  "value": {"choices": ["Class A"]}}]},
                                     {"result": [brush("Model evidence", mask(slice(0, 8), slice(0, 8)))]},
                                     {"result": [brush("Irrelevant", np.zeros((SIDE, SIDE), dtype=bool))]}])
def test_a_context_without_marks_keeps_todays_answer(client, context):
    today = client.post("/predict", json=image_body(None)).get_json()
    response = client.post("/predict", json=image_body(context))
    assert response.status_code == 200 and response.get_json() == today
    assert [r["type"] for r in today["results"][0]["result"]][0] == "choices"


def test_interactive_answer_over_predict_for_the_real_cnn(client):
    context = {"result": [brush("Irrelevant", mask(slice(0, 16), slice(0, 16)))]}
    response = client.post("/predict", json=image_body(context))
    assert response.status_code == 200
    [item] = response.get_json()["results"]
    today = client.post("/predict", json=image_body(None)).get_json()["results"][0]
    assert item["model_version"] == today["model_version"] != "untrained"
    assert set(item["counterfactual"]) == {"mode", "before", "after", "changed"}
    assert {r["type"] for r in item["result"]} <= {"textarea", "brushlabels"} and item["result"][0]["readonly"]


def test_interactive_answer_for_text_over_predict(client):
    body = predict_body([ls_task(1, {"text": TEXT})], config("text"), project="3.1795343946")
    body["params"]["context"] = {"result": [span("Irrelevant", TEXT, WORD)]}
    response = client.post("/predict", json=body)
    assert response.status_code == 200 and response.get_json()["results"][0]["counterfactual"]["mode"] == "without"


@pytest.mark.parametrize("context, message", [
    ("just text", "params.context must be an object"),
    ([{"result": []}], "params.context must be an object"),
    ({"result": {"id": 1}}, "must be a list"),
    ({"result": ["region"]}, "must be a region object"),
    ({"result": [{"from_name": "evidence", "type": "brushlabels", "value": "Irrelevant"}]}, "value.brushlabels"),
    ({"result": [{"from_name": "evidence", "value": {"brushlabels": "Irrelevant"}}]}, "value.brushlabels"),
    ({"result": [{}] * 101}, "at most 100"),
])
def test_a_malformed_context_is_a_400(client, context, message):
    response = client.post("/predict", json=image_body(context))
    assert response.status_code == 400 and message in response.get_json()["error"]


def _region(**changes) -> dict:
    region = brush("Irrelevant", mask(slice(0, 8), slice(0, 8)))
    value = changes.pop("value", None)
    region.update(changes)
    if value is not None:
        region["value"] = {**region["value"], **value}
    return region


@pytest.mark.parametrize("region, message", [
    (_region(original_width=64), "drawn on a 64 x 32 image, but the task's image is 32 x 32"),
    (_region(original_width=None), "original_width/original_height"),
    (_region(value={"rle": [1, 2, 3]}), "bad brush RLE"),
    (_region(value={"rle": None, "format": "png"}), "without RLE data"),
    (_region(original_width=10 ** 6, original_height=10 ** 6), "drawn on a"),
])
def test_a_malformed_region_is_a_422_naming_it(client, region, message):
    response = client.post("/predict", json=image_body({"result": [region]}))
    assert response.status_code == 422 and message in response.get_json()["error"]


def test_a_span_outside_the_text_is_a_422(client):
    body = predict_body([ls_task(1, {"text": TEXT})], config("text"), project="3.1795343946")
    bad = span("Irrelevant", TEXT, WORD)
    bad["value"].update(start=500, end=510)
    body["params"]["context"] = {"result": [bad]}
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and "span needs integer start < end" in response.get_json()["error"]


def test_marks_with_several_tasks_are_a_400(client):
    task = ls_task(1, {"image": png_data_uri(corner_image())})
    body = image_body({"result": [_region()]}, [task, dict(task, id=2)])
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "one task" in response.get_json()["error"]


def test_marks_on_an_unreadable_task_or_an_untrained_project_keep_todays_answer(client, settings):
    tasks = [ls_task(1, {"image": "data:image/png;base64,bm90"})]
    today = client.post("/predict", json=image_body(None, tasks)).get_json()
    response = client.post("/predict", json=image_body({"result": [_region()]}, tasks))
    assert response.status_code == 200 and response.get_json() == today
    untrained = image_body({"result": [_region()]})
    untrained["project"] = "9.1795343946"
    assert client.post("/predict", json=untrained).get_json()["results"][0]["model_version"] == "untrained"


def test_context_marks_reads_only_the_evidence_controls_marks():
    schema = parse_label_config(config("image"))
    marks = context_marks({"result": [_region(), brush("Relevant", mask(slice(0, 4), slice(0, 4))),
                                      brush("Irrelevant", mask(slice(0, 4), slice(0, 4)), from_name="other")]},
                          schema)
    assert len(marks.irrelevant) == 1 and len(marks.relevant) == 1 and marks.mode == "without+only"
    assert not Marks() and Marks().mode == ""
    with pytest.raises(ContextError):
        context_marks(3, schema)
