"""Monitoring: /status (JSON), /dashboard (HTML with server-side SVG charts), /queue (the ranking, paged).

Everything is read from what the backend already keeps: model versions and their meta under
MODEL_DIR, job records from the queue (embedded or RQ), each project's ranking (queue.json) and
its serving version's evidence clusters with their thumbnails ("What the model looks at"). No
JavaScript and nothing from the network: the charts are inline SVG drawn here, and the project
manager's cluster corrections are plain HTML forms (/dashboard/clusters/...) that answer with a
redirect back to the dashboard.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from urllib.parse import urlsplit

from flask import Blueprint, jsonify, redirect, render_template, request
from jinja2 import Undefined
from markupsafe import Markup, escape

from ml_backend import __version__
from ml_backend.clusters_api import (clusters_enabled, mark_irrelevant, parse_project, send_to_annotators,
                                     undo_irrelevant)
from ml_backend.config import Settings
from ml_backend.discovery.evidence import MAP_CELLS
from ml_backend.errors import ApiError
from ml_backend.feedback.store import AnnotationStore
from ml_backend.jobs import JobQueue, RedisQueue, make_queue
from ml_backend.project import ProjectIdError, project_key
from ml_backend.store import ProjectStore, StoreError

log = logging.getLogger(__name__)

TOP_TASKS = 10
JOBS_PER_PROJECT = 15
MAX_PAGE_SIZE = 500
JOB_FIELDS = ("id", "kind", "project", "reason", "status", "enqueued_at", "started_at", "ended_at",
              "progress", "message", "error")
CLUSTER_CARDS = 24  # a project with more clusters shows the most suspicious; GET /clusters has all
CLUSTER_FIELDS = ("id", "size", "share", "classes", "shortcut_score", "suspicious", "isolation", "thumbnails")
CURVE_FIELDS = ("holdout_accuracy", "train_accuracy", "irrelevant_attribution_mass",
                "holdout_irrelevant_attribution_mass")


# --- data -----------------------------------------------------------------------------
def task_url(settings: Settings, project: str, task_id: Any) -> Optional[str]:
    """The task in Label Studio's data manager, when LABEL_STUDIO_URL is set."""
    if not settings.label_studio_url:
        return None
    return f"{settings.label_studio_url}/projects/{project}/data?task={task_id}"


def _project_sort_key(name: str) -> tuple[int, int, str]:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def known_projects(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """Projects with a folder under MODEL_DIR/projects/, plus ``extra`` (e.g. from job records)."""
    root = Path(settings.model_dir) / "projects"
    names = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    names |= {str(p) for p in extra if p}
    return sorted(names, key=_project_sort_key)


def learning_curve(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per version: its metrics, example count and creation time."""
    curve = []
    for v in versions:
        metrics = v.get("metrics") or {}
        curve.append({"version": v["version"], "created_at": v.get("created_at"), "current": v.get("current", False),
                      **{k: metrics.get(k) for k in CURVE_FIELDS}, "examples": v.get("examples")})
    return curve


def _job_view(record: dict[str, Any]) -> dict[str, Any]:
    job = {k: record.get(k) for k in JOB_FIELDS}
    result = record.get("result")
    if isinstance(result, dict):
        job["result"] = {k: result[k] for k in ("version", "skipped", "examples", "ranked", "pushed") if k in result}
    return job


def ranking_view(settings: Settings, project: str, limit: int = TOP_TASKS) -> Optional[dict[str, Any]]:
    """The head of the project's uncertainty queue, or None before the first ranking."""
    queue = ProjectStore(settings.model_dir, project).ranking()
    if queue is None:
        return None
    tasks = queue.get("tasks") or []
    return {"model_version": queue.get("model_version"), "acquisition": queue.get("acquisition"),
            "computed_at": queue.get("computed_at"), "size": len(tasks),
            "top": [{"rank": i + 1, **t, "url": task_url(settings, project, t.get("task"))}
                    for i, t in enumerate(tasks[:limit])]}


def project_status(settings: Settings, project: str, jobs: list[dict[str, Any]],
                   annotations: Optional[AnnotationStore] = None) -> dict[str, Any]:
    """Serving version, learning curve, feedback, quarantined annotations, jobs and queue head of one project."""
    versions = ProjectStore(settings.model_dir, project).list()
    current = next((v for v in versions if v.get("current")), None)
    serving = None
    if current is not None:
        serving = {"version": current["version"], "created_at": current.get("created_at"),
                   "metrics": current.get("metrics") or {}, "examples": current.get("examples"),
                   "holdout": current.get("holdout"), "strategies": current.get("strategies"),
                   "device": current.get("device"), "train_seconds": current.get("train_seconds")}
    try:
        ranking = ranking_view(settings, project)
    except (OSError, ValueError) as exc:
        log.warning("project %s: unreadable ranking: %s", project, exc)
        ranking = None
    return {"project": project, "serving": serving, "versions": learning_curve(versions),
            "feedback": _ordered_feedback((current or {}).get("feedback") or {}), "jobs": jobs, "queue": ranking,
            "rejected": _rejected(annotations, project)}


def _rejected(annotations: Optional[AnnotationStore], project: str) -> dict[str, Any]:
    """Annotations quarantined at intake: how many, and the latest with their reasons."""
    if annotations is None:
        return {"count": 0, "recent": []}
    count, recent = annotations.rejected(project, limit=5)
    return {"count": count, "recent": recent}


def _ordered_feedback(counts: dict[str, int]) -> dict[str, int]:
    """Feedback counts in the order of feedback.parse.KINDS, unknown kinds last."""
    from ml_backend.feedback.parse import KINDS

    return {**{k: counts[k] for k in KINDS if k in counts}, **{k: v for k, v in counts.items() if k not in KINDS}}


def collect_status(settings: Settings, queue: JobQueue, annotations: Optional[AnnotationStore] = None
                   ) -> dict[str, Any]:
    """Everything /status and /dashboard show."""
    records: list[dict[str, Any]] = []
    depth: Optional[int] = None
    queue_error = None
    try:
        records = queue.jobs(None, limit=500)
        depth = queue.depth()
    except Exception as exc:  # Redis down: show the rest
        queue_error = f"{type(exc).__name__}: {exc}"
        log.warning("job queue unavailable: %s", queue_error)
    by_project: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_project.setdefault(str(record.get("project")), []).append(_job_view(record))
    projects = []
    for name in known_projects(settings, list(by_project)):
        try:
            projects.append(project_status(settings, name, by_project.get(name, [])[:JOBS_PER_PROJECT], annotations))
        except StoreError:
            continue  # a folder that is no project id
    return {"generated_at": time.time(), "version": __version__,
            "queue_backend": "redis" if isinstance(queue, RedisQueue) else "embedded",
            "queue_depth": depth, "queue_error": queue_error,
            "label_studio_url": settings.label_studio_url or None, "projects": projects}


def cluster_panel(settings: Settings, project: str, version: Optional[str],
                  annotations: Optional[AnnotationStore]) -> Optional[dict[str, Any]]:
    """What the serving version looks at: its clusters (the first ``CLUSTER_CARDS``, suspicious
    first, without their task ids) and the project's cluster corrections; None when there is
    neither. A project that turned its clusters off gets ``off`` and no cards: a file left by an
    earlier version is not shown."""
    enabled = clusters_enabled(settings, project)
    try:
        payload = ProjectStore(settings.model_dir, project).clusters(version) if version and enabled else None
    except (OSError, ValueError, StoreError) as exc:
        log.warning("project %s: unreadable clusters: %s", project, exc)
        payload = None
    corrections = []
    if annotations is not None:
        corrections = [{"cluster": c["cluster"], "version": c["version"], "created_at": c["created_at"],
                        "tasks": len(c["task_ids"])} for c in annotations.cluster_corrections(project)]
    if payload is None and not corrections and enabled:
        return None
    marked = {c["cluster"] for c in corrections}
    found = (payload or {}).get("clusters") or []
    cards = [{**{k: c.get(k) for k in CLUSTER_FIELDS}, "marked": c["id"] in marked,
              "thumbnails": [{**t, "url": task_url(settings, project, t.get("task"))} for t in c.get("thumbnails") or []],
              "map": relevance_map(c.get("mean_map") or [], f"mean relevance of {c['id']}")}
             for c in found[:CLUSTER_CARDS]]
    return {"version": version, "computed": payload is not None, "off": not enabled,
            "tasks": (payload or {}).get("tasks"), "labeled": (payload or {}).get("labeled"),
            "sources": (payload or {}).get("sources") or [], "computed_at": (payload or {}).get("computed_at"),
            "cards": cards, "more": max(0, len(found) - CLUSTER_CARDS), "corrections": corrections}


# --- SVG charts -------------------------------------------------------------------------
def _nice_max(value: float) -> float:
    """A round upper bound for a y axis starting at 0."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    for bound in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= bound:
            return bound
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 5, 10) if value <= m * magnitude)


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def line_chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[Optional[float]], str]],
               y_max: Optional[float] = None, width: int = 560, height: int = 240) -> Markup:
    """A polyline chart with axes, y gridlines, x labels and a legend, as inline SVG.

    ``series``: (name, values aligned with ``labels``, colour); None values break the line.
    """
    left, right, top, bottom = 44, 12, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None]
    top_value = y_max if y_max is not None else _nice_max(max(values, default=0.0))
    n = len(labels)

    def x_at(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1 - min(max(v / top_value, 0.0), 1.0))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>']
    for k in range(5):  # gridlines and y ticks
        v = top_value * k / 4
        y = y_at(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>')
    step = max(1, math.ceil(n / 10))  # at most ~10 x labels
    for i, label in enumerate(labels):
        if i % step == 0 or i == n - 1:
            parts.append(f'<text x="{x_at(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                         f'class="tick">{escape(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'class="axis-label">model version</text>')
    if not values:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
                     f'class="empty">no data yet</text>')
    legend_x = width - right
    for name, vs, colour in reversed(series):
        parts.append(f'<text x="{legend_x}" y="16" text-anchor="end" class="legend" fill="{colour}">'
                     f'&#9679; {escape(name)}</text>')
        legend_x -= 9 + 7 * len(name) + 12
        segment: list[str] = []
        segments = []
        for i, v in enumerate(vs):
            if v is None:
                segments.append(segment)
                segment = []
            else:
                segment.append(f"{x_at(i):.1f},{y_at(v):.1f}")
        segments.append(segment)
        for seg in segments:
            if seg:
                parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" stroke-width="2" '
                             f'stroke-linejoin="round" data-series="{escape(name)}"/>')
        for i, v in enumerate(vs):
            if v is not None:
                parts.append(f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="3" fill="{colour}">'
                             f'<title>{escape(name)} {escape(labels[i])}: {v:.3f}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _heat(value: float) -> str:
    """0..1 -> a colour from near white to deep red."""
    t = min(max(value, 0.0), 1.0)
    low, high = (254, 242, 242), (153, 27, 27)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high))


def relevance_map(values: Sequence[float], title: str, size: int = 96) -> Markup:
    """A cluster's mean relevance as inline SVG: an image's as a grid of ``MAP_CELLS`` cells a
    side, a text's (any other length: 16 bins) as bars along the text. Scaled to its own maximum."""
    n = len(values)
    top = max((float(v) for v in values), default=0.0) or 1.0
    side = MAP_CELLS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" role="img" width="{size}" height="{size}" '
             f'viewBox="0 0 {size} {size}" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if n == side * side:
        cell = size / side
        for i, v in enumerate(values):
            parts.append(f'<rect x="{(i % side) * cell:.2f}" y="{(i // side) * cell:.2f}" width="{cell + 0.05:.2f}" '
                         f'height="{cell + 0.05:.2f}" fill="{_heat(float(v) / top)}"/>')
    elif n:
        width = size / n
        parts.append(f'<rect width="{size}" height="{size}" fill="#fafafa"/>')
        for i, v in enumerate(values):
            h = max(0.0, float(v) / top) * (size - 4)
            parts.append(f'<rect class="bar" x="{i * width + 1:.2f}" y="{size - h:.2f}" width="{max(width - 2, 1):.2f}" '
                         f'height="{h:.2f}" fill="{_heat(0.35 + 0.65 * float(v) / top)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def project_charts(project: dict[str, Any]) -> dict[str, Markup]:
    """The accuracy and irrelevant-attribution charts of one project's learning curve."""
    curve = project["versions"]
    labels = [p["version"] for p in curve]
    accuracy = line_chart("Accuracy", labels, [
        ("holdout", [p["holdout_accuracy"] for p in curve], "#2563eb"),
        ("train", [p["train_accuracy"] for p in curve], "#9ca3af")], y_max=1.0)
    mass = line_chart("Attribution on irrelevant regions", labels, [
        ("train", [p["irrelevant_attribution_mass"] for p in curve], "#dc2626"),
        ("holdout", [p["holdout_irrelevant_attribution_mass"] for p in curve], "#f59e0b")])
    return {"accuracy": accuracy, "mass": mass}


# --- formatting helpers for the template ------------------------------------------------
def _time(ts: Optional[float]) -> str:
    if not ts:
        return "–"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(job: dict[str, Any]) -> str:
    start = job.get("started_at")
    if not start:
        return "–"
    seconds = (job.get("ended_at") or time.time()) - start
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _number(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --- routes -----------------------------------------------------------------------------
def _int_arg(name: str, default: int, low: int, high: int) -> int:

    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"'{name}' must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}")
    return value


def dashboard_blueprint(settings: Settings, webhooks: Any = None) -> Blueprint:
    """/status, /dashboard, /queue and the dashboard's cluster forms; auth and JSON errors come
    from the app, the forms' 4xx are HTML pages."""
    bp = Blueprint("dashboard", __name__, template_folder="templates")

    def queue() -> JobQueue:
        return getattr(webhooks, "queue", None) or make_queue(settings)

    annotations = getattr(webhooks, "store", None)

    @bp.get("/status")
    def status():
        return jsonify(collect_status(settings, queue(), annotations))

    @bp.get("/dashboard")
    def dashboard():
        data = collect_status(settings, queue(), annotations)
        charts = {p["project"]: project_charts(p) for p in data["projects"]}
        clusters = {p["project"]: cluster_panel(settings, p["project"], (p["serving"] or {}).get("version"),
                                                annotations) for p in data["projects"]}
        return render_template("dashboard.html", status=data, charts=charts, clusters=clusters, fmt_time=_time,
                               duration=_duration, number=_number)

    @bp.post("/dashboard/clusters/<cluster_id>/<action>")
    def cluster_form(cluster_id: str, action: str):
        try:
            same_origin()
            if webhooks is None:
                raise ApiError(503, "cluster corrections need the annotation store and the job queue")
            project = parse_project(request.form.get("project"))
            if action == "irrelevant":
                mark_irrelevant(settings, webhooks, project, cluster_id)
            elif action == "undo":
                undo_irrelevant(webhooks, project, cluster_id)
            elif action == "review":
                send_to_annotators(settings, webhooks, project, cluster_id)
            else:
                raise ApiError(404, f"no cluster action {action[:40]!r}: irrelevant, undo or review")
        except ApiError as exc:
            return render_template("dashboard_error.html", status=exc.status, message=exc.message), exc.status
        # relative, so the dashboard works behind a proxy's path prefix: /dashboard/clusters/<id>/<action>
        return redirect(f"../../../dashboard#clusters-{project}", 303)

    def same_origin() -> None:
        """Refuse a form posted from another site's page (the browser still sends basic auth)."""
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        hosts = {request.host, *request.headers.get("X-Forwarded-Host", "").replace(" ", "").split(",")}
        if origin and urlsplit(origin).netloc not in hosts - {""}:
            raise ApiError(403, "this form must be sent from the dashboard's own page")

    @bp.get("/queue")
    def ranking():
        raw = request.args.get("project", "")
        if not raw.strip():
            raise ApiError(400, "send ?project=N (the Label Studio project id)")
        try:
            project = project_key(raw.strip())
        except ProjectIdError as exc:
            raise ApiError(400, str(exc)) from None
        page = _int_arg("page", 1, 1, 10**9)
        page_size = _int_arg("page_size", 50, 1, MAX_PAGE_SIZE)
        try:
            ranked = ProjectStore(settings.model_dir, project).ranking()
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None
        if ranked is None:
            raise ApiError(404, f"project {project} has no ranking yet (it comes after the first trained version)")
        tasks = ranked.get("tasks") or []
        start = (page - 1) * page_size
        return jsonify(project=project, model_version=ranked.get("model_version"),
                       acquisition=ranked.get("acquisition"), computed_at=ranked.get("computed_at"),
                       total=len(tasks), page=page, page_size=page_size,
                       pages=max(1, math.ceil(len(tasks) / page_size)),
                       tasks=[{"rank": start + i + 1, **t, "url": task_url(settings, project, t.get("task"))}
                              for i, t in enumerate(tasks[start:start + page_size])])

    return bp
