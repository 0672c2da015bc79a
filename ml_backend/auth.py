"""Basic auth for Label Studio's calls; a shared-secret header for webhooks."""
from __future__ import annotations

import base64
import hmac
from typing import Optional

from ml_backend.config import Settings


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def basic_auth_ok(settings: Settings, authorization: Optional[str]) -> bool:
    """True when basic auth is off, or the header carries the configured user and password."""
    if not (settings.basic_auth_user and settings.basic_auth_pass):
        return True
    if not authorization or not authorization.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(authorization[6:]).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return _equal(user, settings.basic_auth_user) & _equal(password, settings.basic_auth_pass)


def webhook_ok(settings: Settings, headers) -> bool:
    """Webhooks carry no basic auth (Label Studio sends only the webhook's own headers),
    except START_TRAINING, which Label Studio sends with the ML backend's basic auth.
    So a webhook passes with the shared secret, or with basic auth when that is configured."""
    secret_on = bool(settings.webhook_secret)
    basic_on = bool(settings.basic_auth_user and settings.basic_auth_pass)
    if not secret_on and not basic_on:
        return True
    if secret_on and _equal(headers.get(settings.webhook_header, ""), settings.webhook_secret):
        return True
    return basic_on and basic_auth_ok(settings, headers.get("Authorization"))
