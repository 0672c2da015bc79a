"""Imported first by the job forkserver, before torch: the forkserver (whose imports take seconds of
CPU) and every job forked from it run at the serving process's niceness + ``JOB_NICE``, so on CPUs
they share, webhook acknowledgements and /predict come first. The serving process passes the
increment in ``ML_BACKEND_JOB_NICE`` when it starts the forkserver."""
import os

os.nice(max(0, int(os.environ.get("ML_BACKEND_JOB_NICE", "0") or 0)))
