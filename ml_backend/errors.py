"""Errors the HTTP layer turns into JSON answers; a leaf module, so any layer may raise them."""
from __future__ import annotations


class ApiError(Exception):
    """An answer with a status and a message for the client (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
