"""Run a real Label Studio 1.23.2 for end-to-end tests, and talk to it over REST.

No pytest in here: `conftest.py` wraps it in a fixture, and it also works from a plain script:

    with LabelStudio() as ls:
        project = ls.create_project("demo", config_xml)

Label Studio comes from `.cache/ls-venv` (see `scripts/install_label_studio.sh`). It runs on SQLite in a
temporary data dir, on a free loopback port, with the settings the contract needs for a local backend
(research/label-studio-contract.md, section 0 and 6).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json as jsonlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LS_VENV = REPO_ROOT / ".cache" / "ls-venv"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_label_studio.sh"
LS_VERSION = "1.23.2"
# Migrated, empty data dirs (SQLite + user + token) kept between runs: a first start runs ~100 migrations
# (about 1.5 min on 2 busy cores), a start on a migrated dir takes seconds.
TEMPLATE_ROOT = REPO_ROOT / ".cache"

# Data Manager filter for "tasks without annotations" (what the Data Manager sends for "Completed: is empty").
UNLABELED_FILTER = {
    "conjunction": "and",
    "items": [{"filter": "filter:tasks:completed_at", "operator": "empty", "type": "Datetime", "value": True}],
}


class LabelStudioError(RuntimeError):
    """A non-2xx answer from Label Studio; the message carries the status and the body."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


class StepTimer:
    """Records how long named steps take; `summary()` gives a small table."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.first_start: float | None = None
        self.last_end: float | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block and print its duration."""
        t0 = time.perf_counter()
        if self.first_start is None:
            self.first_start = t0
        try:
            yield
        finally:
            self.last_end = time.perf_counter()
            seconds = self.last_end - t0
            self.steps.append((name, seconds))
            print(f"[e2e] {name}: {seconds:.2f} s", flush=True)

    def summary(self) -> str:
        """The recorded steps as a plain-text table."""
        if not self.steps:
            return "(no steps)"
        width = max(len(name) for name, _ in self.steps)
        lines = [f"{'step'.ljust(width)}  seconds", f"{'-' * width}  -------"]
        lines += [f"{name.ljust(width)}  {seconds:7.2f}" for name, seconds in self.steps]
        assert self.first_start is not None and self.last_end is not None
        lines.append(f"{'wall clock'.ljust(width)}  {self.last_end - self.first_start:7.2f}")  # steps may nest
        return "\n".join(lines)


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a process started in its own session (and its children), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the process that started us dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_installed() -> Path:
    """Run the install script if `.cache/ls-venv` has no label-studio yet; return the executable."""
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    return exe


class LabelStudio:
    """A Label Studio server process plus a thin REST client for tests."""

    def __init__(
        self,
        *,
        token: str = "e2e-token-0123456789",
        username: str = "e2e@example.com",
        password: str = "e2e-Passw0rd!",
        port: int | None = None,
        workdir: Path | None = None,
        timer: StepTimer | None = None,
        extra_env: dict[str, str] | None = None,
        use_template: bool = True,
    ) -> None:
        if len(token) <= 5:
            raise ValueError("Label Studio wants --user-token longer than 5 characters")
        self.token = token
        self.username = username
        self.password = password
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ls-e2e-"))
        self.data_dir = self.workdir / "data"
        self.document_root = self.workdir / "files"  # LOCAL_FILES_DOCUMENT_ROOT
        self.log_path = self.workdir / "label-studio.log"
        self.timer = timer or StepTimer()
        self.extra_env = extra_env or {}
        self.use_template = use_template
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    # ---- process ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment Label Studio is started with."""
        env = dict(os.environ)
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE"):
            env.pop(key, None)
        env["PATH"] = f"{LS_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            {
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # trap 2: `Token` auth is off otherwise
                "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",  # trap 1: 127.0.0.1 backends are blocked otherwise
                "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",  # trap 1: webhook creation/delivery too
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
                "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
                "LABEL_STUDIO_SENTRY_DSN": "",
                "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_HOST": self.url,  # the `hostname` Label Studio sends in /setup
                "DJANGO_DB": "sqlite",
                "PYTHONUNBUFFERED": "1",
                "XDG_CONFIG_HOME": str(self.workdir / "config"),  # LS writes an analytics user_id there
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 240.0) -> LabelStudio:
        """Start `label-studio start` and wait for /health (the first start runs migrations)."""
        exe = ensure_installed()
        if self.use_template and not self.data_dir.exists():
            template = self._template(timeout)
            with self.timer.step("copy migrated data dir"):
                shutil.copytree(template, self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(exe), "start",
            "--no-browser",
            "--internal-host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--username", self.username,
            "--password", self.password,
            "--user-token", self.token,
            "--enable-legacy-api-token",
        ]  # fmt: skip
        with self.timer.step("label studio start"):
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # no orphaned server if the test process is killed
            )
            log.close()
            self._wait_healthy(timeout)
        return self

    def _template(self, timeout: float) -> Path:
        """A migrated data dir for these credentials, built once (under a file lock) by a first start."""
        key = hashlib.sha256(f"{self.username}\0{self.password}\0{self.token}".encode()).hexdigest()[:10]
        template = TEMPLATE_ROOT / f"ls-data-{LS_VERSION}-{key}"
        TEMPLATE_ROOT.mkdir(parents=True, exist_ok=True)
        with open(TEMPLATE_ROOT / f"{template.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (template / ".ready").exists():
                builder = LabelStudio(
                    token=self.token, username=self.username, password=self.password,
                    timer=self.timer, use_template=False,
                )  # fmt: skip
                try:
                    with self.timer.step("first start (migrations) for the data dir template"):
                        builder.start(timeout)
                        builder.stop()
                    shutil.rmtree(template, ignore_errors=True)
                    shutil.copytree(builder.data_dir, template)
                    (template / ".ready").touch()
                finally:
                    builder.stop()
                    builder.cleanup()
        return template

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            if f"Port {self.port} is in use" in self.log_tail(200):  # it would silently move to port + 1
                self.stop()
                raise RuntimeError(f"port {self.port} was taken before label-studio could bind it")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"label-studio not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """Terminate the server (its whole process group), then kill it if it lingers."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with self.timer.step("label studio stop"):
                stop_group(proc, grace)
        self.session.close()

    def cleanup(self) -> None:
        """Remove the temporary work dir (only if this object created it)."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LabelStudio:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        print(self.timer.summary(), flush=True)
        if exc_type is None:
            self.cleanup()
        else:
            print(f"label-studio log kept at {self.log_path}", flush=True)

    # ---- REST ------------------------------------------------------------------------------

    def api(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Call the API with the legacy token; return the decoded JSON (None when empty), raise on non-2xx."""
        r = self.session.request(method, self.url + path, json=json, params=params, timeout=120)
        if not r.ok:
            raise LabelStudioError(method, path, r.status_code, r.text)
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            return r.text

    def health(self) -> dict[str, Any]:
        """GET /health -> {"status": "UP"}."""
        return self.api("GET", "/health")

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        """POST /api/projects."""
        return self.api("POST", "/api/projects", {"title": title, "label_config": label_config, **fields})

    def project(self, project_id: int) -> dict[str, Any]:
        """GET /api/projects/{id}."""
        return self.api("GET", f"/api/projects/{project_id}")

    def patch_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH /api/projects/{id}, e.g. sampling="Uncertainty sampling", model_version="v3"."""
        return self.api("PATCH", f"/api/projects/{project_id}", fields)

    def connect_ml_backend(
        self, project_id: int, url: str, title: str, basic_auth: tuple[str, str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """POST /api/ml; Label Studio checks /health and /setup and creates the <url>/webhook webhook."""
        body: dict[str, Any] = {"url": url, "project": project_id, "title": title, **fields}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        return self.api("POST", "/api/ml", body)

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """GET /api/ml?project=N (also refreshes each backend's state via /health + /setup)."""
        return self.api("GET", "/api/ml", params={"project": project_id})

    def patch_ml_backend(self, ml_backend_id: int, url: str, project_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH /api/ml/{id}; Label Studio needs url and project in every PATCH (contract trap 3)."""
        return self.api("PATCH", f"/api/ml/{ml_backend_id}", {"url": url, "project": project_id, **fields})

    def interactive_annotating(self, ml_backend_id: int, task_id: int, context: Any) -> dict[str, Any]:
        """POST /api/ml/{id}/interactive-annotating, what the labeling UI sends when a smart region is drawn:
        {"data": <the backend's first result>} or {"errors": [...]} (always a 200)."""
        return self.api("POST", f"/api/ml/{ml_backend_id}/interactive-annotating", {"task": task_id, "context": context})

    def train(self, ml_backend_id: int) -> Any:
        """POST /api/ml/{id}/train -> the backend gets a START_TRAINING webhook."""
        return self.api("POST", f"/api/ml/{ml_backend_id}/train", {})

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """GET /api/webhooks?project=N."""
        return self.api("GET", "/api/webhooks", params={"project": project_id})

    def set_webhook_headers(self, webhook_id: int, headers: dict[str, str]) -> dict[str, Any]:
        """PATCH /api/webhooks/{id} {"headers": {...}}; the headers are then sent on every delivery."""
        return self.api("PATCH", f"/api/webhooks/{webhook_id}", {"headers": headers})

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /api/projects/{id}/import with a list of task dicts (data only, or {"data":..,"predictions":..})."""
        return self.api("POST", f"/api/projects/{project_id}/import", tasks)

    def add_local_file(self, relpath: str, content: bytes) -> str:
        """Write a file under the document root; return the task URL Label Studio serves it at."""
        path = self.document_root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return f"/data/local-files/?d={relpath}"

    def add_local_storage(self, project_id: int, subdir: str = "files") -> dict[str, Any]:
        """POST /api/storages/localfiles for a sub-folder of the document root (the root itself is refused).

        Label Studio serves /data/local-files/?d=<relpath> only when some local storage's path holds the
        file and the user can see that storage's project; otherwise it answers 404.
        """
        if not subdir.strip("/"):
            raise ValueError("a local storage must be a sub-folder of the document root")
        path = self.document_root / subdir
        path.mkdir(parents=True, exist_ok=True)
        body = {"project": project_id, "path": str(path), "title": f"local {subdir}", "use_blob_urls": True}
        return self.api("POST", "/api/storages/localfiles", body)

    def retrieve_predictions(self, project_id: int) -> Any:
        """The Data Manager "Retrieve Predictions" action on all tasks: one /predict call for the lot."""
        return self.api(
            "POST",
            "/api/dm/actions",
            {"selectedItems": {"all": True, "excluded": []}},
            params={"id": "retrieve_tasks_predictions", "project": project_id},
        )

    def predictions(self, project_id: int) -> list[dict[str, Any]]:
        """GET /api/predictions?project=N."""
        return self.api("GET", "/api/predictions", params={"project": project_id})

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], score: float | None = None, model_version: str = ""
    ) -> dict[str, Any]:
        """POST /api/predictions, the way a backend pushes a prediction itself."""
        body: dict[str, Any] = {"task": task_id, "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = score
        return self.api("POST", "/api/predictions", body)

    def tasks(self, project_id: int, page_size: int = 100, only_unlabeled: bool = False) -> list[dict[str, Any]]:
        """All tasks of a project, following GET /api/tasks paging ({"tasks": [...], "total": N, ...})."""
        params: dict[str, Any] = {"project": project_id, "page_size": page_size, "fields": "all"}
        if only_unlabeled:
            params["query"] = jsonlib.dumps({"filters": UNLABELED_FILTER})
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.api("GET", "/api/tasks", params={**params, "page": page})
            out += body["tasks"]
            if not body["tasks"] or len(out) >= body["total"]:
                return out
            page += 1

    def task(self, task_id: int) -> dict[str, Any]:
        """GET /api/tasks/{id} (note: may itself call /predict, see the contract, section 1 C)."""
        return self.api("GET", f"/api/tasks/{task_id}")

    def next_task(self, project_id: int) -> dict[str, Any]:
        """GET /api/projects/{id}/next: the task the labeling stream would serve now."""
        return self.api("GET", f"/api/projects/{project_id}/next")

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """POST /api/tasks/{id}/annotations -> ANNOTATION_CREATED webhook."""
        return self.api("POST", f"/api/tasks/{task_id}/annotations", {"result": result, **fields})

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """PATCH /api/annotations/{id} -> ANNOTATION_UPDATED webhook."""
        return self.api("PATCH", f"/api/annotations/{annotation_id}", {"result": result, **fields})

    def delete_annotation(self, annotation_id: int) -> None:
        """DELETE /api/annotations/{id} -> ANNOTATIONS_DELETED webhook."""
        self.api("DELETE", f"/api/annotations/{annotation_id}")
