#!/usr/bin/env python3
"""HTTP checks of a running backend (the container check's last step; standard library only, so the
host's python3 runs it without the project's venv).

    python3 scripts/container_smoke.py --url http://127.0.0.1:9090 \
        --label-config label_config/image_classification_evidence.xml [--secret-env WEBHOOK_SECRET]

Checks, in order: GET /health answers 200; POST /setup for one project answers a model version;
POST /predict for one image task answers one prediction; POST /webhook with an ANNOTATION_CREATED
payload in Label Studio 1.23.2's format is acknowledged; then (unless --no-train) the model that
annotation trains in the server is published and /predict answers a class from it. Exits 1 with the
failing step's answer on the first failure.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

PROJECT_ID = 2
PROJECT = f"{PROJECT_ID}.1795343946"  # "<id>.<created-at timestamp>", as Label Studio sends it


class CheckFailed(Exception):
    pass


def png_data_uri(width: int = 32, height: int = 32) -> str:
    """A small RGB gradient as a data: URI (PNG written with zlib: no Pillow on the host needed)."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in ((x * 8) % 256, (y * 8) % 256, 128))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def task(task_id: int) -> dict:
    """A task as Label Studio 1.23.2 sends it to /predict."""
    stamp = "2026-11-22T10:00:00.000000Z"
    return {"id": task_id, "data": {"image": png_data_uri()}, "meta": {}, "created_at": stamp, "updated_at": stamp,
            "is_labeled": False, "overlap": 1, "inner_id": task_id, "total_annotations": 0,
            "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": PROJECT_ID, "updated_by": [], "file_upload": None,
            "comment_authors": [], "annotations": [], "predictions": []}


def annotation_created(annotation_id: int, the_task: dict, label: str, label_config: str) -> dict:
    """ANNOTATION_CREATED as Label Studio 1.23.2 posts it (annotation, task and project objects)."""
    stamp = "2026-11-22T10:00:00.000000Z"
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    annotation = {"id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
                  "created_at": stamp, "updated_at": stamp, "draft_created_at": None, "lead_time": 1.5,
                  "prediction": {}, "result_count": 1, "unique_id": f"u{annotation_id}", "import_id": None,
                  "last_action": None, "bulk_created": False, "task": the_task["id"], "project": PROJECT_ID,
                  "completed_by": 1, "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
                  "last_created_by": None}
    webhook_task = {k: v for k, v in the_task.items() if k not in ("annotations", "predictions")}
    webhook_task.update(allow_skip=True, precomputed_agreement=None, is_labeled=True)
    project = {"id": PROJECT_ID, "title": "container check", "label_config": label_config, "token": "",
               "task_data_login": None, "task_data_password": None, "model_version": "",
               "sampling": "Sequential sampling", "min_annotations_to_start_training": 0,
               "show_collab_predictions": True}
    return {"action": "ANNOTATION_CREATED", "annotation": annotation, "task": webhook_task, "project": project}


def call(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:500]


def expect(ok: bool, step: str, status: int, answer: object) -> None:
    if not ok:
        raise CheckFailed(f"{step}: HTTP {status}: {json.dumps(answer)[:800]}")
    print(f"  ok  {step}: HTTP {status}: {json.dumps(answer)[:300]}", flush=True)


def run(url: str, label_config: str, secret: str, train_timeout: float) -> None:
    status, answer = call(url + "/health")
    expect(status == 200 and isinstance(answer, dict) and answer.get("status") == "UP", "GET /health", status, answer)

    setup = {"project": PROJECT, "schema": label_config, "hostname": "http://localhost:8080",
             "access_token": "", "extra_params": None}
    status, answer = call(url + "/setup", "POST", setup)
    expect(status == 200 and isinstance(answer, dict) and "model_version" in answer, "POST /setup", status, answer)

    predict = {"tasks": [task(1)], "project": PROJECT, "label_config": label_config,
               "params": {"login": None, "password": None, "context": None}}
    status, answer = call(url + "/predict", "POST", predict)
    results = answer.get("results") if isinstance(answer, dict) else None
    expect(status == 200 and isinstance(results, list) and len(results) == 1 and isinstance(results[0], dict)
           and "model_version" in results[0], "POST /predict (1 image task)", status, answer)

    headers = {"X-Webhook-Secret": secret} if secret else {}
    status, answer = call(url + "/webhook", "POST", annotation_created(11, task(1), "Class A", label_config), headers)
    expect(status == 200 and isinstance(answer, dict) and answer.get("status") == "ok",
           "POST /webhook (ANNOTATION_CREATED)", status, answer)
    if train_timeout <= 0:
        return

    # the annotation trains a model in the server (no REDIS_URL: jobs run in the serving process)
    deadline = time.monotonic() + train_timeout
    versions: list = []
    while time.monotonic() < deadline:
        status, answer = call(f"{url}/versions?project={PROJECT_ID}")
        versions = answer.get("versions", []) if isinstance(answer, dict) else []
        if status == 200 and versions:
            break
        time.sleep(1)
    expect(bool(versions), f"a model trained from the annotation (GET /versions, {train_timeout:.0f}s at most)",
           status, answer)
    status, answer = call(url + "/predict", "POST", predict)
    results = answer.get("results") if isinstance(answer, dict) else None
    choices = [r for r in (results[0].get("result", []) if results and isinstance(results[0], dict) else [])
               if r.get("type") == "choices"]
    expect(status == 200 and bool(choices), "POST /predict with the trained model (a class and its evidence)",
           status, {"model_version": results[0].get("model_version") if results else None,
                    "score": results[0].get("score") if results else None,
                    "result_types": [r.get("type") for r in results[0].get("result", [])] if results else None})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--label-config", type=Path, required=True)
    parser.add_argument("--secret-env", default="", help="the environment variable holding WEBHOOK_SECRET, if set")
    parser.add_argument("--train-timeout", type=float, default=300,
                        help="seconds to wait for the trained model (0: skip that check)")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env, "") if args.secret_env else ""
    try:
        run(args.url.rstrip("/"), args.label_config.read_text(), secret, args.train_timeout)
    except (CheckFailed, OSError) as exc:
        print(f"  FAILED {exc}" if isinstance(exc, CheckFailed) else f"  FAILED: no answer from {args.url}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
