"""gunicorn settings (the container and `ml-backend serve` use this file). Environment overrides:
WORKERS, THREADS, PORT, GUNICORN_TIMEOUT."""
import os

bind = os.environ.get("ML_BACKEND_BIND", f"0.0.0.0:{os.environ.get('PORT', '9090')}")
# One worker by default: models live in process memory, and the embedded job thread
# (no REDIS_URL) must be unique. Scale with threads, or with Redis and more workers.
workers = int(os.environ.get("WORKERS", "1"))
threads = int(os.environ.get("THREADS", "8"))
worker_class = "gthread"
# Label Studio waits up to 100 s for /predict on large batches.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
# No --preload: CUDA cannot be re-initialised in a forked worker.
preload_app = False
# gunicorn 27's control socket defaults to one path per user: two servers on a host would share it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
