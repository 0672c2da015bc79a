"""Command line: serve | worker | rollback | versions."""
from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from typing import Optional

from ml_backend.config import ConfigError, Settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(args: argparse.Namespace) -> int:
    """The HTTP server HTTP_SERVER names, on ``ml_backend.wsgi:app`` (the command the container runs)."""
    settings = Settings.from_env()
    if settings.http_server.lower() == "granian":
        return _serve_granian(settings, args)
    return _serve_gunicorn(args)


def _serve_granian(settings: Settings, args: argparse.Namespace) -> int:
    """granian: HTTP parsing and connections in Rust, the app in THREADS threads of each of WORKERS
    processes, forked from a master that never imports the app (so CUDA starts fresh in each)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian("ml_backend.wsgi:app", address=args.host, port=args.port, interface=Interfaces.WSGI,
            workers=args.workers or settings.workers, blocking_threads=settings.threads,
            log_level=LogLevels(settings.log_level.lower()), log_access=settings.access_log,
            respawn_failed_workers=True, workers_kill_timeout=30).serve()
    return 0


def _serve_gunicorn(args: argparse.Namespace) -> int:
    # --bind on gunicorn's command line overrides the config file's bind (HOST, PORT, ML_BACKEND_BIND).
    argv = ["gunicorn", "--config", "python:ml_backend.gunicorn_conf",
            "--bind", f"{args.host}:{args.port}", "ml_backend.wsgi:app"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    from gunicorn.app.wsgiapp import run

    sys.argv = argv
    return run() or 0


def worker(args: argparse.Namespace) -> int:
    """`rq worker` on the backend's queue (REDIS_URL must be set)."""
    settings = Settings.from_env()
    if not settings.redis_url:
        print("REDIS_URL is not set: without Redis, jobs run inside the serving process", file=sys.stderr)
        return 2
    from rq.cli import main as rq_main

    # SIGUSR1 prints every thread's stack to stderr: how to see what a stuck worker is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        warm_up(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from ml_backend.jobs.queue import start_reaper

    start_reaper(settings)  # forked work horses do not inherit it: it stays in this process
    argv = ["rq", "worker", "--url", settings.redis_url, "--with-scheduler", settings.queue_name]
    if args.burst:
        argv.insert(2, "--burst")
    sys.argv = argv
    return rq_main() or 0


def warm_up(settings: Settings) -> None:
    """Import the job code and build an optimizer once in the worker's parent process: rq forks a
    child per job, which then starts with all of it loaded (torch, captum, torch._dynamo: seconds)."""
    import torch

    import ml_backend.jobs.rank  # noqa: F401
    import ml_backend.jobs.train  # noqa: F401
    from ml_backend.project import check_names
    from ml_backend.serving import configure_torch

    check_names(settings.project)  # refuses a bad default; imports every registered extension once
    configure_torch(settings)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def rollback(args: argparse.Namespace) -> int:
    from ml_backend.store import ProjectStore, StoreError

    try:
        version = ProjectStore(Settings.from_env().model_dir, args.project).rollback(args.version)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"project {args.project} now serves {version}")
    return 0


def versions(args: argparse.Namespace) -> int:
    """Each project's versions by their served names ("p3-v2"), the serving one starred."""
    from ml_backend.store import ProjectStore, StoreError, all_versions

    model_dir = Settings.from_env().model_dir
    try:
        listed = ({args.project: ProjectStore(model_dir, args.project).list()} if args.project
                  else all_versions(model_dir))
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    for project, entries in listed.items():
        for v in entries:
            mark = "*" if v["current"] else " "
            acc = (v.get("metrics") or {}).get("holdout_accuracy")
            print(f"{mark} project {project} {v['version']:>8}  examples={v.get('examples')}  holdout_accuracy={acc}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="ml-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the backend (granian, or gunicorn with HTTP_SERVER=gunicorn)")
    p.add_argument("--host", default=settings.host, help="default: HOST or 0.0.0.0")
    p.add_argument("--port", type=int, default=settings.port, help="default: PORT or 9090")
    p.add_argument("--workers", type=int, default=0, help="server processes (default: WORKERS or 1)")
    p.set_defaults(func=serve)
    p = sub.add_parser("worker", help="run an RQ worker for training and ranking jobs")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=worker)
    p = sub.add_parser("rollback", help="serve an earlier model version")
    p.add_argument("project")
    p.add_argument("version", nargs="?", help="p<project>-v<N> (or vN); default: the version before the current one")
    p.set_defaults(func=rollback)
    p = sub.add_parser("versions", help="list model versions")
    p.add_argument("project", nargs="?", help="default: every project")
    p.set_defaults(func=versions)
    args = parser.parse_args(argv)
    _configure_logging(settings.log_level)
    return args.func(args)
