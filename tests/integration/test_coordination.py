"""Locks that hold across hosts: every job lock is a Redis key, so two workers (on any hosts) never
run two trainings, or two rankings, of one project at once."""
from __future__ import annotations

import threading
import time

import pytest

from ml_backend.config import Settings
from ml_backend.jobs import make_queue
from ml_backend.jobs.queue import RANK, TRAIN, RedisQueue

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", [TRAIN, RANK])
def test_jobs_of_one_kind_and_project_never_overlap_while_other_projects_run(tmp_path, redis_url, kind):
    queue = make_queue(Settings(model_dir=tmp_path / "models", redis_url=redis_url))
    intervals: dict[str, list[tuple[float, float]]] = {"5": [], "6": []}

    def job(project: str) -> None:
        with queue.running(kind, project):
            started = time.monotonic()
            time.sleep(0.3)
            intervals[project].append((started, time.monotonic()))

    threads = [threading.Thread(target=job, args=(p,)) for p in ("5", "5", "5", "6")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted(intervals["5"])
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    # another project's job ran beside them, not after them
    assert intervals["6"][0][0] < spans[-1][0]
    assert not queue.redis.keys("ml_backend:*:lock:*")  # released


def test_a_job_whose_worker_died_before_starting_it_is_queued_again_and_folds_nothing(tmp_path, redis_url):
    """RQ moves a job to an intermediate list when a worker takes it; a worker killed before the job
    starts leaves it there, "queued", for RQ's ten-minute maintenance. Webhooks must not fold into
    it, and the reaper queues it again."""
    from rq.intermediate_queue import IntermediateQueue

    settings = Settings(model_dir=tmp_path / "models", redis_url=redis_url, train_debounce=0)
    queue = RedisQueue(settings)  # not make_queue: its queue per URL keeps the first settings
    first = queue.enqueue_train("7")
    intermediate = IntermediateQueue(queue.queue.key, queue.redis)
    # what a worker's dequeue does, and then it dies
    assert queue.redis.lmove(queue.queue.key, intermediate.key, "LEFT", "RIGHT").decode() == first["id"]
    second = queue.enqueue_train("7")
    assert not second.get("folded") and second["id"] != first["id"]
    assert queue.requeue_stranded(grace=0) == []  # first seen now: maybe its worker is about to start it
    intermediate.connection.set(intermediate.get_first_seen_key(first["id"]), time.time() - 60)
    assert queue.requeue_stranded() == [first["id"]]
    assert queue.redis.lrange(queue.queue.key, 0, -1) == [second["id"].encode(), first["id"].encode()]
    assert intermediate.get_job_ids() == []


def test_due_jobs_are_queued_when_rqs_scheduler_is_gone(tmp_path, redis_url):
    """No worker runs RQ's scheduler (its worker was killed): the reaper queues due jobs itself."""
    from ml_backend.jobs.queue import OVERDUE_AFTER

    settings = Settings(model_dir=tmp_path / "models", redis_url=redis_url, train_debounce=0.1)
    queue = RedisQueue(settings)  # not make_queue: its queue per URL keeps the first settings
    job = queue.enqueue_train("8")
    registry = queue.queue.scheduled_job_registry
    assert job["id"] in registry.get_job_ids()
    assert queue.enqueue_overdue() == []  # due, but RQ's scheduler may still be on its way
    queue.redis.zadd(registry.key, {job["id"]: time.time() - OVERDUE_AFTER - 1})
    assert queue.enqueue_overdue() == [job["id"]]
    assert queue.enqueue_overdue() == []
    assert queue.queue.job_ids == [job["id"]] and registry.get_job_ids() == []
    assert queue.enqueue_train("8")["folded"] is True  # it waits in the queue now
