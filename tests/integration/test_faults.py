"""Scale-out under faults: 2 serving processes and 2 RQ workers, each in its own working directory,
on one MODEL_DIR, one PostgreSQL and one Redis. 2,000 webhooks over 10 projects arrive while a
server and a worker are killed with SIGKILL (and restarted) and PostgreSQL restarts once.

Afterwards: every acknowledged annotation is in the store; every project serves one version that
read all of its annotations; no project was trained by two jobs at once."""
from __future__ import annotations

import itertools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ml_backend.feedback.store import AnnotationStore
from ml_backend.store import ProjectStore
from tests.integration.conftest import backend_env, free_port, serve_argv, wait_for, worker_argv
from tests.support.live import annotation_webhook, choice, ls_task

pytestmark = pytest.mark.integration

PROJECTS = [str(p) for p in range(31, 41)]
PER_PROJECT = 200
RATE = 60  # webhooks a second: about 35 s of deliveries
SECRET = {"X-Webhook-Secret": "hook-secret-123"}
POSITIVE = ("good", "great", "fine", "lovely", "superb")
NEGATIVE = ("bad", "awful", "poor", "dull", "grim")


def text_webhook(project: str, n: int, config: str) -> dict:
    label = ("Positive", "Negative")[n % 2]
    words = POSITIVE if label == "Positive" else NEGATIVE
    task_id = int(project) * 10_000 + n
    task = ls_task(task_id, {"text": f"a {words[n % 5]} film, {words[(n + 2) % 5]} acting"}, project=int(project))
    return annotation_webhook("ANNOTATION_CREATED", task_id, task, [choice(label, to_name="text")], config,
                              project_id=int(project))


@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own: it is restarted mid-test."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_two_servers_two_workers_survive_kill_9_and_a_database_restart(tmp_path, redis_url, postgres, spawn,
                                                                      text_config):
    database_url = postgres.new_database()
    model_dir = tmp_path / "models"
    env = backend_env(model_dir, redis_url, DATABASE_URL=database_url, TRAIN_DEBOUNCE_SECONDS="3",
                      XIL_EPOCHS="2", TORCH_THREADS="1", THREADS="16")
    hosts = {name: tmp_path / name for name in ("server-a", "server-b", "worker-a", "worker-b")}
    for directory in hosts.values():
        directory.mkdir()
    ports = [free_port(), free_port()]
    servers = [spawn(serve_argv(ports[i]), env, f"server-{i}", hosts[f"server-{'ab'[i]}"]) for i in range(2)]
    workers = [spawn(worker_argv(), env, f"worker-{i}", hosts[f"worker-{'ab'[i]}"]) for i in range(2)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url in urls:
        wait_for(lambda: _up(url), 90, message=f"{url} to start")
    wait_for(lambda: len(_workers(redis_url)) == 2, 90, message="both workers to listen")

    # interleaved projects, so every project's annotations straddle every fault
    bodies = [(p, text_webhook(p, n, text_config)) for n in range(PER_PROJECT) for p in PROJECTS]
    acknowledged: dict[str, set[int]] = {p: set() for p in PROJECTS}
    delivered = itertools.count(1)
    faults: list[str] = []
    orphaned: list[str] = []  # the job the killed worker was running
    guard = threading.Lock()
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

    def deliver(item: tuple[str, dict]) -> None:
        project, body = item
        n = next(delivered)
        # paced, so that trainings run (and are killed) while webhooks still arrive
        time.sleep(max(0.0, started + n / RATE - time.monotonic()))
        # a load balancer's view: the other server when one does not answer
        for url in (urls[n % 2], urls[(n + 1) % 2]):
            try:
                response = session.post(url + "/webhook", json=body, headers=SECRET, timeout=15)
            except requests.RequestException:
                continue
            if 200 <= response.status_code < 300:
                with guard:
                    acknowledged[project].add(body["annotation"]["id"])
                return

    def chaos() -> None:
        def when(count: int) -> None:
            wait_for(lambda: sum(map(len, acknowledged.values())) >= count, 300, message=f"{count} deliveries")

        when(500)
        servers[0].kill(signal.SIGKILL)
        faults.append("server killed")
        ports[0] = free_port()
        servers[0] = spawn(serve_argv(ports[0]), env, "server-0-restarted", hosts["server-a"])
        wait_for(lambda: _up(f"http://127.0.0.1:{ports[0]}"), 90, message="the restarted server")
        urls[0] = f"http://127.0.0.1:{ports[0]}"
        when(900)
        # the worker that runs RQ's scheduler, while it trains: the hardest worker to lose
        victim, job = wait_for(lambda: _scheduler_worker_training(redis_url, workers), 60, interval=0.05,
                               message="the scheduler's worker to be training")
        orphaned.append(job)
        workers[victim].kill(signal.SIGKILL)
        faults.append("worker killed")
        workers[victim] = spawn(worker_argv(), env, f"worker-{victim}-restarted", hosts[f"worker-{'ab'[victim]}"])
        when(1300)
        postgres.restart()
        faults.append("postgres restarted")

    started = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(deliver, bodies))
    chaos_thread.join(120)
    delivery_s = time.monotonic() - started
    assert faults == ["server killed", "worker killed", "postgres restarted"]
    total = sum(map(len, acknowledged.values()))
    assert total >= 0.95 * len(bodies), f"only {total} of {len(bodies)} webhooks acknowledged"

    store = AnnotationStore(database_url)
    try:
        for project in PROJECTS:
            stored = {a["id"] for a, _ in store.list(project)}
            assert acknowledged[project] <= stored, f"project {project}: acknowledged but lost: " \
                                                    f"{sorted(acknowledged[project] - stored)[:10]}"

        def settled(project: str) -> bool:
            projects = ProjectStore(model_dir, project)
            current = projects.current()
            meta = projects.meta(current) if current else {}
            return meta.get("store_revision") == store.revision(project) and \
                meta.get("annotations") == store.count(project)

        wait_for(lambda: all(settled(p) for p in PROJECTS), 240, interval=1,
                 message="every project to serve a version that read all of its annotations")
        for project in PROJECTS:
            versions = ProjectStore(model_dir, project).list()
            assert sum(v["current"] for v in versions) == 1
            spans = sorted((v["trained"]["started_at"], v["trained"]["ended_at"], v["trained"]["job"], v["version"])
                           for v in versions)
            for before, after in zip(spans, spans[1:]):
                assert before[1] <= after[0], f"project {project}: {before} and {after} trained at once"
            assert all(job for _, _, job, _ in spans)
    finally:
        store.close()
    # the orphaned job did not stay "started": the surviving worker's reaper retried it
    from rq.job import Job
    from redis import Redis

    job = Job.fetch(orphaned[0], connection=Redis.from_url(redis_url))
    assert job.get_status() in ("finished", "failed"), f"{orphaned[0]} left {job.get_status()}"
    print(f"the killed worker's job {job.id}: {job.get_status()}, retries left {job.retries_left}")
    assert all(w.alive() for w in workers) and all(s.alive() for s in servers)
    print(f"delivered {len(bodies)} webhooks ({total} acknowledged) in {delivery_s:.1f}s; "
          f"settled after {time.monotonic() - started:.1f}s")


def _workers(redis_url: str) -> list:
    from redis import Redis
    from rq import Worker

    return Worker.all(connection=Redis.from_url(redis_url))


def _scheduler_worker_training(redis_url: str, workers: list) -> tuple[int, str] | None:
    """(index, job id) when the worker that runs RQ's scheduler runs a training job now."""
    from redis import Redis

    client = Redis.from_url(redis_url)
    name = client.get("rq:scheduler-lock:ml_backend")
    pid = client.hget(b"rq:scheduler:" + name, "pid") if name else None
    if not pid:
        return None
    try:  # the scheduler is a child process of its worker
        parent = int(open(f"/proc/{int(pid)}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    for index, process in enumerate(workers):
        if process.proc.pid != parent:
            continue
        for worker in _workers(redis_url):
            job = worker.get_current_job_id() or ""
            if worker.pid != parent or not job.startswith("train-"):
                continue
            from rq.job import Job

            progress = (Job.fetch(job, connection=client).meta or {}).get("progress") or 0
            if 0.2 <= progress < 0.8:  # fitting, not finishing
                return index, job
    return None
