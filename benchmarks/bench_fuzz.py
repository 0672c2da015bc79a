"""Benchmark (not a test): 10,000 malformed requests on every route and webhook action, none answered 5xx.

The generator of ``tests/test_fuzz.py`` (``tests/support/fuzz.py``: Label Studio payloads with
hostile fields, hostile raw bodies) against ``ml-backend serve`` itself (its default HTTP server,
granian), several seeds, with a published model so that /predict and the rankings routes do real
work; the server's log must hold no traceback.

    .venv/bin/python -m benchmarks.bench_fuzz [--quick] [--requests N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from benchmarks import _common as C
from benchmarks.machine import describe, markdown

NAME = "bench_fuzz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from ml_backend.models import adapt
    from ml_backend.models.cnn import ImageCNN
    from ml_backend.store import ProjectStore
    from tests.support.fuzz import fuzz, templates

    n = 2000 if args.quick else args.requests
    image_config = (C.LABEL_CONFIGS / "image_classification_evidence.xml").read_text()
    text_config = (C.LABEL_CONFIGS / "text_classification_evidence.xml").read_text()
    statuses: dict[int, int] = {}
    failures: list = []
    started = time.perf_counter()
    tracebacks = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        model_dir = Path(tmp) / "models"
        env = {"MODEL_DIR": str(model_dir), "TRAIN_DEBOUNCE_SECONDS": "30", "BASIC_AUTH_USER": "ls",
               "BASIC_AUTH_PASS": "pw", "XIL_EPOCHS": "1", "XIL_IMAGE_SIZE": "16", "DEVICE": args.device}
        ProjectStore(model_dir, "2").publish(adapt(ImageCNN(2, image_size=16, width=4)), ("Class A", "Class B"), {})
        log_path = Path(tmp) / "server.log"
        with C.Server(env, log_path) as live:
            session = requests.Session()
            session.auth = ("ls", "pw")
            per_seed = -(-n // 5)
            for seed in range(5):
                got, bad = fuzz(live.url, session, templates(image_config, text_config), min(per_seed, n), seed)
                n_done = sum(got.values())
                n -= n_done
                for status, count in got.items():
                    statuses[status] = statuses.get(status, 0) + count
                failures += bad
        tracebacks = log_path.read_text(errors="replace").count("Traceback")
    seconds = time.perf_counter() - started
    total = sum(statuses.values())
    rows = [[status, count] for status, count in sorted(statuses.items())]
    table = C.md_table(["status", "requests"], rows, "rr")
    machine = describe("cpu")
    tables = [{"title": f"{total} malformed requests: answers by status",
               "caption": "Label Studio payloads with hostile fields and raw hostile bodies on every route and "
                          "webhook action (tests/support/fuzz.py), 5 seeds, against `ml-backend serve` (granian) on a "
                          "live port.",
               "markdown": table}]
    notes = [f"5xx answers: {len(failures)}" + (f"; first: {failures[:3]}" if failures else ""),
             f"tracebacks in the server's log: {tracebacks}"]
    C.print_report("Malformed requests", markdown(machine), tables, notes)
    C.write_results(NAME, {"name": NAME, "title": "Malformed requests on every route: no 5xx",
                           "command": C.command_line(), "quick": args.quick, "machine": machine,
                           "aims": ["No request can produce a 500 (issue 17): >= 10,000 malformed requests."],
                           "tables": tables, "notes": notes, "requests": total, "statuses": statuses,
                           "failures": failures[:20], "tracebacks": tracebacks, "seconds": seconds})
    return 1 if failures or tracebacks else 0


if __name__ == "__main__":
    raise SystemExit(main())
