"""Learning from explanation feedback: the seeds' confounder experiments through the backend's own loop.

    .venv/bin/python -m benchmarks.xil [--quick]

See benchmarks/xil/__main__.py for the options and docs/xil-benchmarks.md for the results.
"""
