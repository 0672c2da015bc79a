"""Speed benchmarks (not tests). Each is a plain script:

    .venv/bin/python -m benchmarks.NAME [--quick] [--device cuda]

printing a markdown table headed by the machine and writing ``benchmarks/results/NAME.json``;
``python -m benchmarks.run_all`` runs them all and regenerates ``docs/benchmarks.md``.
"""
