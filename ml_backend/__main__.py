import sys

from ml_backend.cli import main

sys.exit(main())
