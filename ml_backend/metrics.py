"""Prometheus metrics of the serving process (and of in-process jobs)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUEST_LATENCY = Histogram(
    "ml_backend_request_seconds", "Request latency by route", ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100),
)
PREDICTIONS = Counter("ml_backend_predictions_total", "Predictions served", ["project", "outcome"])
WEBHOOK_EVENTS = Counter("ml_backend_webhook_events_total", "Webhook events received", ["action"])
JOB_DURATION = Histogram("ml_backend_job_seconds", "Job durations", ["job"],
                         buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
JOB_FAILURES = Counter("ml_backend_job_failures_total", "Failed jobs", ["job"])
QUEUE_DEPTH = Gauge("ml_backend_queue_depth", "Jobs waiting in the queue")
MODEL_VERSION = Gauge("ml_backend_model_version", "Serving model version number per project", ["project"])
