"""Unreadable task data (an image that cannot be fetched or decoded, empty text): no prediction, in
/predict and in the ranking job, so it never sorts as the most informative task; its reason is
logged once per task, not on every request."""
from __future__ import annotations

import logging

import pytest
from skimage import data as skdata

from ml_backend.app import create_app
from ml_backend.config import ProjectSettings, Settings
from ml_backend.data.fetch import Fetcher
from ml_backend.data.unreadable import UnreadableLog
from ml_backend.jobs.rank import drop_unreadable
from ml_backend.models import adapt
from ml_backend.models.text import TextCNN
from ml_backend.project import make_context
from ml_backend.ranking.score import rank_tasks
from ml_backend.store import ProjectStore
from tests.support.live import ls_task, png_data_uri, predict_body

BROKEN = "data:image/png;base64,bm90IGFuIGltYWdl"


def test_the_log_remembers_a_reason_per_task_and_forgets_the_oldest():
    seen = UnreadableLog(capacity=2)
    assert seen.first("2", 1, "404") and not seen.first("2", 1, "404")
    assert seen.first("2", 1, "timeout")  # a new reason is news
    assert seen.first("3", 1, "timeout")  # another project's task 1
    assert seen.first("2", 2, "404")  # (2, 1) is forgotten now
    assert seen.first("2", 1, "timeout")
    seen.forget("2", 1)
    assert seen.first("2", 1, "timeout")


def test_predict_logs_an_unreadable_task_once(settings, image_config, caplog):
    from tests.test_api_contract import publish

    publish(settings, image_config)
    client = create_app(settings).test_client()
    good = png_data_uri(skdata.camera()[::8, ::8])
    tasks = [ls_task(901, {"image": BROKEN}), ls_task(902, {"image": good})]
    with caplog.at_level(logging.DEBUG, logger="ml_backend.data.unreadable"):
        for _ in range(3):
            results = client.post("/predict", json=predict_body(tasks, image_config)).get_json()["results"]
            assert results[0] == [] and results[1]["result"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "task 901" in r.getMessage()]
    assert len(warnings) == 1 and "cannot read data" in warnings[0].getMessage()


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_gets_no_prediction(settings, text_config, text):
    from tests.test_api_contract import publish

    publish(settings, text_config)
    client = create_app(settings).test_client()
    tasks = [ls_task(1, {"text": text}), ls_task(2, {"text": "a fine film"})]
    results = client.post("/predict", json=predict_body(tasks, text_config)).get_json()["results"]
    assert results[0] == [] and results[1]["result"][0]["type"] == "choices"


class DeletingClient:
    def __init__(self) -> None:
        self.deleted: list[int] = []

    def delete_prediction(self, prediction_id: int) -> None:
        self.deleted.append(prediction_id)


def test_ranking_leaves_unreadable_tasks_out_and_removes_their_stale_predictions(tmp_path, text_config, caplog):
    ctx = make_context("2", text_config, ProjectSettings(acquisition="entropy"))
    store = ProjectStore(tmp_path / "models", "2")
    version = store.publish(adapt(TextCNN(ctx.schema.n_classes)), ctx.schema.classes, {})
    loaded = store.load(version)
    stale = {"id": 77, "model_version": version}
    tasks = [ls_task(1, {"text": "good and fine"}), {**ls_task(2, {"text": ""}), "predictions": [stale]},
             ls_task(3, {"text": "bad and slow"}), ls_task(4, {"other": "no text field"})]
    unreadable: dict = {}
    ids, values, scores = rank_tasks(ctx, loaded, iter(tasks), Fetcher(Settings()), tmp_path / "spool.jsonl",
                                     unreadable=unreadable)
    assert ids == [1, 3] and len(values) == len(scores) == 2
    assert sorted(unreadable) == [2, 4] and unreadable[2]["existing"] == [77] and "empty" in unreadable[2]["reason"]
    client = DeletingClient()
    with caplog.at_level(logging.WARNING, logger="ml_backend.jobs.rank"):
        assert drop_unreadable(client, "2", unreadable, {}) == 1 and client.deleted == [77]
        before = {str(t): item["reason"] for t, item in unreadable.items()}
        drop_unreadable(client, "2", unreadable, before)  # the next ranking: same reasons, not logged again
    assert sorted(r.getMessage().split(" task ")[1].split(":")[0] for r in caplog.records) == ["2", "4"]
