"""WSGI entry point for gunicorn: `gunicorn ml_backend.wsgi:app`."""
import logging

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.serving import configure_torch

_settings = Settings.from_env()
logging.basicConfig(level=_settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
configure_torch(_settings)
app = create_app(_settings)
