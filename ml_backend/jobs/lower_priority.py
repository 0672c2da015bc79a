"""Imported first by the job forkserver, before torch: the forkserver (whose imports take seconds of
CPU) and every job forked from it run ``JOB_NICE`` below the serving process, so on CPUs they
share, webhook acknowledgements and /predict come first. The forkserver inherits the serving
process's environment, so it reads the same setting."""
import os

from ml_backend.config import Settings

os.nice(Settings.from_env().job_nice)
