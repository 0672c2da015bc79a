"""POST /webhook without Flask's request machinery.

Label Studio drops a webhook that takes over a second and sends annotations in bursts, so the
acknowledgement is the hottest path of the server: Flask's request and response objects, context
push and hooks cost a third of a webhook's CPU. This WSGI wrapper answers exactly ``POST
/webhook`` itself: the same checks, the same answer (``answer`` is the Flask route's own core),
the same JSON errors and metrics; every other request goes to Flask.
"""
from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable, Optional

from ml_backend import metrics
from ml_backend.errors import ApiError

log = logging.getLogger(__name__)

ROUTE = "/webhook"
WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; ApiError (400) naming what is wrong."""
    if not data:
        raise ApiError(400, "empty body: send a JSON object")
    try:
        body = json.loads(data)
    except RecursionError:
        raise ApiError(400, "JSON body nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "malformed JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


class WsgiHeaders:
    """Request headers read from a WSGI environment, by name (case-insensitive)."""

    def __init__(self, wsgi_env: dict) -> None:
        self._env = wsgi_env

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self._env.get(key, default)


class WebhookLane:
    """Answers POST /webhook with ``answer(headers, read_body)`` (a dict, or an ApiError); passes the rest on."""

    def __init__(self, app: WSGIApp, answer: Callable[[WsgiHeaders, Callable[[], dict]], dict],
                 max_body_bytes: int) -> None:
        self.app = app
        self.answer = answer
        self.max_body_bytes = max_body_bytes

    def __call__(self, wsgi_env: dict, start_response: Callable) -> Iterable[bytes]:
        if wsgi_env.get("PATH_INFO") != ROUTE or wsgi_env.get("REQUEST_METHOD") != "POST":
            return self.app(wsgi_env, start_response)
        started = time.perf_counter()
        try:
            status, payload = 200, self.answer(WsgiHeaders(wsgi_env),
                                               lambda: parse_json_object(self._body(wsgi_env)))
        except ApiError as exc:
            status, payload = exc.status, {"error": exc.message, "status": exc.status}
        except Exception:
            log.exception("unhandled error on %s", ROUTE)
            status, payload = 500, {"error": "internal error; see the backend's log", "status": 500}
        data = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        metrics.REQUEST_LATENCY.labels(ROUTE, str(status)).observe(time.perf_counter() - started)
        return [data]

    def _body(self, wsgi_env: dict) -> bytes:
        raw = wsgi_env.get("CONTENT_LENGTH") or ""
        too_large = ApiError(413, f"request body larger than {self.max_body_bytes} bytes")
        if raw:
            try:
                length = int(raw)
            except ValueError:
                raise ApiError(400, "invalid Content-Length") from None
            if length < 0:
                raise ApiError(400, "invalid Content-Length")
            if length > self.max_body_bytes:
                raise too_large
            return wsgi_env["wsgi.input"].read(length)
        data = wsgi_env["wsgi.input"].read(self.max_body_bytes + 1)  # no length given (chunked)
        if len(data) > self.max_body_bytes:
            raise too_large
        return data
