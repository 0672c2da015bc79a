"""Publishing a ranking to Label Studio: one prediction per task, with its score, in bulk.

The client is passed in (anything with ``import_predictions``, ``update_prediction`` and
``delete_prediction``) and so is the ledger of what was pushed before (``load`` / ``save``
callables), so this runs against a fake client in tests.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

Progress = Callable[[float, str], None]
PUSH_BATCH = 200


def _quiet(fraction: float, message: str = "") -> None:
    pass


def result_digest(result: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]


def push_predictions(client: Any, project: int, version: str, ids: list[int], scores: np.ndarray, spool: Path,
                     ledger: dict[str, Any], save_ledger: Callable[[dict[str, Any]], None],
                     progress: Progress = _quiet) -> tuple[int, int]:
    """Post each task's prediction with its score; skip those Label Studio already has unchanged.

    A task that already has a prediction of this version (ranked before: new tasks shift every
    rank-based score; or served by /predict, whose score is the confidence) gets that prediction
    updated and any other of the version removed: Label Studio's uncertainty sampling orders by
    the scores of all the task's predictions of the project's model_version, so one per task.
    ``ledger`` (task id -> [version, score, result digest, prediction id]) is updated in place and
    saved after every bulk request. Returns (pushed, unchanged)."""
    score_of = {task_id: float(s) for task_id, s in zip(ids, scores)}
    pushed = unchanged = 0
    creates: list[dict[str, Any]] = []

    def flush() -> None:
        if creates:  # one request per batch: a large project would otherwise take a request per task
            client.import_predictions(project, creates)
            creates.clear()
            save_ledger(ledger)

    with spool.open() as lines:
        for n, line in enumerate(lines):
            item = json.loads(line)
            task_id = item["task"]
            score = score_of[task_id]
            key = [version, round(score, 6), result_digest(item["result"])]
            before = ledger.get(str(task_id)) or []
            existing = list(item.get("existing") or [])  # Label Studio's own view, read while ranking
            if before[:3] == key and len(existing) == 1 and before[3:4] in ([None], existing):
                unchanged += 1
                continue
            prediction_id = None
            if existing:
                updated = client.update_prediction(existing[0], item["result"], score=score)
                prediction_id = (updated or {}).get("id")
                for extra in existing[1:]:
                    client.delete_prediction(extra)
            if prediction_id is None:
                creates.append({"task": task_id, "result": item["result"], "score": score, "model_version": version})
            ledger[str(task_id)] = [*key, prediction_id]
            pushed += 1
            if len(creates) >= PUSH_BATCH:
                flush()
                progress(0.65 + 0.3 * n / max(len(ids), 1), f"pushed {pushed} predictions")
    flush()
    save_ledger(ledger)
    return pushed, unchanged
