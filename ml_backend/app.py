"""Flask app factory: routes only. Label Studio's wire contract lives here and in labelstudio/."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from ml_backend import __version__, metrics
from ml_backend.auth import basic_auth_ok, webhook_ok
from ml_backend.config import ConfigError, Settings
from ml_backend.errors import ApiError
from ml_backend.labelstudio.interactive import ContextError, context_marks
from ml_backend.labelstudio.schema import SchemaError
from ml_backend.project import ProjectIdError, check_names, project_key
from ml_backend.serving import Predictor
from ml_backend.store import ProjectStore, StoreError, all_versions, project_ids, version_number
from ml_backend.webhook_lane import WebhookLane, parse_json_object

log = logging.getLogger(__name__)

WEBHOOK_ACTIONS = frozenset(("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                             "ANNOTATION_DELETED", "START_TRAINING", "TASKS_CREATED", "TASKS_DELETED",
                             "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED", "LABEL_LINK_CREATED",
                             "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "REVIEW_CREATED", "REVIEW_UPDATED",
                             "REVIEWS_DELETED"))


def _json_body() -> dict[str, Any]:
    return parse_json_object(request.get_data(cache=True))


def observe_versions(settings: Settings) -> None:
    """The serving version number of every project (one small file read each)."""
    for project in project_ids(settings.model_dir):
        current = version_number(project, ProjectStore(settings.model_dir, project).current())
        if current is not None:
            metrics.MODEL_VERSION.labels(project).set(current)


def create_app(settings: Optional[Settings] = None, predictor: Optional[Predictor] = None,
               webhooks: Any = None) -> Flask:
    """The backend's WSGI app. ``webhooks`` handles /webhook (feedback.intake.WebhookIntake)."""
    settings = settings or Settings.from_env()
    check_names(settings.project)  # a default naming no registered extension refuses to start
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    predictor = predictor or Predictor(settings)
    if webhooks is None:
        from ml_backend.feedback.intake import WebhookIntake

        webhooks = WebhookIntake.from_settings(settings)
        if not settings.redis_url:  # RQ keeps its queue in Redis; the in-process one is re-planned
            webhooks.replan()
    app.extensions["ml_backend"] = {"settings": settings, "predictor": predictor, "webhooks": webhooks}

    @app.before_request
    def _auth() -> Optional[Response]:
        g.started = time.perf_counter()
        if request.path in ("/health", "/webhook"):
            return None  # /webhook authenticates itself (shared secret or basic auth)
        if not basic_auth_ok(settings, request.headers.get("Authorization")):
            response = jsonify(error="authentication required", status=401)
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
            return response
        return None

    @app.after_request
    def _observe(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUEST_LATENCY.labels(rule, str(response.status_code)).observe(
            time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=exc.message, status=exc.status), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = {413: f"request body larger than {settings.max_body_bytes} bytes"}.get(exc.code, exc.description)
        return jsonify(error=message, status=exc.code), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s", request.path)
        return jsonify(error="internal error; see the backend's log", status=500), 500

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class="XILModel", version=__version__)

    @app.post("/setup")
    def setup():
        body = _json_body()
        try:
            version = predictor.setup(body.get("project"), body.get("schema") or "", body.get("extra_params"))
        except ProjectIdError as exc:
            raise ApiError(400, str(exc)) from None
        except (SchemaError, ConfigError, StoreError) as exc:
            raise ApiError(422, str(exc)) from None
        webhooks.on_setup(project_key(body.get("project")))
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if tasks is None:
            raise ApiError(400, "no 'tasks' in the body")
        if not isinstance(tasks, list):
            raise ApiError(400, "'tasks' must be a list")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        try:
            ctx = predictor.context(body.get("project"), body.get("label_config"),
                                    params.get("extra_params"))
        except ProjectIdError as exc:
            raise ApiError(400, str(exc)) from None
        except (SchemaError, ConfigError, StoreError) as exc:
            raise ApiError(422, str(exc)) from None
        try:  # interactive pre-annotation: the regions the annotator drew (contract row D)
            marks = context_marks(params.get("context"), ctx.schema)
        except ContextError as exc:
            raise ApiError(400, str(exc)) from None
        if marks and len(tasks) != 1:
            raise ApiError(400, f"params.context marks regions of one task; got {len(tasks)} tasks")
        try:
            results = predictor.predict(ctx, tasks, marks)
        except ContextError as exc:  # Label Studio shows the annotator only "422 Client Error": log why
            log.info("project %s: interactive context refused: %s", ctx.key, exc)
            raise ApiError(422, str(exc)) from None
        except (StoreError, ConfigError) as exc:
            raise ApiError(422, str(exc)) from None
        served = sum(1 for r in results if isinstance(r, dict) and r["result"])
        unreadable = sum(1 for r in results if not isinstance(r, dict))  # no prediction: data unreadable
        metrics.PREDICTIONS.labels(ctx.key, "served").inc(served)
        metrics.PREDICTIONS.labels(ctx.key, "empty").inc(len(results) - served - unreadable)
        metrics.PREDICTIONS.labels(ctx.key, "unreadable").inc(unreadable)
        versions = sorted({str(r.get("model_version")) for r in results if isinstance(r, dict)})
        log.info("project %s: /predict of %d task(s): %d predicted, %d unreadable, version %s, %.0f ms", ctx.key,
                 len(tasks), served, unreadable, ",".join(versions) or "-", (time.perf_counter() - g.started) * 1000)
        return jsonify(results=results)

    def webhook_answer(headers: Any, read_body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The answer to a webhook (ApiError for a 4xx); the Flask route and the WebhookLane share it.
        The body is read only once the request is authenticated."""
        if not webhook_ok(settings, headers):
            raise ApiError(401, f"webhook not authenticated: send the {settings.webhook_header} header "
                                "(WEBHOOK_SECRET) or basic auth")
        body = read_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise ApiError(400, "no 'action' in the webhook body")
        try:
            outcome = webhooks.handle(action, body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        # a label per action Label Studio sends; anything else is counted as "other"
        metrics.WEBHOOK_EVENTS.labels(action if action in WEBHOOK_ACTIONS else "other").inc()
        return {"status": "ok", **outcome}

    @app.post("/webhook")
    def webhook():  # keeps /webhook in the URL map (a GET is a 405); the lane below answers every POST
        return jsonify(webhook_answer(request.headers, _json_body)), 200

    # POST /webhook skips Flask's request machinery (a third of a webhook's CPU): see webhook_lane
    app.wsgi_app = WebhookLane(app.wsgi_app, webhook_answer, settings.max_body_bytes)

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        if project:
            try:
                key = project_key(project)
                listed = {key: ProjectStore(settings.model_dir, key).list()}
            except (ProjectIdError, StoreError) as exc:
                raise ApiError(400, str(exc)) from None
        else:
            listed = all_versions(settings.model_dir)
        # Label Studio sends no project: each name says whose it is ("p3-v2"), oldest first per project
        names = [v["version"] for vs in listed.values() for v in vs]
        return jsonify(versions=names, projects=listed)

    @app.post("/versions/rollback")
    def rollback():
        body = _json_body()
        if "project" not in body:
            raise ApiError(400, "send {'project': N, 'version': 'pN-vK'} (version optional: the previous one)")
        try:
            key = project_key(body["project"])
        except ProjectIdError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            version = ProjectStore(settings.model_dir, key).rollback(body.get("version"))
        except StoreError as exc:
            raise ApiError(404, str(exc)) from None
        return jsonify(project=key, model_version=version)

    @app.get("/metrics")
    def prometheus_metrics():
        webhooks.observe_metrics()
        observe_versions(settings)
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    from ml_backend.clusters_api import clusters_blueprint
    from ml_backend.dashboard import dashboard_blueprint

    app.register_blueprint(clusters_blueprint(settings, webhooks))

    app.register_blueprint(dashboard_blueprint(settings, webhooks))
    return app
