"""The job queues (train, rank): RQ when REDIS_URL is set, an in-process worker thread otherwise.

Both queues share the rules: at most one training job per project runs at a time, and
webhooks that arrive while one is queued fold into it (so a burst gives one job, or two
when the burst straddles a running job). Job records look the same from either queue.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import traceback
import uuid
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

from ml_backend import metrics
from ml_backend.config import Settings
from ml_backend.store import ProjectStore

log = logging.getLogger(__name__)

TRAIN, RANK = "train", "rank"
JOB_TIMEOUT = 3600
ENQUEUE_GRACE = 30  # seconds a fresh queued-marker may point at a job not yet in Redis
ALIVE_TTL = 8  # seconds a running job's heartbeat key lives; refreshed every HEARTBEAT_EVERY
HEARTBEAT_EVERY = 2
ORPHAN_CHECK_EVERY = 0.25  # seconds between a work horse's checks that its worker lives (a getppid)
LOST_AFTER = ALIVE_TTL - 2 * HEARTBEAT_EVERY  # seconds without renewing its lock before a job stops itself
REAP_EVERY = 3  # seconds between a worker's checks for jobs whose heartbeat stopped
OVERDUE_AFTER = 5  # seconds a due scheduled job waits for RQ's scheduler (it looks every second)

_local = threading.local()


# --- the job functions (what an RQ worker imports and runs) --------------------------
def train_job(project: str, reason: str = "annotations") -> dict[str, Any]:
    from ml_backend.jobs.train import train_project

    def work(settings: Settings, queue: "JobQueue") -> dict[str, Any]:
        resync = queue.mark_started(project) or reason == "resync"
        return queue.execute(train_project, settings, project, reason="resync" if resync else reason,
                             job_id=current_job_id())

    return _run(TRAIN, project, work)


def rank_job(project: str) -> dict[str, Any]:
    from ml_backend.jobs.rank import rank_project

    return _run(RANK, project, lambda settings, queue: queue.execute(rank_project, settings, project))


def follow_up(kind: str, result: dict[str, Any]) -> list[str]:
    """The one chaining policy: a training job that published a version is followed by a ranking
    job, so Label Studio's queue follows the new model."""
    return [RANK] if kind == TRAIN and result.get("version") else []


def _run(kind: str, project: str, work: Callable[[Settings, "JobQueue"], dict[str, Any]]) -> dict[str, Any]:
    # In-process jobs use the app's settings; an RQ worker reads its own environment.
    settings = getattr(_local, "settings", None) or Settings.from_env()
    started = time.perf_counter()
    queue = make_queue(settings)
    try:
        with queue.running(kind, project):
            result = work(settings, queue)
    except Exception:
        metrics.JOB_FAILURES.labels(kind).inc()
        raise
    finally:
        metrics.JOB_DURATION.labels(kind).observe(time.perf_counter() - started)
    if RANK in follow_up(kind, result):
        queue.enqueue_rank(project)
    return result


def current_job_id() -> Optional[str]:
    """The id of the job this thread (embedded queue) or work horse (RQ) runs; None outside a job."""
    record = getattr(_local, "record", None)
    if record is not None:
        return record["id"]
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:
        return None
    return job.id if job is not None else None


def report_progress(fraction: float, message: str = "") -> None:
    """Record a running job's progress (0..1) where the status API can read it."""
    record = getattr(_local, "record", None)
    if record is not None:
        record["progress"], record["message"] = round(float(fraction), 4), message
        return
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:
        job = None
    if job is not None:
        job.meta.update(progress=round(float(fraction), 4), message=message)
        job.save_meta()


PROGRESS_EVERY_S = 0.25
PROGRESS_STEP = 0.05


def throttled(report: Callable[[float, str], None]) -> Callable[[float, str], None]:
    """``report`` for at most one update per PROGRESS_EVERY_S, unless the fraction moved by
    PROGRESS_STEP or reached 1: a job reading 3,000 annotations reported each one, and every report
    cost the serving process (a pipe message) or Redis (a write)."""
    last = {"at": float("-inf"), "fraction": float("-inf")}

    def progress(fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if now - last["at"] >= PROGRESS_EVERY_S or fraction - last["fraction"] >= PROGRESS_STEP or fraction >= 1:
            last["at"], last["fraction"] = now, fraction
            report(fraction, message)

    return progress


_queues: dict[str, "JobQueue"] = {}
_queues_guard = threading.Lock()


def make_queue(settings: Settings) -> "JobQueue":
    """One queue object per process and configuration."""
    key = settings.redis_url or f"embedded:{settings.model_dir}"
    with _queues_guard:
        if key not in _queues:
            _queues[key] = RedisQueue(settings) if settings.redis_url else EmbeddedQueue(settings)
        return _queues[key]


class JobQueue:
    def execute(self, function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run a job's core (``train_project``, ``rank_project``), its progress reported."""
        return function(*args, progress=throttled(report_progress), **kwargs)

    def enqueue_train(self, project: str, reason: str = "annotations") -> dict[str, Any]: ...
    def enqueue_rank(self, project: str) -> dict[str, Any]: ...
    def jobs(self, project: Optional[str] = None, limit: int = 50) -> list[dict[str, Any]]: ...
    def depth(self) -> int: ...
    def mark_started(self, project: str) -> bool:
        """Called when a training job starts; True if a resync was asked for meanwhile."""
        ...
    def running(self, kind: str, project: str) -> contextlib.AbstractContextManager:
        """Held while a job runs: one training job per project at a time."""
        ...


class EmbeddedQueue(JobQueue):
    """One worker thread in the serving process: same job functions, same records."""

    def __init__(self, settings: Settings, max_records: int = 200) -> None:
        self.settings = settings
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._records: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._max_records = max_records
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="ml-backend-jobs", daemon=True)
            self._thread.start()
            if self.settings.jobs_in_subprocess:  # import the job code while the first job's debounce runs
                threading.Thread(target=_warm_job_context, name="ml-backend-forkserver", daemon=True).start()

    def _enqueue(self, kind: str, project: str, reason: str) -> dict[str, Any]:
        with self._cond:
            for queued in self._pending:
                if queued["kind"] == kind and queued["project"] == project:
                    if reason == "resync":
                        queued["reason"] = "resync"
                    return {**queued, "folded": True}
            record = _new_record(kind, project, reason)
            if kind == TRAIN:
                record["not_before"] = time.time() + self.settings.train_debounce
            self._records[record["id"]] = record
            while len(self._records) > self._max_records:
                self._records.popitem(last=False)
            self._pending.append(record)
            self._ensure_thread()
            self._cond.notify()
            return dict(record)

    def enqueue_train(self, project: str, reason: str = "annotations") -> dict[str, Any]:
        return self._enqueue(TRAIN, project, reason)

    def enqueue_rank(self, project: str) -> dict[str, Any]:
        return self._enqueue(RANK, project, "new version")

    def execute(self, function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The job's core runs in a child process: training holds the GIL for seconds at a time,
        which would stall every webhook and /predict of the serving process meanwhile. Children
        fork from a forkserver that imported the job code once (a fresh fork costs milliseconds; a
        fork of the serving process itself could inherit a lock held by one of its threads)."""
        if not self.settings.jobs_in_subprocess:
            return super().execute(function, *args, **kwargs)
        context = _job_context()
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_child_job, args=(sender, function, args, kwargs), daemon=True,
                                name=f"ml-backend-{function.__name__}")
        child.start()
        sender.close()
        try:
            while True:
                if receiver.poll(0.5):
                    try:
                        what, payload = receiver.recv()
                    except EOFError:
                        what, payload = "died", None
                    if what == "progress":
                        report_progress(*payload)
                        continue
                    child.join(10)
                    if what == "result":
                        return payload
                    if what == "error":
                        raise JobFailed(*payload)
                    raise JobFailed(f"the job's process ended without a result (exit code {child.exitcode})", "")
                if not child.is_alive():
                    raise JobFailed(f"the job's process died (exit code {child.exitcode})", "")
        finally:
            receiver.close()
            if child.is_alive():
                child.kill()
                child.join(5)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                delay = self._pending[0].get("not_before", 0) - time.time()
                if delay > 0:  # still collecting the burst that enqueued it
                    self._cond.wait(delay)
                    continue
                record = self._pending.popleft()
            record.update(status="started", started_at=time.time())
            _local.record, _local.settings = record, self.settings
            try:
                function = train_job if record["kind"] == TRAIN else rank_job
                record["result"] = function(record["project"], record["reason"]) if record["kind"] == TRAIN \
                    else function(record["project"])
                record["status"] = "finished"
                record["progress"] = 1.0
            except JobFailed as exc:
                record.update(status="failed", error=str(exc), traceback=exc.remote_traceback or traceback.format_exc())
                log.error("%s job for project %s failed: %s", record["kind"], record["project"], exc)
            except Exception as exc:
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                log.error("%s job for project %s failed: %s", record["kind"], record["project"], exc)
            finally:
                record["ended_at"] = time.time()
                _local.record = None

    def jobs(self, project: Optional[str] = None, limit: int = 50) -> list[dict[str, Any]]:
        with self._cond:
            records = [dict(r) for r in reversed(self._records.values()) if project in (None, r["project"])]
        return records[:limit]

    def depth(self) -> int:
        return len(self._pending)

    def mark_started(self, project: str) -> bool:
        return False  # the pending deque already forgot the job; its reason was updated in place

    @contextlib.contextmanager
    def running(self, kind: str, project: str) -> Iterator[None]:
        """Jobs of one queue never overlap; file locks keep several serving processes (gunicorn
        WORKERS > 1 without Redis) from training, or ranking, one project at once. File locks hold
        on one host only: several hosts need REDIS_URL."""
        with ProjectStore(self.settings.model_dir, project).job_lock(kind):
            yield

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Block until no job is pending or running (tests, CLI demo)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._cond:
                busy = self._pending or any(r["status"] == "started" for r in self._records.values())
            if not busy:
                return True
            time.sleep(0.05)
        return False


class JobFailed(Exception):
    """A job's core failed in its child process; the message reads like the exception's own."""

    def __init__(self, message: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


_job_context_guard = threading.Lock()


def _job_context():
    """The forkserver context: the forkserver lowers its priority (JOB_NICE) before it imports the
    job code, and its jobs inherit that."""
    import multiprocessing

    with _job_context_guard:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["ml_backend.jobs.lower_priority", "ml_backend.jobs.train",
                                        "ml_backend.jobs.rank"])
        return context


def _warm_job_context() -> None:
    """Start the forkserver now: it imports torch and the job code once (seconds), so the first job
    forks at once instead of waiting for them."""
    from multiprocessing import forkserver

    _job_context()
    try:
        forkserver.ensure_running()
    except Exception as exc:  # the first job starts it then, and reports what fails
        log.warning("could not start the job forkserver early: %s", exc)


def _child_job(sender, function: Callable[..., dict[str, Any]], args: tuple, kwargs: dict) -> None:
    """A job's core in a child process; progress, then the result or the error, go up the pipe."""
    @throttled
    def progress(fraction: float, message: str = "") -> None:
        sender.send(("progress", (fraction, message)))

    try:
        from ml_backend.serving import configure_torch

        configure_torch(args[0])
        sender.send(("result", function(*args, progress=progress, **kwargs)))
    except BaseException as exc:  # noqa: B902 - whatever it was, the parent must hear of it
        sender.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    finally:
        sender.close()


def _new_record(kind: str, project: str, reason: str) -> dict[str, Any]:
    return {"id": f"{kind}-{project}-{uuid.uuid4().hex[:10]}", "kind": kind, "project": project, "reason": reason,
            "status": "queued", "enqueued_at": time.time(), "started_at": None, "ended_at": None,
            "progress": 0.0, "message": "", "error": None, "traceback": None, "result": None}


class RedisQueue(JobQueue):
    """RQ queue; jobs run in `rq worker` processes (see README)."""

    def __init__(self, settings: Settings) -> None:
        from redis import Redis
        from rq import Queue

        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)
        self.queue = Queue(settings.queue_name, connection=self.redis)

    def _queued_key(self, kind: str, project: str) -> str:
        return f"ml_backend:{self.settings.queue_name}:{kind}:{project}:queued"

    def _enqueue(self, kind: str, project: str, reason: str) -> dict[str, Any]:
        from rq import Retry
        from rq.job import Job, JobStatus

        key = self._queued_key(kind, project)
        job_id = f"{kind}-{project}-{uuid.uuid4().hex[:10]}"
        waiting = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value}
        for _ in range(3):
            # a burst of webhooks folds into the waiting job: claim-or-read and the job's status are
            # two round trips, not a fetch of the whole job each (a third of a webhook's time)
            claimed, existing = self.redis.pipeline(transaction=False).set(key, job_id, nx=True, ex=JOB_TIMEOUT) \
                .get(key).execute()
            if claimed:
                break
            existing = (existing or b"").decode()
            status = self.redis.hget(Job.key_for(existing), "status") if existing else None
            if status is not None:
                status = status.decode()
                if status == JobStatus.QUEUED.value and self.redis.lpos(self.queue.key, existing) is None:
                    # taken off the queue by a worker that may have died before starting it: a job
                    # that is not waiting any more must not swallow the annotation
                    status = "dequeued"
                if status in waiting:
                    if reason == "resync":
                        self._ask_resync(key, existing)
                    return {"id": existing, "kind": kind, "project": project, "reason": reason, "status": status,
                            "folded": True}
            else:  # no such job
                if existing and self.redis.ttl(key) > JOB_TIMEOUT - ENQUEUE_GRACE:
                    # claimed a moment ago by a concurrent webhook that is still enqueueing its job
                    return {"id": existing, "kind": kind, "project": project, "reason": reason,
                            "status": "scheduled", "folded": True}
            self.redis.delete(key)  # stale marker: its job is gone or already started
        options = dict(job_id=job_id, job_timeout=JOB_TIMEOUT, result_ttl=7 * 86400, failure_ttl=7 * 86400,
                       # retried at once: an interval would need RQ's scheduler, whose lock a dead
                       # worker may hold for a minute (Label Studio calls back off inside the job)
                       retry=Retry(max=2),
                       meta={"project": project, "kind": kind, "reason": reason, "progress": 0.0})
        if kind == TRAIN and self.settings.train_debounce > 0:
            # workers run with --with-scheduler, which moves it to the queue when due
            job = self.queue.enqueue_in(timedelta(seconds=self.settings.train_debounce), train_job, project, reason,
                                        **options)
        elif kind == TRAIN:
            job = self.queue.enqueue(train_job, project, reason, **options)
        else:
            job = self.queue.enqueue(rank_job, project, **options)
        return self._record(job)

    def enqueue_train(self, project: str, reason: str = "annotations") -> dict[str, Any]:
        return self._enqueue(TRAIN, project, reason)

    def enqueue_rank(self, project: str) -> dict[str, Any]:
        return self._enqueue(RANK, project, "new version")

    def mark_started(self, project: str) -> bool:
        """From now on a new webhook needs a follow-up job rather than folding into this one."""
        from rq import get_current_job

        job = get_current_job()
        key = self._queued_key(TRAIN, project)
        if job is not None and (self.redis.get(key) or b"").decode() == job.id:
            self.redis.delete(key)
        return bool(self.redis.getdel(f"{key}:resync"))

    def _alive_key(self, job_id: str) -> str:
        return f"ml_backend:{self.settings.queue_name}:alive:{job_id}"

    def _lock_key(self, project: str, kind: str = TRAIN) -> str:
        # the training lock keeps its older name: workers of the previous release use it too
        suffix = project if kind == TRAIN else f"{kind}:{project}"
        return f"ml_backend:{self.settings.queue_name}:lock:{suffix}"

    @contextlib.contextmanager
    def running(self, kind: str, project: str) -> Iterator[None]:
        """One training job, and one ranking job, per project across all workers and hosts (a Redis
        lock per project and kind), and a heartbeat every HEARTBEAT_EVERY seconds. RQ's own
        heartbeat notices a dead worker after 60 s or more; `reap_abandoned` uses this one to retry
        its job within seconds. The project lock's token is the job id, so the reaper can free a
        dead job's lock at once. The lock lives ALIVE_TTL seconds past the last beat: a job (a
        work horse) that cannot renew it for LOST_AFTER seconds, or finds it taken, stops itself
        before another job can take it, so two jobs never hold it at once."""
        from redis.exceptions import LockNotOwnedError
        from rq import get_current_job

        job = get_current_job()
        job_id = job.id if job is not None else f"{kind}-{project}-{uuid.uuid4().hex[:10]}"
        alive = self._alive_key(job_id)
        # not thread-local: the heartbeat thread extends the lock the job's thread took
        lock = self.redis.lock(self._lock_key(project, kind), timeout=ALIVE_TTL, thread_local=False)
        worker_pid = self._worker_pid(job) if job is not None else os.getppid()
        held = threading.Event()
        stop = threading.Event()
        renewed = [time.monotonic()]

        def lost(why: str) -> None:
            if job is not None:  # a work horse: stop, RQ retries (or fails) the job
                log.error("%s: %s; stopping", job_id, why)
                os._exit(71)
            log.error("%s: %s", job_id, why)

        def orphaned() -> bool:
            """RQ forks the job into its own process group, so killing the worker leaves this horse
            running unseen; it stops, so the reaper retries the job instead of a twin."""
            if job is not None and os.getppid() != worker_pid:
                log.error("%s: its worker (pid %d) died; stopping", job_id, worker_pid)
                os._exit(70)
            return stop.is_set()

        def beat() -> None:
            while True:
                if orphaned():
                    return
                try:
                    self.redis.set(alive, project, ex=ALIVE_TTL)
                    if held.is_set():
                        lock.extend(ALIVE_TTL, replace_ttl=True)
                    renewed[0] = time.monotonic()
                except LockNotOwnedError:
                    lost(f"another job holds the lock of project {project}")
                except Exception:  # Redis away for a moment
                    if held.is_set() and time.monotonic() - renewed[0] >= LOST_AFTER:
                        lost(f"the lock of project {project} could not be renewed for {LOST_AFTER} s")
                for _ in range(int(HEARTBEAT_EVERY / ORPHAN_CHECK_EVERY)):
                    if stop.wait(ORPHAN_CHECK_EVERY) or orphaned():
                        return

        beater = threading.Thread(target=beat, name="ml-backend-heartbeat", daemon=True)
        beater.start()
        try:
            if not lock.acquire(blocking=True, blocking_timeout=JOB_TIMEOUT, token=job_id):
                raise TimeoutError(f"project {project}: another {kind} job held the lock for too long")
            renewed[0] = time.monotonic()
            held.set()
            yield
        finally:
            stop.set()
            beater.join(timeout=HEARTBEAT_EVERY + 1)
            with contextlib.suppress(Exception):
                if held.is_set():
                    lock.release()
                self.redis.delete(alive)

    def _worker_pid(self, job) -> int:
        """The pid of the worker running ``job`` (this horse's parent), from the worker's record in
        Redis: a horse whose worker died before it got here would read its new parent's pid."""
        from rq import Worker

        with contextlib.suppress(Exception):
            if job.worker_name:
                worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + job.worker_name,
                                            connection=self.redis)
                if worker is not None and worker.pid:
                    return int(worker.pid)
        return os.getppid()

    def reap_abandoned(self) -> list[str]:
        """Retry (or fail, once out of retries) every started job whose heartbeat stopped: its
        worker died. Frees the dead job's project lock. Returns the reaped job ids."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus
        from rq.utils import parse_composite_key

        registry = self.queue.started_job_registry
        abandoned: list[Job] = []
        for member in self.redis.zrange(registry.key, 0, -1):
            job_id, _ = parse_composite_key(member.decode())
            if self.redis.exists(self._alive_key(job_id)):
                continue
            try:
                job = Job.fetch(job_id, connection=self.redis)
            except NoSuchJobError:
                continue
            started = _ts(job.started_at)
            # a job that has just started may not have beaten yet
            if job.get_status() != JobStatus.STARTED or started is None or time.time() - started < ALIVE_TTL:
                continue
            # an expiry in the past makes RQ's own cleanup treat it as abandoned (xx: only if still there)
            self.redis.zadd(registry.key, {member: 1}, xx=True)
            abandoned.append(job)
        if not abandoned:
            return []
        registry.cleanup(timestamp=2)  # only the entries marked above (RQ re-checks that each is still started)
        for job in abandoned:
            meta = job.meta or {}
            lock_key = self._lock_key(meta.get("project", ""), meta.get("kind") or TRAIN)
            if (self.redis.get(lock_key) or b"").decode() == job.id:
                self.redis.delete(lock_key)
            log.warning("%s: its worker stopped beating; retried or failed (retries left: %s)", job.id,
                        job.retries_left)
        return [job.id for job in abandoned]

    def requeue_stranded(self, grace: float = ALIVE_TTL) -> list[str]:
        """Queue again every job a worker took off the queue but never started (it died between the
        two: RQ itself looks for such jobs only every ten minutes). A job stays in RQ's intermediate
        list for milliseconds when its worker lives; ``grace`` seconds means it died."""
        from rq.exceptions import NoSuchJobError
        from rq.intermediate_queue import IntermediateQueue
        from rq.job import Job

        intermediate = IntermediateQueue(self.queue.key, self.redis)
        started = set(self.queue.started_job_registry.get_job_ids())
        requeued = []
        for job_id in intermediate.get_job_ids():
            if job_id in started or intermediate.set_first_seen(job_id):
                continue
            first_seen = intermediate.get_first_seen(job_id)
            if first_seen is None or time.time() - first_seen.timestamp() < grace:
                continue
            if not self.redis.lrem(intermediate.key, 1, job_id):  # another reaper, or the horse, took it
                continue
            try:
                job = Job.fetch(job_id, connection=self.redis)
            except NoSuchJobError:
                continue
            self.queue._enqueue_job(job)
            requeued.append(job_id)
        if requeued:
            log.warning("queued again %d jobs whose worker died before starting them: %s", len(requeued),
                        ", ".join(requeued))
        return requeued

    def enqueue_overdue(self, grace: float = OVERDUE_AFTER) -> list[str]:
        """Queue every scheduled job (a debounced training, say) due more than ``grace`` seconds ago.
        RQ's scheduler runs in one worker, under a Redis lock; when that worker dies, its lock
        outlives it by a minute and the other workers try to take over only every ten minutes, so
        due trainings would wait that long. ZREM decides who moves a job: never two movers."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        registry = self.queue.scheduled_job_registry
        moved = []
        for member in self.redis.zrangebyscore(registry.key, 0, time.time() - grace, start=0, num=1000):
            if not self.redis.zrem(registry.key, member):  # the scheduler (or another reaper) took it
                continue
            try:
                job = Job.fetch(member.decode(), connection=self.redis)
            except NoSuchJobError:
                continue
            self.queue._enqueue_job(job)  # what RQ's scheduler calls for a due job
            moved.append(job.id)
        if moved:
            log.warning("RQ's scheduler is late (its worker died?): queued %d due jobs: %s", len(moved),
                        ", ".join(moved))
        return moved

    def _ask_resync(self, key: str, job_id: str) -> None:
        """A resync folded into a waiting job that was queued for new annotations."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return
        if job.args[1:] != ("resync",):
            self.redis.set(f"{key}:resync", 1, ex=JOB_TIMEOUT)

    def _record(self, job) -> dict[str, Any]:
        meta = job.meta or {}
        status = job.get_status(refresh=False)
        record = {"id": job.id, "kind": meta.get("kind"), "project": meta.get("project"), "reason": meta.get("reason"),
                  "status": str(status.value if hasattr(status, "value") else status),
                  "enqueued_at": _ts(job.enqueued_at), "started_at": _ts(job.started_at), "ended_at": _ts(job.ended_at),
                  "progress": meta.get("progress", 0.0), "message": meta.get("message", ""),
                  "error": None, "traceback": None, "result": None}
        if record["status"] == "failed":
            info = job.latest_result()
            text = (info.exc_string if info is not None else "") or ""
            record["traceback"] = text
            record["error"] = text.strip().splitlines()[-1] if text.strip() else "failed"
        elif record["status"] == "finished":
            record["result"] = job.return_value()
            record["progress"] = 1.0
        return record

    def jobs(self, project: Optional[str] = None, limit: int = 50) -> list[dict[str, Any]]:
        from rq.job import Job

        q = self.queue
        ids: list[str] = []
        for registry in (q.scheduled_job_registry, q.deferred_job_registry, q.started_job_registry,
                         q.failed_job_registry, q.finished_job_registry):
            ids += registry.get_job_ids()
        ids = list(dict.fromkeys(list(q.job_ids) + ids))
        jobs = [job for job in Job.fetch_many(ids, connection=self.redis) if job is not None]
        records = [self._record(job) for job in jobs]
        records = [r for r in records if project in (None, r["project"])]
        records.sort(key=lambda r: r["enqueued_at"] or 0, reverse=True)
        return records[:limit]

    def depth(self) -> int:
        """Waiting jobs: queued, and scheduled (debounced training jobs, retries)."""
        return self.queue.count + self.queue.scheduled_job_registry.count


def start_reaper(settings: Settings) -> threading.Thread:
    """A daemon thread in an `rq worker`'s parent process that reaps abandoned jobs, and queues due
    jobs RQ's scheduler left waiting, every REAP_EVERY seconds; a Redis key makes one worker at a
    time do it."""
    queue = make_queue(settings)
    assert isinstance(queue, RedisQueue), "the reaper needs REDIS_URL"
    turn = f"ml_backend:{settings.queue_name}:reaping"

    def loop() -> None:
        while True:
            try:
                if queue.redis.set(turn, 1, nx=True, ex=REAP_EVERY):
                    queue.reap_abandoned()
                    queue.requeue_stranded()
                    queue.enqueue_overdue()
            except Exception as exc:  # Redis away for a moment: try again next round
                log.warning("reaping abandoned jobs failed: %s", exc)
            time.sleep(REAP_EVERY)

    thread = threading.Thread(target=loop, name="ml-backend-reaper", daemon=True)
    thread.start()
    return thread


def _ts(value) -> Optional[float]:
    return value.timestamp() if value is not None else None
