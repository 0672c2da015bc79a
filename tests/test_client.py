"""LabelStudioClient over real HTTP.

A stdlib server on 127.0.0.1 emulates the few Label Studio routes the client uses, with the
shapes seen on a real Label Studio 1.23.2 (paged {"total", "tasks"} answers, 404 "Invalid
page." past the end, Data Manager filters in ``query``). It checks our paging, auth and header
logic; the real Label Studio is exercised by the e2e suite.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError, project_number

KEY = "legacy-secret-key-123"


def make_jwt(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2ln"


class FakeLabelStudio:
    def __init__(self, n_tasks: int = 250):
        self.tasks = [{"id": i + 1, "data": {"image": f"/data/upload/2/{i}.png"}, "is_labeled": i % 50 == 0,
                       "total_annotations": int(i % 50 == 0)} for i in range(n_tasks)]
        self.project = {"id": 2, "title": "p", "model_version": "", "sampling": "Sequential sampling"}
        self.predictions: list[dict] = []
        self.webhooks = [{"id": 5, "project": 2, "url": "http://backend/webhook", "headers": {}}]
        self.requests: list[tuple[str, str, dict]] = []
        self.valid_tokens = {f"Token {KEY}"}
        self.pat: str | None = None
        self.refreshes = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append((self.command, self.path, dict(self.headers)))
                status, out = fake.route(self.command, self.path, self.headers.get("Authorization"), body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def route(self, method: str, path: str, auth: str | None, body) -> tuple[int, object]:
        parts = urlsplit(path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if (method, parts.path) == ("POST", "/api/token/refresh/"):
            if body != {"refresh": self.pat}:
                return 401, {"detail": "Token is invalid or expired"}
            self.refreshes += 1
            access = make_jwt({"token_type": "access", "n": self.refreshes, "exp": time.time() + 300})
            self.valid_tokens.add(f"Bearer {access}")
            return 200, {"access": access}
        if auth not in self.valid_tokens:
            return 401, {"detail": "Invalid token."}
        if parts.path == "/api/projects/2/":
            if method == "PATCH":
                if "model_version" in body and body["model_version"] not in {p["model_version"] for p in self.predictions}:
                    return 400, {"detail": "Validation error", "validation_errors": {"model_version": ["doesn't exist"]}}
                self.project.update(body)
            return 200, self.project
        if parts.path == "/api/tasks/" and q.get("project") == "2":
            tasks = self.tasks
            for item in json.loads(q.get("query", "{}")).get("filters", {}).get("items", []):
                field = item["filter"].removeprefix("filter:tasks:")
                if item["operator"] == "equal":
                    tasks = [t for t in tasks if t[field] == item["value"]]
                else:
                    tasks = [t for t in tasks if t[field] > item["value"]]
            if q.get("fields") == "all":
                tasks = [dict(t, annotations=[{"id": t["id"], "result": []}] * t["total_annotations"]) for t in tasks]
            page, size = int(q["page"]), int(q["page_size"])
            chunk = tasks[(page - 1) * size: page * size]
            if page > 1 and not chunk:
                return 404, {"status_code": 404, "detail": "Invalid page."}
            return 200, {"total_annotations": 0, "total_predictions": 0, "total": len(tasks), "tasks": chunk}
        if parts.path.startswith("/api/tasks/"):
            tid = int(parts.path.split("/")[3])
            found = [t for t in self.tasks if t["id"] == tid]
            return (200, found[0]) if found else (404, {"detail": "No Task matches the given query."})
        if (method, parts.path) == ("POST", "/api/predictions/"):
            self.predictions.append(body)
            return 201, dict(body, id=len(self.predictions))
        if parts.path == "/api/webhooks/" and q.get("project") == "2":
            return 200, self.webhooks
        if (method, parts.path) == ("PATCH", "/api/webhooks/5/"):
            self.webhooks[0].update(body)
            return 200, self.webhooks[0]
        if parts.path == "/api/ml/" and q.get("project") == "2":
            return 200, [{"id": 1, "url": "http://backend", "project": 2}]
        return 404, {"detail": "Not found."}

    def get_paths(self, prefix: str) -> list[str]:
        return [p for m, p, _ in self.requests if p.startswith(prefix)]


@pytest.fixture
def ls():
    fake = FakeLabelStudio()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def test_project_number():
    assert project_number("2.1795343946") == 2
    assert project_number("17") == 17 and project_number(3) == 3
    for bad in ("", "x.1", True):
        with pytest.raises(ValueError):
            project_number(bad)


def test_paging_over_250_tasks(ls):
    c = LabelStudioClient(ls.url, KEY)
    tasks = list(c.iter_tasks("2.1795343946", page_size=100))
    assert [t["id"] for t in tasks] == list(range(1, 251))
    pages = ls.get_paths("/api/tasks/")
    assert len(pages) == 3  # the short third page ends it
    assert all(f"page={i}&page_size=100" in p for i, p in zip((1, 2, 3), pages))
    assert all(h.get("Authorization") == f"Token {KEY}" for _, _, h in ls.requests)


def test_paging_stops_on_404_past_the_last_page(ls):
    ls.tasks = ls.tasks[:200]
    assert len(list(LabelStudioClient(ls.url, KEY).iter_tasks(2))) == 200
    assert len(ls.get_paths("/api/tasks/")) == 3  # page 3 answered 404 "Invalid page."


def test_unlabeled_and_annotated_tasks(ls):
    c = LabelStudioClient(ls.url, KEY)
    unlabeled = list(c.iter_tasks(2, only_unlabeled=True))
    assert len(unlabeled) == 245 and not any(t["is_labeled"] for t in unlabeled)
    annotated = list(c.iter_annotated_tasks(2))
    assert [t["id"] for t in annotated] == [1, 51, 101, 151, 201]
    assert all(len(t["annotations"]) == 1 for t in annotated)
    assert "fields=all" in ls.get_paths("/api/tasks/")[-1]


def test_single_calls(ls):
    c = LabelStudioClient(ls.url + "/", KEY)
    assert c.get_project("2.1795343946")["title"] == "p"
    assert c.get_task(7)["id"] == 7
    pred = c.create_prediction(7, [{"type": "choices"}], 0.25, "v3")
    assert ls.predictions == [{"task": 7, "result": [{"type": "choices"}], "score": 0.25, "model_version": "v3"}]
    assert pred["id"] == 1
    assert c.update_project(2, model_version="v3", sampling="Uncertainty sampling")["model_version"] == "v3"
    assert c.list_webhooks("2.5")[0]["id"] == 5
    assert c.update_webhook(5, headers={"X-Webhook-Secret": "s"})["headers"] == {"X-Webhook-Secret": "s"}
    assert c.list_ml_backends(2)[0]["url"] == "http://backend"
    posted = [h for m, p, h in ls.requests if m in ("POST", "PATCH")]
    assert all(h["Content-Type"] == "application/json" for h in posted)


def test_errors_carry_status_and_never_the_key(ls):
    c = LabelStudioClient(ls.url, KEY)
    with pytest.raises(LabelStudioError) as info:
        c.get_task(9999)
    assert info.value.status == 404 and "No Task matches" in str(info.value)
    with pytest.raises(LabelStudioError) as info:
        c.update_project(2, model_version="never-predicted")
    assert info.value.status == 400 and "model_version" in str(info.value)
    with pytest.raises(LabelStudioError) as info:
        LabelStudioClient(ls.url, "wrong-" + KEY).get_project(2)
    assert info.value.status == 401 and "LABEL_STUDIO_API_KEY" in str(info.value)
    assert KEY not in str(info.value)
    with pytest.raises(LabelStudioError, match="cannot reach") as info:
        LabelStudioClient("http://127.0.0.1:9", KEY).get_project(2)
    assert KEY not in str(info.value)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL"):
        LabelStudioClient("", KEY).get_project(2)
    assert KEY not in repr(c)


def test_personal_access_token(ls):
    ls.pat = make_jwt({"token_type": "refresh", "exp": time.time() + 86400})
    c = LabelStudioClient(ls.url, ls.pat)
    assert len(list(c.iter_tasks(2))) == 250
    assert ls.refreshes == 1  # one exchange serves every page while the access token lives
    bearer = {h["Authorization"] for m, p, h in ls.requests if p.startswith("/api/tasks/")}
    assert len(bearer) == 1 and bearer.pop().startswith("Bearer ") and ls.pat not in str(ls.requests)
    ls.valid_tokens.clear()  # access token revoked: one 401, one refresh, one retry
    assert c.get_project(2)["id"] == 2
    assert ls.refreshes == 2
    ls.pat = "rotated"  # our PAT no longer works: the refresh is refused
    ls.valid_tokens.clear()
    with pytest.raises(LabelStudioError, match="personal access token") as info:
        c.get_project(2)
    assert info.value.status == 401


def test_jwt_access_token_is_sent_as_is(ls):
    access = make_jwt({"token_type": "access", "exp": time.time() + 300})
    ls.valid_tokens.add(f"Bearer {access}")
    assert LabelStudioClient(ls.url, access).get_project(2)["id"] == 2
    assert ls.refreshes == 0
