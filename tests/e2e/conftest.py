"""Fixtures for the end-to-end tests: one real Label Studio 1.23.2 per test session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent
if str(E2E_DIR) not in sys.path:  # `import labelstudio` works under any pytest import mode
    sys.path.insert(0, str(E2E_DIR))

from labelstudio import INSTALL_SCRIPT, LabelStudio, StepTimer  # noqa: E402

TIMER = StepTimer()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an `e2e` test."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def label_studio(request: pytest.FixtureRequest) -> Iterator[LabelStudio]:
    """A running Label Studio (installed into .cache/ls-venv on first use), stopped after the session.

    Its work dir (data, document root, log) is removed afterwards unless a test failed.
    """
    with TIMER.step("install label studio (if needed)"):
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    ls = LabelStudio(timer=TIMER)
    ls.start()
    try:
        yield ls
    finally:
        ls.stop()
        if request.session.testsfailed:
            print(f"\nlabel-studio log kept at {ls.log_path}")
        else:
            ls.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the e2e step timings at the end of the run."""
    if TIMER.steps:
        terminalreporter.write_sep("-", "e2e step timings")
        terminalreporter.write_line(TIMER.summary())
