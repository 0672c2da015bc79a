"""Shared helpers for the benchmarks: statistics, tables, results files, a real server, images."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABEL_CONFIGS = ROOT / "label_config"


# --- statistics and tables --------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation); nan for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
            "mean_ms": float(np.mean(ms)) if ms else float("nan"), "max_ms": max(ms) if ms else float("nan")}


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> str:
    """A markdown table; numbers are right-aligned unless ``align`` ('l'/'r' per column) says otherwise."""
    rows = [[fmt(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that ran this benchmark, as typed from the repository root."""
    module = Path(sys.argv[0]).stem
    return " ".join([".venv/bin/python", "-m", f"benchmarks.{module}", *sys.argv[1:]])


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def print_report(title: str, machine_md: str, tables: list[dict[str, str]], notes: Sequence[str] = ()) -> None:
    print(f"# {title}\n")
    print(machine_md + "\n")
    for table in tables:
        print(f"## {table['title']}\n")
        if table.get("caption"):
            print(table["caption"] + "\n")
        print(table["markdown"] + "\n")
    for note in notes:
        print(f"- {note}")
    sys.stdout.flush()


# --- images -------------------------------------------------------------------------

def sample_image(size: int, index: int = 0) -> np.ndarray:
    """A natural RGB image (scikit-image's sample data) resized to size x size."""
    from PIL import Image
    from skimage import data as skdata

    sources = (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket)
    img = sources[index % len(sources)]()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.asarray(Image.fromarray(img[..., :3]).resize((size, size), Image.Resampling.BILINEAR))


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode()


TEXTS = (
    "The battery lasts all day and the screen is bright, crisp and easy to read even in direct sunlight; "
    "setup took two minutes and support answered my only question within the hour.",
    "Arrived late, the box was crushed and the charger did not work at all. I asked for a refund twice "
    "and nobody answered, so I would not order from this shop again.",
    "Decent value for the price, although the speakers are thin and the keyboard flexes a little in the "
    "middle; for browsing and email it does the job without complaint.",
)


def ls_task(task_id: int, data: dict, project: int = 2) -> dict:
    """A task as Label Studio 1.23.2 sends it to /predict (same shape as tests/support/live.py)."""
    return {"id": task_id, "data": data, "meta": {}, "created_at": "2026-11-22T10:00:00.000000Z",
            "updated_at": "2026-11-22T10:00:00.000000Z", "is_labeled": False, "overlap": 1, "inner_id": task_id,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project, "updated_by": [],
            "file_upload": None, "comment_authors": [], "annotations": [], "predictions": []}


def setup_body(project_id: int, label_config: str, extra_params: Optional[dict] = None) -> dict:
    """The /setup body Label Studio 1.23.2 sends when a project connects its ML backend."""
    return {"project": f"{project_id}.1795343946", "schema": label_config, "hostname": "http://localhost:8080",
            "access_token": "0123456789abcdef", "extra_params": extra_params}


def project_object(project_id: int, label_config: str) -> dict:
    """ProjectWebhookSerializer-shaped project (contract §2.3), the fields that matter filled in."""
    return {
        "id": project_id, "task_number": 1000, "finished_task_number": 10, "total_predictions_number": 0,
        "total_annotations_number": 10, "num_tasks_with_annotations": 10, "useful_annotation_number": 10,
        "ground_truth_number": 0, "skipped_annotations_number": 0, "title": "benchmark", "description": "",
        "label_config": label_config, "parsed_label_config": {}, "label_config_hash": 0,
        "expert_instruction": "", "show_instruction": False, "show_skip_button": True, "enable_empty_annotation": True,
        "reveal_preannotations_interactively": False, "show_annotation_history": False,
        "show_collab_predictions": True, "evaluate_predictions_automatically": False, "token": "x" * 12,
        "result_count": 0, "color": "#FFFFFF", "maximum_annotations": 1, "min_annotations_to_start_training": 0,
        "control_weights": {}, "model_version": "", "data_types": {}, "is_draft": False, "is_published": False,
        "sampling": "Sequential sampling", "skip_queue": "REQUEUE_FOR_OTHERS", "show_ground_truth_first": False,
        "annotator_evaluation_enabled": False, "show_overlap_first": False, "overlap_cohort_percentage": 100,
        "created_at": "2026-11-22T09:00:00.000000Z", "updated_at": "2026-11-22T09:00:00.000000Z",
        "task_data_login": None, "task_data_password": None, "pinned_at": None, "custom_task_lock_ttl": None,
        "deleted_at": None, "purge_at": None, "search_vector": None, "organization": 1, "created_by": 1,
        "deleted_by": None,
    }


def annotation_webhook(annotation_id: int, task_id: int, project_id: int, label_config: str, data: dict,
                       result: list[dict], action: str = "ANNOTATION_CREATED") -> dict:
    """ANNOTATION_CREATED as Label Studio 1.23.2 sends it (contract §2.3)."""
    stamp = "2026-11-22T10:%02d:%02d.%06dZ" % ((annotation_id // 60) % 60, annotation_id % 60, annotation_id % 10**6)
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
            "created_at": stamp, "updated_at": stamp, "draft_created_at": None, "lead_time": 1.5, "prediction": {},
            "result_count": len(result), "unique_id": f"bench-{annotation_id}", "import_id": None,
            "last_action": None, "bulk_created": False, "task": task_id, "project": project_id, "completed_by": 1,
            "updated_by": 1, "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
        },
        "task": {
            "id": task_id, "data": data, "meta": {}, "created_at": "2026-11-22T10:00:00.000000Z",
            "updated_at": stamp, "is_labeled": True, "allow_skip": True, "overlap": 1, "inner_id": task_id,
            "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 0, "precomputed_agreement": None,
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project_id,
            "updated_by": 1, "file_upload": None, "comment_authors": [],
        },
        "project": project_object(project_id, label_config),
    }


# --- processes ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_kib(pid: int, field: str) -> Optional[int]:
    """VmHWM / VmRSS / ... of a process in KiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _http(method: str, url: str, body: Optional[dict] = None, timeout: float = 120.0) -> tuple[int, Any]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        conn.close()


def http_json(method: str, url: str, body: Optional[dict] = None, timeout: float = 120.0) -> tuple[int, Any]:
    return _http(method, url, body, timeout)


def post_bytes(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    """POST an already-encoded JSON body (a webhook as Label Studio sends it); status and raw answer."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server:
    """``ml-backend serve`` (the production command: granian by default) on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1, cpus: Optional[str] = None) -> None:
        """``cpus``: a CPU list for ``taskset`` (e.g. "0"), so a load generator can have the others."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        exe = Path(sys.executable).with_name("ml-backend")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ml_backend"]
        self.cmd = cmd + ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        if cpus is not None:
            self.cmd = ["taskset", "-c", cpus, *self.cmd]
        self.env = {**os.environ, **env}
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, _ = _http("GET", self.url + "/health", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server did not answer /health within 90 s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: the master and its workers
                self.proc.wait(timeout=10)
        self._log.close()


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on a free port, if the binary exists."""

    def __init__(self, log_path: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "RedisServer":
        if not self.binary:
            raise FileNotFoundError("redis-server is not on PATH")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if hasattr(self, "_log"):
            self._log.close()


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return name
