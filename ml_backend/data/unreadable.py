"""Tasks whose data cannot be read: why, logged once per task, not on every request.

Label Studio re-sends a task that has no prediction of the current version every time it asks
(Retrieve Predictions, opening the task, the labeling stream), so a broken image URL would
otherwise write the same warning on each of those requests.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)


class UnreadableLog:
    """Remembers the last ``capacity`` (project, task) reasons logged in this process; a task is
    logged again only when its reason changes (or after it was forgotten)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, Any], str] = OrderedDict()
        self._guard = threading.Lock()

    def first(self, project: str, task_id: Any, reason: str) -> bool:
        """Whether this is the first time (project, task) is unreadable for ``reason``; remembers it."""
        key = (project, _task_key(task_id))
        with self._guard:
            if self._seen.get(key) == reason:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = reason
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True

    def report(self, project: str, task_id: Any, reason: str, what: str = "no prediction") -> None:
        """Log a task's unreadable data at WARNING once, at DEBUG afterwards."""
        level = logging.WARNING if self.first(project, task_id, reason) else logging.DEBUG
        log.log(level, "project %s task %s: cannot read data (%s): %s", project, _task_key(task_id), what, reason)

    def forget(self, project: str, task_id: Any) -> None:
        """The task was read after all: log it again if it breaks again."""
        with self._guard:
            self._seen.pop((project, _task_key(task_id)), None)


def _task_key(task_id: Any) -> Any:
    """A task id as Label Studio sends it (an int), or a short text of whatever a request sent."""
    return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else repr(task_id)[:80]


UNREADABLE = UnreadableLog()
