"""Label Studio API authentication: legacy token or personal access token (PAT).

Label Studio 1.23 accepts two kinds of API key:

* a legacy token, sent as ``Authorization: Token <key>`` (disabled by default for new
  organizations in 1.23: LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true turns it back on);
* a personal access token, which is a JWT *refresh* token. It is exchanged with
  ``POST /api/token/refresh/ {"refresh": PAT}`` for a short-lived access token, sent as
  ``Authorization: Bearer <access>``. Sending the PAT itself as a Bearer token gets a 401.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import requests

# Refresh this long before the access token's own expiry, so a request never races it.
_EXPIRY_MARGIN_S = 30.0


class LabelStudioError(Exception):
    """A Label Studio API call failed; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _b64json(part: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT-shaped token (``xxx.yyy.zzz``), or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    header = _b64json(parts[0])
    if header is None or "alg" not in header:
        return None
    return _b64json(parts[1]) or {}


def scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked (a last guard for messages built from responses)."""
    return text.replace(secret, "***") if secret else text


class TokenAuth:
    """Produces the Authorization header for one Label Studio instance and API key."""

    def __init__(self, url: str, api_key: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._key = api_key
        self._timeout = timeout
        claims = jwt_claims(api_key)
        # A JWT that says it is an access token is used as is (it cannot be refreshed).
        self.is_jwt = claims is not None
        self.can_refresh = self.is_jwt and claims.get("token_type") != "access"
        self._access: str | None = None if self.can_refresh else api_key
        self._access_exp = float("inf")
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        kind = "pat" if self.can_refresh else "jwt" if self.is_jwt else "legacy"
        return f"TokenAuth({self.url!r}, {kind})"

    def headers(self) -> dict[str, str]:
        """``{"Authorization": ...}``, exchanging the PAT first when needed."""
        if not self._key:
            return {}
        if not self.is_jwt:
            return {"Authorization": f"Token {self._key}"}
        if self.can_refresh:
            with self._lock:
                if self._access is None or time.time() > self._access_exp - _EXPIRY_MARGIN_S:
                    self._refresh()
        return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        """Forget the access token (after a 401), so the next ``headers()`` refreshes it."""
        if self.can_refresh:
            with self._lock:
                self._access = None

    def _refresh(self) -> None:
        endpoint = self.url + "/api/token/refresh/"
        try:
            r = requests.post(endpoint, json={"refresh": self._key}, timeout=self._timeout)
        except requests.RequestException as exc:
            raise LabelStudioError(
                scrub(f"cannot reach Label Studio at {endpoint} to exchange the personal access token: "
                      f"{type(exc).__name__}", self._key)) from None
        access = None
        if r.ok:
            try:
                access = r.json().get("access")
            except ValueError:
                pass
        if not isinstance(access, str) or not access:
            raise LabelStudioError(
                f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                f"(POST /api/token/refresh/: HTTP {r.status_code}); create a new one under Account & Settings",
                r.status_code)
        exp = (jwt_claims(access) or {}).get("exp")
        self._access = access
        self._access_exp = float(exp) if isinstance(exp, (int, float)) else float("inf")


def send(session: requests.Session, method: str, url: str, auth: TokenAuth | None,
         **kwargs: Any) -> requests.Response:
    """``session.request`` with the Label Studio header; on a 401, refresh the PAT and retry once."""
    headers = dict(kwargs.pop("headers", None) or {})
    if auth is not None:
        headers.update(auth.headers())
    response = session.request(method, url, headers=headers, **kwargs)
    if response.status_code == 401 and auth is not None and auth.can_refresh:
        response.close()
        auth.invalidate()
        headers.update(auth.headers())
        response = session.request(method, url, headers=headers, **kwargs)
    return response


def legacy_hint(auth: TokenAuth | None, status: int) -> str:
    """A hint for the commonest 401 (legacy tokens are off by default in LS 1.23)."""
    if status != 401:
        return ""
    if auth is None or not auth._key:
        return "; set LABEL_STUDIO_API_KEY"
    if not auth.is_jwt:
        return ("; check LABEL_STUDIO_API_KEY (legacy tokens are disabled by default in Label Studio 1.23: "
                "use a personal access token, or start Label Studio with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)")
    return "; check LABEL_STUDIO_API_KEY"
