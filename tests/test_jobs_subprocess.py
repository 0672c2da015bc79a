"""Embedded jobs run their core in a child process (forkserver): results, progress, failures."""
from __future__ import annotations

import os

import pytest

from ml_backend.config import Settings
from ml_backend.jobs import queue as jobs_queue
from ml_backend.jobs.queue import EmbeddedQueue, JobFailed


def core_reporting_its_pid(settings: Settings, project: str, progress=None) -> dict:
    progress(0.5, "half way")
    return {"pid": os.getpid(), "project": project}


def core_reporting_its_niceness(settings: Settings, project: str, progress=None) -> dict:
    return {"nice": os.nice(0)}


def core_that_raises(settings: Settings, project: str, progress=None) -> dict:
    raise ValueError(f"bad data in project {project}")


def core_that_dies(settings: Settings, project: str, progress=None) -> dict:
    os._exit(3)


@pytest.fixture
def queue(tmp_path):
    return EmbeddedQueue(Settings(model_dir=tmp_path))


def test_the_core_runs_in_another_process_and_its_progress_reaches_the_record(queue, tmp_path):
    record = {"progress": 0.0, "message": ""}
    jobs_queue._local.record = record
    try:
        result = queue.execute(core_reporting_its_pid, Settings(model_dir=tmp_path), "7")
    finally:
        jobs_queue._local.record = None
    assert result["project"] == "7" and result["pid"] != os.getpid()
    assert record == {"progress": 0.5, "message": "half way"}


def test_the_child_yields_the_cpu_to_the_serving_process(queue, tmp_path):
    """The forkserver and its jobs run JOB_NICE (a process setting: the environment's) below this process."""
    nice = queue.execute(core_reporting_its_niceness, Settings(model_dir=tmp_path), "7")["nice"]
    assert nice == min(19, os.nice(0) + Settings.from_env().job_nice)


def test_an_error_in_the_child_fails_the_job_with_its_message_and_traceback(queue, tmp_path):
    with pytest.raises(JobFailed, match="ValueError: bad data in project 7") as info:
        queue.execute(core_that_raises, Settings(model_dir=tmp_path), "7")
    assert "core_that_raises" in info.value.remote_traceback


def test_a_child_that_dies_fails_the_job_instead_of_hanging(queue, tmp_path):
    with pytest.raises(JobFailed, match="exit code 3"):
        queue.execute(core_that_dies, Settings(model_dir=tmp_path), "7")


def test_in_a_thread_when_asked(tmp_path):
    queue = EmbeddedQueue(Settings(model_dir=tmp_path, jobs_in_subprocess=False))
    assert queue.execute(core_reporting_its_pid, Settings(model_dir=tmp_path), "7")["pid"] == os.getpid()


def test_the_forkserver_starts_with_the_first_enqueued_job_not_with_the_queue(tmp_path):
    """The job code (torch) is imported during the first job's debounce, so that job does not wait
    for it; a serving process that never enqueues a job starts no forkserver. Run in a fresh
    interpreter: the forkserver is one per process, and this one may have started it already."""
    import subprocess
    import sys

    script = f"""
import time
from multiprocessing import forkserver
from ml_backend.config import Settings
from ml_backend.jobs.queue import EmbeddedQueue

def running():  # multiprocessing keeps the server's pid in a private attribute; there is no public one
    return forkserver._forkserver._forkserver_pid is not None

queue = EmbeddedQueue(Settings(model_dir={str(tmp_path)!r}, train_debounce=600))
time.sleep(0.5)
before = running()
queue.enqueue_train("3")
deadline = time.time() + 20
while not running() and time.time() < deadline:
    time.sleep(0.05)
print(before, running(), queue.jobs("3")[0]["status"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "queued"], out.stdout + out.stderr


def test_progress_is_throttled_but_keeps_stage_jumps_and_the_end():
    from ml_backend.jobs.queue import throttled

    seen: list[tuple[float, str]] = []
    progress = throttled(lambda fraction, message: seen.append((fraction, message)))
    for i in range(3000):  # a job reading 3,000 annotations, in far less than PROGRESS_EVERY_S
        progress(0.1 + 0.2 * i / 3000, f"read {i + 1}/3000 annotations")
    progress(0.92, "evaluating")
    progress(1.0, "published p3-v2")
    assert seen[0] == (0.1, "read 1/3000 annotations")
    assert 3 <= len(seen) <= 12  # every 0.05 of progress, not 3,000 messages
    assert seen[-2:] == [(0.92, "evaluating"), (1.0, "published p3-v2")]
