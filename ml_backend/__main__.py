"""`python -m ml_backend`: the same commands as `ml-backend`."""
import sys

from ml_backend.cli import main

sys.exit(main())
