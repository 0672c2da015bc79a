"""The container set-up: compose files and Dockerfiles checked as files (no Docker daemon here),
and the exact commands the containers run, run outside Docker."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import jsonschema
import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
ML_BACKEND = Path(sys.executable).parent / "ml-backend"  # the venv's console script

# --- the compose files ------------------------------------------------------------------
VOLUME_AT_MODEL_DIR = {"type": "array", "contains": {"type": "string", "pattern": "^models:/data/models(:rw)?$"}}
# the passwords come from the environment, never from the file
REDIS_URL = {"type": "string", "pattern": r"^redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0$"}
MODEL_DIR_ENV = {"type": "object", "required": ["MODEL_DIR", "REDIS_URL"],
                 "properties": {"MODEL_DIR": {"const": "/data/models"}, "REDIS_URL": REDIS_URL}}
HEALTHCHECK = {"type": "object", "required": ["test"], "properties": {"test": {"type": "array", "minItems": 2}}}
HEALTHY = {"type": "object", "required": ["condition"], "properties": {"condition": {"const": "service_healthy"}}}
REDIS_HEALTHY = {"type": "object", "required": ["redis"], "properties": {"redis": HEALTHY}}
STORES_HEALTHY = {"type": "object", "required": ["redis", "postgres"],
                  "properties": {"redis": HEALTHY, "postgres": HEALTHY}}
ENV_NAMES = ["REDIS_URL", "DATABASE_URL", "MODEL_DIR", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "WEBHOOK_SECRET",
             "BASIC_AUTH_USER", "BASIC_AUTH_PASS"]
DATABASE_URL = {"type": "string", "pattern": r"^postgresql://ml_backend:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/"}

COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services", "volumes"],
    "properties": {
        "volumes": {"type": "object", "required": ["models", "postgres-data"]},
        "services": {
            "type": "object",
            "required": ["redis", "postgres", "backend", "worker", "label-studio", "rq-dashboard"],
            "properties": {
                "redis": {
                    "type": "object", "required": ["image", "command", "healthcheck", "volumes"],
                    "properties": {
                        "image": {"pattern": "^redis:7"},
                        "command": {"type": "array", "allOf": [{"contains": {"const": "--appendonly"}},
                                                               {"contains": {"const": "yes"}},
                                                               {"contains": {"const": "--requirepass"}}]},
                        "environment": {"type": "object", "required": ["REDISCLI_AUTH"]},
                        "healthcheck": {"type": "object", "required": ["test"], "properties": {
                            "test": {"type": "array", "allOf": [{"contains": {"const": "redis-cli"}},
                                                                {"contains": {"const": "ping"}}]}}},
                        "volumes": {"type": "array", "minItems": 1},
                    },
                },
                "postgres": {
                    "type": "object", "required": ["image", "environment", "volumes", "healthcheck"],
                    "properties": {
                        "image": {"pattern": "^postgres:1[56]"},
                        "environment": {"type": "object", "required": ["POSTGRES_PASSWORD"], "properties": {
                            "POSTGRES_PASSWORD": {"pattern": r"^\$\{POSTGRES_PASSWORD:\?"}}},
                        "volumes": {"type": "array", "contains": {"pattern": "^postgres-data:/var/lib/postgresql/data"}},
                        "healthcheck": {"type": "object", "required": ["test"], "properties": {
                            "test": {"type": "array", "contains": {"const": "pg_isready"}}}},
                        "profiles": False,
                    },
                },
                "backend": {
                    "type": "object", "required": ["build", "ports", "environment", "volumes", "healthcheck",
                                                   "depends_on"],
                    "properties": {
                        "build": {"type": "object", "required": ["dockerfile"],
                                  "properties": {"dockerfile": {"const": "docker/Dockerfile"}}},
                        "ports": {"type": "array", "contains": {"type": "string", "pattern": r":9090$"}},
                        "environment": {**MODEL_DIR_ENV, "required": ENV_NAMES},
                        "volumes": VOLUME_AT_MODEL_DIR,
                        "healthcheck": {**HEALTHCHECK, "properties": {"test": {
                            "type": "array", "contains": {"type": "string", "pattern": "/health"}}}},
                        "depends_on": STORES_HEALTHY,
                        "profiles": False,
                    },
                },
                "worker": {
                    "type": "object", "required": ["command", "environment", "volumes", "stop_signal",
                                                   "stop_grace_period", "deploy", "depends_on"],
                    "properties": {
                        "command": {"const": ["ml-backend", "worker"]},
                        "environment": {**MODEL_DIR_ENV, "required": ENV_NAMES},
                        "volumes": VOLUME_AT_MODEL_DIR,
                        "stop_signal": {"const": "SIGTERM"},
                        "stop_grace_period": {"pattern": "^[1-9][0-9]*m"},
                        "deploy": {"type": "object", "required": ["replicas"]},
                        "depends_on": STORES_HEALTHY,
                        "ports": False,
                        "profiles": False,
                    },
                },
                "label-studio": {
                    "type": "object", "required": ["image", "profiles", "environment"],
                    "properties": {
                        "image": {"const": "heartexlabs/label-studio:1.23.2"},
                        "profiles": {"const": ["labelstudio"]},
                        "environment": {"type": "object", "properties": {
                            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": {"const": "false"},
                            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": {"const": "false"},
                            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": {"const": "true"}},
                            "required": ["LABEL_STUDIO_ML_BLOCK_LOCAL_IP", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED",
                                         "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"]},
                    },
                },
                "rq-dashboard": {
                    "type": "object", "required": ["image", "profiles", "environment", "ports"],
                    "properties": {
                        "profiles": {"const": ["dashboard"]},
                        "environment": {"type": "object", "required": ["RQ_DASHBOARD_REDIS_URL"]},
                        "ports": {"type": "array", "contains": {"type": "string", "pattern": "9181$"}},
                    },
                },
            },
        },
    },
}

NVIDIA_GPU = {"type": "object", "required": ["driver", "count", "capabilities"],
              "properties": {"driver": {"const": "nvidia"}, "count": {"const": 1},
                             "capabilities": {"contains": {"const": "gpu"}}}}
GPU_RESERVATION = {"type": "object", "required": ["resources"], "properties": {"resources": {
    "type": "object", "required": ["reservations"], "properties": {"reservations": {
        "type": "object", "required": ["devices"],
        "properties": {"devices": {"type": "array", "minItems": 1, "items": NVIDIA_GPU}}}}}}}
GPU_SCHEMA = {
    "type": "object", "required": ["services"],
    "properties": {"services": {"type": "object", "required": ["worker"], "properties": {"worker": {
        "type": "object", "required": ["build", "deploy", "environment"],
        "properties": {
            "build": {"type": "object", "required": ["dockerfile"],
                      "properties": {"dockerfile": {"const": "docker/Dockerfile.gpu"}}},
            "environment": {"type": "object", "required": ["DEVICE"], "properties": {"DEVICE": {"const": "cuda"}}},
            "deploy": GPU_RESERVATION,
        }}}}},
}


def load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def test_compose_file_has_what_matters():
    compose = load("docker-compose.yml")
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services = compose["services"]
    # the server runs the image's own command; the workers share its image and its models volume
    assert services["backend"]["command"] == ["ml-backend", "serve", "--host", "0.0.0.0", "--port", "9090"]
    assert services["worker"]["image"] == services["backend"]["image"]
    assert services["worker"]["healthcheck"] == {"disable": True}
    jsonschema.validate(services["rq-dashboard"]["environment"]["RQ_DASHBOARD_REDIS_URL"], REDIS_URL)
    replicas = str(services["worker"]["deploy"]["replicas"])
    assert re.fullmatch(r"\d+|\$\{[A-Z_]+:-\d+\}", replicas)
    for name in ("backend", "worker"):
        jsonschema.validate(services[name]["environment"]["DATABASE_URL"], DATABASE_URL)
    # Redis and PostgreSQL reach remote workers only where the operator binds them
    for name, port in (("redis", 6379), ("postgres", 5432)):
        assert services[name]["ports"] == [f"${{{name.upper()}_BIND:-127.0.0.1}}:{port}:{port}"]


REMOTE_WORKER_SCHEMA = {
    "type": "object", "required": ["services", "volumes"],
    "properties": {
        "services": {"type": "object", "required": ["worker"], "additionalProperties": False, "properties": {
            "worker": {"type": "object", "required": ["command", "environment", "volumes", "stop_signal"],
                       "properties": {
                           "command": {"const": ["ml-backend", "worker"]},
                           "environment": {"type": "object", "required": ["REDIS_URL", "DATABASE_URL", "MODEL_DIR"],
                                           "properties": {
                                               "REDIS_URL": {"pattern": r"^\$\{REDIS_URL:\?"},
                                               "DATABASE_URL": {"pattern": r"^\$\{DATABASE_URL:\?"},
                                               "MODEL_DIR": {"const": "/data/models"}}},
                           "volumes": VOLUME_AT_MODEL_DIR,
                           "stop_signal": {"const": "SIGTERM"},
                           "ports": False, "depends_on": False}}}},
        "volumes": {"type": "object", "required": ["models"], "properties": {"models": {
            "type": "object", "required": ["driver_opts"], "properties": {"driver_opts": {
                "type": "object", "required": ["type", "o", "device"],
                "properties": {"type": {"const": "nfs"}}}}}}},
    },
}


def test_remote_worker_file_runs_only_workers_on_the_main_hosts_stores_and_a_shared_volume():
    remote = load("docker-compose.worker.yml")
    jsonschema.validate(remote, REMOTE_WORKER_SCHEMA)
    main = load("docker-compose.yml")["services"]["worker"]
    assert remote["services"]["worker"]["image"] == main["image"]
    broken = load("docker-compose.worker.yml")
    broken["services"]["redis"] = {"image": "redis:7-alpine"}  # a second Redis would split the queue
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, REMOTE_WORKER_SCHEMA)


def test_schema_catches_a_broken_compose_file():
    compose = load("docker-compose.yml")
    compose["services"]["worker"]["volumes"] = ["other:/data/models"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(compose, COMPOSE_SCHEMA)
    compose = load("docker-compose.yml")
    compose["services"]["redis"]["command"] = ["redis-server"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(compose, COMPOSE_SCHEMA)


def test_gpu_override_reserves_an_nvidia_gpu_for_the_worker():
    override = load("docker-compose.gpu.yml")
    jsonschema.validate(override, GPU_SCHEMA)
    assert set(override["services"]) == {"worker"}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles(name):
    text = (DOCKER / name).read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    first = lines[0] if not lines[0].startswith("ARG") else next(l for l in lines if l.startswith("FROM"))
    assert first.startswith("FROM ")
    if name == "Dockerfile":
        assert "ARG BASE_IMAGE=python:3.11-slim" in lines and first.startswith("FROM ${BASE_IMAGE}")
        assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    else:
        assert re.search(r"nvidia/cuda:[\d.]+-runtime-", text)
        assert re.search(r"pip install torch==2\.13\.0 --index-url \S*(cu\d+|TORCH_INDEX)", text)
        assert re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", text)
    # torch is installed before the package, pinned, and nowhere unpinned
    torch_at = next(i for i, l in enumerate(lines) if "pip install torch" in l)
    package_at = next(i for i, l in enumerate(lines) if re.search(r"pip install \.$", l))
    assert torch_at < package_at
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "EXPOSE 9090" in lines
    healthcheck = next(l for l in lines if l.startswith("HEALTHCHECK"))
    assert "/health" in healthcheck and "CMD" in healthcheck
    assert lines[-1] == 'CMD ["ml-backend", "serve", "--host", "0.0.0.0", "--port", "9090"]'


# --- the containers' commands, outside Docker ---------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen, timeout: float, log: Optional[Path] = None) -> int:
    """SIGTERM, then the exit code; past ``timeout``, the process's threads' stacks (``ml-backend
    worker`` prints them on SIGUSR1) and its log's tail go into the failure."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        if log is not None:
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)
        process.kill()
        process.wait(5)
        tail = log.read_text()[-6000:] if log is not None else ""
        raise AssertionError(f"{process.args} did not exit within {timeout}s of SIGTERM\n{tail}")


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "BASIC_AUTH", "WEBHOOK_"))}
    # HOME: gunicorn's control socket lives there; keep the caches (matplotlib's font list) where they are
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return {**out, "MODEL_DIR": str(tmp_path / "models"), "HOME": str(tmp_path), "XDG_CACHE_HOME": cache,
            "LOG_LEVEL": "INFO", "WORKERS": "1", "THREADS": "2", **extra}


@pytest.mark.parametrize("server,stopped", [("granian", "Granian shutdown completed"),
                                            ("gunicorn", "Shutting down: Master")])
def test_serve_command_starts_its_server_and_stops_cleanly_on_sigterm(tmp_path, image_config, server, stopped):
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    extra = {} if server == "granian" else {"HTTP_SERVER": server}  # granian is the default
    process = subprocess.Popen([str(ML_BACKEND), "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env=env(tmp_path, **extra), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return requests.get(url + "/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, 60, "/health")
        body = {"project": "1.1795343946", "schema": image_config, "hostname": "http://localhost:8080",
                "access_token": "x", "extra_params": None}
        setup = requests.post(url + "/setup", json=body, timeout=10)
        assert setup.status_code == 200 and setup.json() == {"model_version": "untrained"}
        assert (tmp_path / "models" / "projects" / "1" / "project.json").exists()
    finally:
        code = stop(process, timeout=15)
    output = (tmp_path / "serve.log").read_text()
    assert code == 0, output
    assert server in output.lower() and stopped in output


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run `make system-deps` (scripts/install_system_deps.sh)"
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from redis import Redis

    client = Redis(port=port)
    try:
        def up():
            try:
                return client.ping()
            except Exception:
                return False

        wait_for(up, 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.integration
def test_worker_command_registers_with_rq_and_shuts_down_warm_on_sigterm(tmp_path, redis_url):
    from redis import Redis
    from rq import Worker

    connection = Redis.from_url(redis_url)
    log = (tmp_path / "worker.log").open("w+")
    process = subprocess.Popen([str(ML_BACKEND), "worker"], env=env(tmp_path, REDIS_URL=redis_url),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        def registered():
            assert process.poll() is None, (tmp_path / "worker.log").read_text()
            # idle: waiting for jobs. RQ registers a worker before it installs its SIGTERM handler
            # (after starting its scheduler), and a SIGTERM in between ends it with -15
            return [w for w in Worker.all(connection=connection) if w.get_state() == "idle"]

        [worker] = wait_for(registered, 30, "the worker to register")
        assert worker.queue_names() == ["ml_backend"]
    finally:
        code = stop(process, timeout=15, log=tmp_path / "worker.log")
    output = (tmp_path / "worker.log").read_text()
    assert code == 0, output
    assert "warm shut down requested" in output.lower()
    assert Worker.all(connection=connection) == []  # it deregistered on the way out


def test_python_dash_m_and_the_console_script_share_the_cli():
    import subprocess
    import sys

    for argv in ([sys.executable, "-m", "ml_backend", "--help"], [str(Path(sys.executable).parent / "ml-backend"), "--help"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "serve" in out.stdout and "worker" in out.stdout


def compose_value(value: str, env: dict[str, str]) -> str:
    """``value`` with compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` filled from ``env``."""
    def fill(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {rest}")
        return rest or ""

    return re.sub(r"\$\{([A-Z_]+)(?:(:-|:\?)([^}]*))?\}", fill, value)


@pytest.mark.integration
def test_the_compose_redis_refuses_clients_without_the_password_that_its_urls_carry(tmp_path):
    """Redis reaches remote workers over the network: the compose file's own command, run by a real
    redis-server, answers no client without the password; the backend's and rq-dashboard's URLs and
    the health check's REDISCLI_AUTH get in. Without REDIS_PASSWORD the file does not start."""
    from redis import Redis
    from redis.exceptions import AuthenticationError, ResponseError

    services = load("docker-compose.yml")["services"]
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        [compose_value(part, {}) for part in services["redis"]["command"]]
    env = {"REDIS_PASSWORD": os.urandom(24).hex()}
    port = free_port()
    command = [compose_value(part, env) for part in services["redis"]["command"]]
    assert command[0] == "redis-server" and env["REDIS_PASSWORD"] in command
    process = subprocess.Popen(command + ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def refused() -> bool:
            try:
                Redis(port=port).ping()
            except (AuthenticationError, ResponseError) as exc:
                return "auth" in str(exc).lower()
            except Exception:
                return False
            return False

        wait_for(refused, 10, "redis-server to refuse a client without the password")
        urls = [services[name]["environment"]["REDIS_URL"] for name in ("backend", "worker")]
        urls.append(services["rq-dashboard"]["environment"]["RQ_DASHBOARD_REDIS_URL"])
        for url in urls:
            assert Redis.from_url(compose_value(url, env).replace("@redis:6379", f"@127.0.0.1:{port}")).ping()
        health = services["redis"]["healthcheck"]["test"][1:]  # after "CMD"
        health = health[:1] + ["-p", str(port)] + health[1:]
        auth = {k: compose_value(v, env) for k, v in services["redis"]["environment"].items()}
        answer = subprocess.run(health, env={**os.environ, **auth}, capture_output=True,
                                text=True, timeout=10)
        assert answer.stdout.strip() == "PONG", answer
        wrong = subprocess.run(health, env={**os.environ, "REDISCLI_AUTH": "wrong"},
                               capture_output=True, text=True, timeout=10)
        assert answer.stdout.strip() != wrong.stdout.strip()
    finally:
        process.terminate()
        process.wait(10)
