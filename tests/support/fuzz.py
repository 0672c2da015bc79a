"""Hostile variations of Label Studio payloads, for the fuzz test and the fuzz benchmark."""
from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import requests

from tests.support.live import annotation_webhook, brush, choice, ls_task, png_data_uri, predict_body, setup_body

ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
           "START_TRAINING", "TASKS_CREATED", "PROJECT_UPDATED", "\ud800", "", "x" * 300]

HOSTILE: list[Any] = [None, True, False, 0, -1, 2 ** 63, 2 ** 64, 1e308, -1e308, 0.5, "", " ", "\ud800", "\x00",
                      "a/b", "../../etc/passwd", "1;DROP", "x" * 300, "http://[", "data:image/png;base64,AAAA",
                      [], [1], [None], {}, {"id": None}, {"id": "x"}, [[[[[]]]]], {"a": {"b": {"c": {}}}},
                      "Infinity", "NaN", "v1/../../6", "<xml", "{\"id\": 2, \"token\": \"secret\"}"]
RAW_BODIES = [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"a": NaN}', b'{"a": Infinity}', b"[" * 5000 + b"]" * 5000,
              b'{"action": "\\ud800"}', b"1" * 1000]


def hostile(rng: random.Random) -> Any:
    return rng.choice(HOSTILE) if rng.random() < 0.85 else rng.choice([[rng.choice(HOSTILE)], {"x": rng.choice(HOSTILE)}])


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """The value with some of its leaves or fields replaced (or dropped) at random."""
    if rng.random() < 0.15 or depth > 6:
        return hostile(rng)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < 0.05:
                continue  # dropped
            out[key] = mutate(item, rng, depth + 1) if roll < 0.5 else item
        if rng.random() < 0.1:
            out[rng.choice(["extra", "id", "project", "task", "result"])] = hostile(rng)
        return out
    if isinstance(value, list):
        return [mutate(item, rng, depth + 1) for item in value] if value else [hostile(rng)]
    return value


def templates(image_config: str, text_config: str) -> list[tuple[str, str, Any]]:
    task = ls_task(1, {"image": png_data_uri(np.zeros((8, 8, 3), dtype=np.uint8))})
    region = brush(np.eye(8, dtype=bool), "Irrelevant")
    annotation = annotation_webhook("ANNOTATION_CREATED", 7, task, [choice("Class A"), region], image_config)
    out: list[tuple[str, str, Any]] = [
        ("post", "/setup", setup_body(image_config, extra_params={"epochs": 2})),
        ("post", "/predict", predict_body([task], image_config)),
        ("post", "/predict", predict_body([ls_task(2, {"text": "a fine film"})], text_config)),
        ("post", "/versions/rollback", {"project": 2, "version": "v1"}),
        ("get", "/versions", {"project": "2"}),
        ("get", "/status", {"project": "2"}),
        ("get", "/queue", {"project": "2", "page": "1", "page_size": "10"}),
        ("get", "/dashboard", {}),
    ]
    for action in ACTIONS:
        out.append(("post", "/webhook", {**annotation, "action": action}))
    out.append(("post", "/webhook", {"action": "ANNOTATIONS_DELETED", "project": {"id": 2},
                                     "annotations": [{"id": 7}]}))
    return out


def fuzz(url: str, session: requests.Session, cases: list[tuple[str, str, Any]], n: int, seed: int
         ) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
    """Send ``n`` hostile requests; (count per status, the 5xx answers). Every 4xx must be JSON
    with an error message (AssertionError otherwise)."""
    rng = random.Random(seed)
    failures, statuses = [], {}
    for _ in range(n):
        method, path, template = rng.choice(cases)
        if method == "get":
            params = {k: (v if rng.random() < 0.5 else json.dumps(hostile(rng))[:300]) for k, v in template.items()}
            response = session.get(url + path, params=params, timeout=30)
        elif rng.random() < 0.08:
            response = session.post(url + path, data=rng.choice(RAW_BODIES),
                                    headers={"Content-Type": "application/json"}, timeout=30)
        else:
            body = json.dumps(mutate(template, rng))  # json escapes lone surrogates
            response = session.post(url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append((path, response.status_code, response.text[:300]))
        elif response.status_code >= 400:
            assert response.headers["Content-Type"].startswith("application/json"), (path, response.text[:200])
            assert "error" in response.json()
    return statuses, failures
