"""Webhook intake: persist the annotation, enqueue training, answer. Nothing slow happens here:
Label Studio gives a webhook 1 s and drops it after that."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from ml_backend import metrics
from ml_backend.config import ConfigError, Settings
from ml_backend.feedback.parse import CancelledAnnotation, FeedbackError, parse_annotation
from ml_backend.feedback.store import AnnotationStore
from ml_backend.labelstudio.schema import SchemaError, TaskSchema, parse_label_config
from ml_backend.jobs import JobQueue, make_queue
from ml_backend.project import project_key
from ml_backend.store import ProjectStore, StoreError, open_annotation_store

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
MAX_ID = 2 ** 63 - 1  # the annotation store's 64-bit integer


def record_id(value: Any, what: str) -> int:
    """A Label Studio record id: a non-negative integer the annotation store can hold; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError(f"{what} id must be a non-negative integer, got {type(value).__name__}")
    return value


def annotation_pairs(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(annotation, task) pairs from a single or bulk annotation webhook."""
    annotations = body.get("annotation", body.get("annotations"))
    tasks = body.get("task", body.get("tasks"))
    annotations = annotations if isinstance(annotations, list) else [annotations]
    tasks = tasks if isinstance(tasks, list) else [tasks]
    by_id = {None if t.get("id") is None else record_id(t["id"], "task"): t for t in tasks if isinstance(t, dict)}
    pairs = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise ValueError("annotation webhook without an annotation object (with an id)")
        record_id(annotation["id"], "annotation")
        task_id = annotation.get("task")
        task_id = task_id.get("id") if isinstance(task_id, dict) else task_id
        if task_id is not None:
            record_id(task_id, "the annotation's task")
        task = by_id.get(task_id)
        if task is None and task_id is None and len(by_id) == 1:
            task = next(iter(by_id.values()))
        if task is None:
            raise ValueError(f"annotation {annotation['id']} arrived without its task")
        pairs.append((annotation, task))
    return pairs


def _schema(state: dict[str, Any]) -> Optional[TaskSchema]:
    """The project's parsed label config, when it has a usable one."""
    config = state.get("label_config")
    if not isinstance(config, str) or not config:
        return None
    try:
        return parse_label_config(config)
    except SchemaError:
        return None


def malformed(annotation: dict[str, Any], task: dict[str, Any], schema: Optional[TaskSchema]) -> Optional[str]:
    """Why an annotation cannot be trained on (None when it can, or when there is no label config to
    check it against): it is read as training will read it."""
    if schema is None:
        return None
    try:
        # tokens=[]: spans are checked against the text's length but not mapped onto tokens, which
        # is training's work, not the request path's
        parse_annotation(annotation, task, schema, tokens=[])
    except CancelledAnnotation:
        return None  # skipped by training, and a real annotation: stored
    except FeedbackError as exc:
        return str(exc)
    except Exception as exc:  # a shape no parser branch expects: a string where an object belongs...
        return f"malformed annotation ({type(exc).__name__})"
    return None


def project_of(body: dict[str, Any]) -> str:
    """The Label Studio project a webhook is about; ProjectIdError (a ValueError) if malformed."""
    project = body.get("project")
    if isinstance(project, dict) and project.get("id") is not None:
        return project_key(project["id"])
    if isinstance(project, (int, str)) and not isinstance(project, bool) and str(project):
        return project_key(project)
    annotation = body.get("annotation")
    if isinstance(annotation, dict) and annotation.get("project") is not None:
        return project_key(annotation["project"])
    raise ValueError("webhook body names no project")


class WebhookIntake:
    def __init__(self, settings: Settings, store: AnnotationStore, queue: JobQueue) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self._header_set: set[str] = set()
        self._projects: dict[str, ProjectStore] = {}  # one per project: building one parses paths

    @classmethod
    def from_settings(cls, settings: Settings) -> "WebhookIntake":
        return cls(settings, open_annotation_store(settings), make_queue(settings))

    def handle(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action in ANNOTATION_EVENTS:
            project = project_of(body)
            pairs = annotation_pairs(body)
            state = self._remember_config(project, body)
            schema = _schema(state)
            changed = rejected = 0
            for annotation, task in pairs:
                reason = malformed(annotation, task, schema)
                if reason is not None:  # quarantined: listed on /status, never trained on
                    task_id = task.get("id") if isinstance(task.get("id"), int) else None
                    self.store.reject(project, annotation["id"], task_id, reason)
                    rejected += 1
                    log.warning("project %s: annotation %s quarantined: %s", project, annotation["id"], reason)
                    continue
                changed += bool(self.store.upsert(project, annotation, task))
            log.info("project %s: %s for annotations %s (%d changed, %d quarantined)", project, action,
                     [a["id"] for a, _ in pairs], changed, rejected)
            return {"action": action, "changed": changed, "rejected": rejected,
                    **self._maybe_train(project, changed, state)}
        if action in ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED"):
            project = project_of(body)
            items = body.get("annotations", body.get("annotation"))
            items = items if isinstance(items, list) else [items]
            ids = [record_id(item["id"], "annotation") for item in items if isinstance(item, dict) and "id" in item]
            removed = self.store.delete(project, ids)
            log.info("project %s: %s %s (%d removed)", project, action, ids, removed)
            return {"action": action, "changed": removed, **self._maybe_train(project, removed)}
        if action == "START_TRAINING":
            project = project_of(body)
            self._remember_config(project, body)
            job = self.queue.enqueue_train(project, reason="resync")
            log.info("project %s: START_TRAINING -> job %s", project, job["id"])
            return {"action": action, "job": job["id"]}
        if action == "TASKS_CREATED":
            project = project_of(body)
            if self._project_store(project).current():
                job = self.queue.enqueue_rank(project)
                return {"action": action, "rank_job": job["id"]}
            return {"action": action}
        if action == "PROJECT_UPDATED":
            self._remember_config(project_of(body), body)
            return {"action": action}
        return {"action": action, "ignored": True}

    def _maybe_train(self, project: str, changed: int, state: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        if not changed:
            return {}
        if state is None:
            state = self._project_store(project).config()
        try:
            minimum = self.settings.project.with_overrides(state.get("extra_params") or {}).min_annotations
        except ConfigError as exc:  # /setup refuses such params: a project.json from an older version
            log.warning("project %s: stored extra params unusable (%s); using min_annotations %d", project, exc,
                        self.settings.project.min_annotations)
            minimum = self.settings.project.min_annotations
        if not self.store.has_at_least(project, minimum):
            return {}
        job = self.queue.enqueue_train(project)
        return {"train_job": job["id"], "folded": bool(job.get("folded"))}

    def _project_store(self, project: str) -> ProjectStore:
        store = self._projects.get(project)
        if store is None:
            if len(self._projects) >= 10_000:  # project ids come from the network: bounded
                self._projects.clear()
            store = self._projects[project] = ProjectStore(self.settings.model_dir, project)
        return store

    def _remember_config(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Keep the project's label config, so jobs can run for a project /setup never saw;
        returns the project's stored state."""
        store = self._project_store(project)
        project_obj = body.get("project")
        config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
        if isinstance(config, str) and config:
            return store.update_config(label_config=config)
        return store.config()

    def replan(self) -> list[str]:
        """Enqueue the training that was due when the process last stopped: every project whose
        annotations changed after its serving version was trained (a crash loses no training)."""
        due = []
        for project, revision in self.store.revisions().items():
            try:
                store = self._project_store(project)
                current = store.current()
                trained = store.meta(current).get("store_revision", -1) if current else -1
            except StoreError:
                continue
            config = store.config()
            if config.get("label_config") and revision > trained and self._maybe_train(project, 1, config):
                due.append(project)
        if due:
            log.info("re-planned the training due for projects %s", due)
        return due

    def on_setup(self, project: str) -> None:
        """Put the webhook secret on the project's ML-backend webhook in Label Studio (in the
        background: /setup has 3 s, and Label Studio creates that webhook after /setup returns)."""
        if not (self.settings.webhook_secret and self.settings.label_studio_url and self.settings.label_studio_api_key):
            return
        if project in self._header_set or not project.isdigit():
            return
        self._header_set.add(project)
        threading.Thread(target=self._set_webhook_header, args=(project,), daemon=True).start()

    def _set_webhook_header(self, project: str) -> None:
        from ml_backend.labelstudio.client import LabelStudioClient

        client = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key,
                                   timeout=self.settings.fetch_timeout)
        header = {self.settings.webhook_header: self.settings.webhook_secret}
        for delay in (0, 2, 5, 10, 30):
            time.sleep(delay)
            try:
                backends = {b["url"].rstrip("/") + "/webhook" for b in client.list_ml_backends(int(project))}
                patched = 0
                for hook in client.list_webhooks(int(project)):
                    if hook.get("url") in backends:
                        if (hook.get("headers") or {}).get(self.settings.webhook_header) != self.settings.webhook_secret:
                            client.update_webhook(hook["id"], headers={**(hook.get("headers") or {}), **header})
                        patched += 1
                if patched:
                    log.info("project %s: webhook secret header set on %d webhook(s)", project, patched)
                    return
            except Exception as exc:  # Label Studio unreachable: README shows how to set it by hand
                log.warning("project %s: cannot set the webhook header yet: %s", project, exc)
        self._header_set.discard(project)

    def observe_metrics(self) -> None:
        try:
            metrics.QUEUE_DEPTH.set(self.queue.depth())
        except Exception as exc:
            log.warning("queue depth unavailable: %s", exc)
