"""A real redis-server and real `rq worker` processes (redis-server comes from scripts/install_system_deps.sh)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run `make system-deps` (scripts/install_system_deps.sh)"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    from redis import Redis

    client = Redis(port=port)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except Exception:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server):
    from redis import Redis

    Redis(port=redis_server).flushall()
    return f"redis://127.0.0.1:{redis_server}/0"


class Process:
    """A subprocess in its own process group. (RQ forks each job into a group of its own; a work
    horse whose worker died stops itself: see RedisQueue.running.)"""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM to the process alone, as `docker stop` sends it to a container's first process
        (RQ's warm shutdown; sent to the whole group it also hits RQ's scheduler process, and
        the worker could wait on it for ever)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def spawn(tmp_path):
    started: list[Process] = []

    def _spawn(argv: list[str], env_extra: dict[str, str], name: str, cwd: Path = ROOT) -> Process:
        """``cwd``: the process's own working directory (a host of its own, but for MODEL_DIR)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("XIL_")}
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env_extra)
        if cwd != ROOT:  # the code under test, wherever the process runs
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        process = Process(argv, env, tmp_path / f"{name}.log", cwd)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        if process.alive():
            process.kill()


def backend_env(model_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {"MODEL_DIR": str(model_dir), "REDIS_URL": redis_url, "WEBHOOK_SECRET": "hook-secret-123",
            "XIL_EPOCHS": "3", "XIL_IMAGE_SIZE": "24", "XIL_HOLDOUT": "0", **extra}


def worker_argv() -> list[str]:
    return [str(BIN / "ml-backend"), "worker"]


def serve_argv(port: int) -> list[str]:
    return [str(BIN / "ml-backend"), "serve", "--host", "127.0.0.1", "--port", str(port)]


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
