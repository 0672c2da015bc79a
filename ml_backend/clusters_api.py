"""/clusters: what the model looks at, per project (``discovery``), and the project manager's
one-click corrections: mark a cluster's evidence irrelevant (durable, listed, undoable; the next
training generalises it as it would an annotator's marks), or send its tasks to annotators."""
from __future__ import annotations

import logging
import re
import time
from typing import Any

from flask import Blueprint, jsonify, request

from ml_backend.config import ConfigError, Settings
from ml_backend.errors import ApiError
from ml_backend.project import ProjectIdError, project_key
from ml_backend.store import ProjectStore, StoreError, version_number
from ml_backend.webhook_lane import parse_json_object

log = logging.getLogger(__name__)

CLUSTER_ID = re.compile(r"v(\d{1,9})-c(\d{1,6})")


def parse_project(value: Any) -> str:
    """A project id from a request; ApiError (400) when missing or malformed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiError(400, "send the project: ?project=N (GET) or {\"project\": N} (POST, DELETE)")
    try:
        return project_key(value.strip() if isinstance(value, str) else value)
    except ProjectIdError as exc:
        raise ApiError(400, str(exc)) from None


def clusters_enabled(settings: Settings, project: str) -> bool:
    """Whether the project computes evidence clusters: XIL_EVIDENCE_CLUSTERS, or its /setup extra
    param ``evidence_clusters``. Stored params that no longer parse fall back to the environment's."""
    try:
        params = ProjectStore(settings.model_dir, project).config().get("extra_params") or {}
        return settings.project.with_overrides(params).evidence_clusters
    except (ConfigError, StoreError):  # /setup refuses such params: a project.json from an older version
        return settings.project.evidence_clusters


def require_clusters(settings: Settings, project: str) -> None:
    """ApiError (409) when the project's evidence clusters are turned off."""
    if not clusters_enabled(settings, project):
        raise ApiError(409, f"evidence clusters are turned off for project {project} (XIL_EVIDENCE_CLUSTERS=false "
                            "or the extra param evidence_clusters: false): set it to true, and the next training "
                            "computes them")


def current_clusters(settings: Settings, project: str) -> tuple[ProjectStore, dict[str, Any]]:
    """The serving version's clusters; 409 when the project turned them off, 404 when it has no
    version or none yet."""
    require_clusters(settings, project)
    return _stored_clusters(settings, project)


def _stored_clusters(settings: Settings, project: str) -> tuple[ProjectStore, dict[str, Any]]:
    """``current_clusters`` without the setting's check."""
    try:
        store = ProjectStore(settings.model_dir, project)
        version = store.current()
    except StoreError as exc:
        raise ApiError(400, str(exc)) from None
    if not version:
        raise ApiError(404, f"project {project} has no model version yet: clusters come with the first training")
    payload = store.clusters(version)
    if payload is None:
        raise ApiError(404, f"no evidence clusters for {version} yet: they are computed after each training")
    return store, payload


def find_cluster(settings: Settings, project: str, cluster_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the version's clusters, the cluster) for an id of the serving version's clusters."""
    require_clusters(settings, project)  # before the id: clusters off answers the same for any id
    match = CLUSTER_ID.fullmatch(cluster_id)
    if not match:
        raise ApiError(404, f"no cluster {cluster_id[:40]!r}: cluster ids look like 'v3-c1' (GET /clusters)")
    store, payload = _stored_clusters(settings, project)
    serving = version_number(project, payload["version"])
    if int(match.group(1)) != serving:
        raise ApiError(409, f"cluster {cluster_id} belongs to version {match.group(1)}; project {project} serves "
                            f"{payload['version']} now: GET /clusters?project={project} for its clusters")
    cluster = next((c for c in payload["clusters"] if c["id"] == cluster_id), None)
    if cluster is None:
        raise ApiError(404, f"{payload['version']} has no cluster {cluster_id}")
    return payload, cluster


def corrections_view(annotations: Any, project: str) -> list[dict[str, Any]]:
    """The project's cluster corrections, oldest first, with a task count for their task ids."""
    return [{k: v for k, v in c.items() if k != "task_ids"} | {"tasks": len(c["task_ids"])}
            for c in annotations.cluster_corrections(project)]


def mark_irrelevant(settings: Settings, webhooks: Any, project: str, cluster_id: str) -> dict[str, Any]:
    """Record the serving version's cluster ``cluster_id`` as irrelevant and queue a training
    (once: ``recorded`` is False when it was recorded already). ApiError (4xx) says why not."""
    payload, cluster = find_cluster(settings, project, cluster_id)
    added = webhooks.store.add_cluster_correction(project, cluster_id, payload["version"], cluster["task_ids"])
    answer: dict[str, Any] = {"project": project, "cluster": cluster_id, "version": payload["version"],
                              "recorded": added}
    if added:
        log.info("project %s: cluster %s of %s marked irrelevant (%d tasks, %d labelled)", project, cluster_id,
                 payload["version"], cluster["size"], len(cluster["labeled_task_ids"]))
        answer["train_job"] = webhooks.queue.enqueue_train(project, reason="cluster_correction")["id"]
    return answer


def undo_irrelevant(webhooks: Any, project: str, cluster_id: str) -> dict[str, Any]:
    """Remove a cluster correction (of any version) and queue a training; 404 when there is none.
    Allowed with the clusters turned off: a recorded correction still applies at every training."""
    if not webhooks.store.remove_cluster_correction(project, cluster_id):
        raise ApiError(404, f"project {project} has no correction of cluster {cluster_id[:40]!r}")
    log.info("project %s: correction of cluster %s undone", project, cluster_id)
    job = webhooks.queue.enqueue_train(project, reason="cluster_correction")
    return {"project": project, "cluster": cluster_id, "removed": True, "train_job": job["id"]}


def send_to_annotators(settings: Settings, webhooks: Any, project: str, cluster_id: str) -> dict[str, Any]:
    """Put the cluster's unlabelled tasks first in the next ranking and queue one; 409 without
    Label Studio."""
    payload, cluster = find_cluster(settings, project, cluster_id)
    if not settings.reaches_label_studio(project):
        raise ApiError(409, "sending tasks to annotators needs Label Studio: set LABEL_STUDIO_URL and "
                            "LABEL_STUDIO_API_KEY")
    labeled = set(cluster["labeled_task_ids"])
    unlabeled = [t for t in cluster["task_ids"] if t not in labeled]
    ProjectStore(settings.model_dir, project).save_review(
        {"cluster": cluster_id, "version": payload["version"], "task_ids": unlabeled, "requested_at": time.time()})
    job = webhooks.queue.enqueue_rank(project)
    log.info("project %s: cluster %s sent to annotators (%d unlabelled tasks)", project, cluster_id, len(unlabeled))
    return {"project": project, "cluster": cluster_id, "tasks": len(unlabeled), "rank_job": job["id"]}


def _flag(name: str) -> bool:
    return request.args.get(name, "1") not in ("0", "false")


def clusters_blueprint(settings: Settings, webhooks: Any) -> Blueprint:
    """Routes over the project store (clusters), the annotation store (corrections) and the queue."""
    bp = Blueprint("clusters", __name__)

    @bp.get("/clusters")
    def list_clusters():
        project = parse_project(request.args.get("project"))
        _, payload = current_clusters(settings, project)
        marked = {c["cluster"] for c in webhooks.store.cluster_corrections(project)}
        left_out = set() if _flag("tasks") else {"task_ids", "labeled_task_ids"}
        if not _flag("thumbnails"):
            left_out.add("thumbnails")
        clusters = [{k: v for k, v in c.items() if k not in left_out} | {"marked_irrelevant": c["id"] in marked}
                    for c in payload["clusters"]]
        return jsonify(project=project, version=payload["version"], computed_at=payload.get("computed_at"),
                       tasks=payload.get("tasks"), labeled=payload.get("labeled"), sources=payload.get("sources"),
                       corrections=corrections_view(webhooks.store, project), clusters=clusters)

    def body_project() -> str:
        body = parse_json_object(request.get_data(cache=True)) if request.get_data(cache=True) else {}
        return parse_project(body.get("project", request.args.get("project")))

    @bp.post("/clusters/<cluster_id>/irrelevant")
    def mark(cluster_id: str):
        project = body_project()
        answer = mark_irrelevant(settings, webhooks, project, cluster_id)
        answer["corrections"] = corrections_view(webhooks.store, project)
        return jsonify(answer), 201 if answer["recorded"] else 200

    @bp.delete("/clusters/<cluster_id>/irrelevant")
    def undo(cluster_id: str):
        project = body_project()
        answer = undo_irrelevant(webhooks, project, cluster_id)
        return jsonify(answer | {"corrections": corrections_view(webhooks.store, project)})

    @bp.post("/clusters/<cluster_id>/review")
    def review(cluster_id: str):
        return jsonify(send_to_annotators(settings, webhooks, body_project(), cluster_id)), 202

    return bp
