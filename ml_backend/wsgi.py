"""WSGI entry point for gunicorn: `gunicorn ml_backend.wsgi:app`."""
import logging

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.serving import configure_torch

_settings = Settings.from_env()
logging.basicConfig(level=_settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
configure_torch(_settings)
if _settings.project.backbone:
    # transformers takes seconds to import, its model code seconds more on first use (a first /setup
    # of a backbone project took 4.3 s on a 2-core EPYC), and Label Studio gives a backend's /setup 3 s
    import transformers  # noqa: F401
    import transformers.image_processing_utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
app = create_app(_settings)
