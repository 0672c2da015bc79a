"""gunicorn settings (the container and `ml-backend serve` use this file), from ml_backend.config:
WORKERS, THREADS, PORT, HOST, GUNICORN_TIMEOUT, ML_BACKEND_BIND, LOG_LEVEL, ACCESS_LOG."""
from ml_backend.config import Settings

_settings = Settings.from_env()

bind = _settings.gunicorn_bind
# One worker by default: models live in process memory, and the embedded job thread
# (no REDIS_URL) must be unique. Scale with threads, or with Redis and more workers.
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# Label Studio waits up to 100 s for /predict on large batches.
timeout = _settings.gunicorn_timeout
graceful_timeout = 30
# No --preload: CUDA cannot be re-initialised in a forked worker.
preload_app = False
# gunicorn 27's control socket defaults to one path per user: two servers on a host would share it.
control_socket_disable = True
accesslog = "-" if _settings.access_log else None
errorlog = "-"
loglevel = _settings.log_level.lower()
