"""The few Label Studio 1.23.2 API calls the backend makes (plain requests, no SDK client)."""
from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import requests

from ml_backend.labelstudio.auth_token import LabelStudioError, TokenAuth, legacy_hint, scrub, send

__all__ = ["LabelStudioClient", "LabelStudioError", "project_number"]

# Data Manager filters for the task listing's ``query``. LS 1.23.2 wants the "filter:tasks:"
# prefix; "filters:tasks:" gets an HTTP 500.
_UNLABELED = {"filter": "filter:tasks:is_labeled", "operator": "equal", "type": "Boolean", "value": False}
_ANNOTATED = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}


def project_number(project: str | int) -> int:
    """Label Studio's project id: ``"2.1795343946"`` (``<id>.<created_at>``, as LS sends it) -> 2."""
    if isinstance(project, bool):
        raise ValueError(f"not a project id: {project!r}")
    if isinstance(project, int):
        return project
    head = str(project).strip().split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"not a project id: {project!r}")
    return int(head)


class LabelStudioClient:
    """Label Studio API client authenticated with a legacy token or a personal access token."""

    def __init__(self, url: str, api_key: str, timeout: float = 10):
        self.url = (url or "").rstrip("/")
        self.timeout = timeout
        self._key = api_key or ""
        self._auth = TokenAuth(self.url, self._key, timeout)
        self._local = threading.local()  # one requests.Session per thread

    @classmethod
    def from_settings(cls, settings: Any) -> "LabelStudioClient":
        return cls(settings.label_studio_url, settings.label_studio_api_key, settings.fetch_timeout)

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                missing_ok: bool = False) -> Any:
        """One API call; the decoded JSON body (None for an empty body, or a 404 when ``missing_ok``)."""
        if not self.url:
            raise LabelStudioError("LABEL_STUDIO_URL is not set: the backend cannot call Label Studio's API")
        if not self._key:
            raise LabelStudioError("LABEL_STUDIO_API_KEY is not set: the backend cannot call Label Studio's API")
        where = f"{method} {path}"
        try:
            r = send(self.session, method, self.url + path, self._auth, params=params, json=json,
                     timeout=self.timeout, allow_redirects=False)
        except LabelStudioError:
            raise
        except requests.Timeout:
            raise LabelStudioError(f"{where}: no answer from Label Studio within {self.timeout} s") from None
        except requests.RequestException as exc:
            raise LabelStudioError(scrub(f"{where}: cannot reach Label Studio at {self.url}: "
                                         f"{type(exc).__name__}", self._key)) from None
        if r.status_code == 404 and missing_ok:
            return None
        if r.status_code >= 300:
            detail = _detail(r)
            raise LabelStudioError(scrub(f"{where}: HTTP {r.status_code}{': ' + detail if detail else ''}"
                                         f"{legacy_hint(self._auth, r.status_code)}", self._key), r.status_code)
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LabelStudioError(f"{where}: Label Studio answered with non-JSON content", r.status_code) from None

    # -- projects -----------------------------------------------------------

    def get_project(self, pid: int | str) -> dict:
        return self.request("GET", f"/api/projects/{project_number(pid)}/")

    def update_project(self, pid: int | str, **fields: Any) -> dict:
        return self.request("PATCH", f"/api/projects/{project_number(pid)}/", json=fields)

    # -- tasks --------------------------------------------------------------

    def _pages(self, pid: int | str, page_size: int, fields: str, filters: list[dict]) -> Iterator[dict]:
        # LS 1.23.2: GET /api/tasks/ (the trailing slash matters: /api/tasks answers []) gives
        # {"total", "total_annotations", "total_predictions", "tasks": [...]} and a 404
        # "Invalid page." past the last page. It ignores only_annotated, so filter with a
        # Data Manager query. Tasks created while paging can shift pages; a resync is repeatable.
        query = json.dumps({"filters": {"conjunction": "and", "items": filters}}) if filters else None
        page = 1
        while True:
            params = {"project": project_number(pid), "page": page, "page_size": page_size, "fields": fields}
            if query:
                params["query"] = query
            body = self.request("GET", "/api/tasks/", params=params, missing_ok=True)
            if body is None:
                return
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1

    def iter_tasks(self, pid: int | str, page_size: int = 100, only_unlabeled: bool = False,
                   with_predictions: bool = False) -> Iterator[dict]:
        """Every task of the project (with ``data``), page by page; optionally only unlabeled ones
        (``is_labeled`` false: fewer finished annotations than the task's overlap), and with their
        ``predictions``."""
        filters = [_UNLABELED] if only_unlabeled else []
        for task in self._pages(pid, page_size, "all" if with_predictions else "task_only", filters):
            if not (only_unlabeled and task.get("is_labeled")):
                yield task

    def iter_annotated_tasks(self, pid: int | str, page_size: int = 100) -> Iterator[dict]:
        """Every task with at least one (not skipped) annotation, with its full ``annotations`` list."""
        for task in self._pages(pid, page_size, "all", [_ANNOTATED]):
            if task.get("annotations"):
                yield task

    def get_task(self, tid: int) -> dict:
        """One task. NB: Label Studio calls the backend's /predict from this when the task has no
        predictions and the project shows collaborators' predictions."""
        return self.request("GET", f"/api/tasks/{int(tid)}/")

    def create_prediction(self, task_id: int, result: list, score: float | None = None,
                          model_version: str | None = None) -> dict:
        body: dict[str, Any] = {"task": int(task_id), "result": result}
        if score is not None:
            body["score"] = float(score)
        if model_version is not None:
            body["model_version"] = str(model_version)
        return self.request("POST", "/api/predictions/", json=body)

    def update_prediction(self, prediction_id: int, result: list, score: float | None = None) -> dict | None:
        """Replace a prediction's result and score; None when Label Studio no longer has it."""
        body: dict[str, Any] = {"result": result}
        if score is not None:
            body["score"] = float(score)
        return self.request("PATCH", f"/api/predictions/{int(prediction_id)}/", json=body, missing_ok=True)

    def import_predictions(self, pid: int | str, predictions: list[dict]) -> int:
        """Create many predictions in one request (``{"task", "result", "score", "model_version"}`` each);
        returns how many Label Studio created."""
        body = self.request("POST", f"/api/projects/{project_number(pid)}/import/predictions", json=predictions)
        return int((body or {}).get("created", 0))

    def delete_prediction(self, prediction_id: int) -> None:
        self.request("DELETE", f"/api/predictions/{int(prediction_id)}/", missing_ok=True)

    # -- webhooks and ML backends -------------------------------------------

    def list_webhooks(self, pid: int | str) -> list[dict]:
        return self.request("GET", "/api/webhooks/", params={"project": project_number(pid)}) or []

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict:
        return self.request("PATCH", f"/api/webhooks/{int(webhook_id)}/", json=fields)

    def list_ml_backends(self, pid: int | str) -> list[dict]:
        return self.request("GET", "/api/ml/", params={"project": project_number(pid)}) or []


def _detail(r: requests.Response) -> str:
    """Label Studio's own explanation of an error, shortened."""
    try:
        body = r.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        body = [body[k] for k in ("detail", "validation_errors", "errors") if body.get(k)] or [body]
    elif not isinstance(body, list):
        body = [body]
    text = " ".join(p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in body)
    return text if len(text) <= 300 else text[:300] + "..."
