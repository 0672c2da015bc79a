"""Background jobs: the queues (``queue``) and the two jobs, thin adapters around the cores.

- ``train``: Label Studio resync + annotation store -> examples -> ``training.fit`` -> publish;
- ``rank``: Label Studio's unlabeled tasks -> ``ranking.score`` -> ``ranking.push``.

A training job that publishes a version is followed by a ranking job (``queue.follow_up``).
"""
from ml_backend.jobs.queue import (ENQUEUE_GRACE, JOB_TIMEOUT, RANK, TRAIN, EmbeddedQueue, JobQueue, RedisQueue,
                                   follow_up, make_queue, rank_job, report_progress, train_job)

__all__ = ["ENQUEUE_GRACE", "JOB_TIMEOUT", "RANK", "TRAIN", "EmbeddedQueue", "JobQueue", "RedisQueue", "follow_up",
           "make_queue", "rank_job", "report_progress", "train_job"]
