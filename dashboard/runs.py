"""The aggregator and participant runs this dashboard started, as background work on this machine.

A run is ``task.aggregate(background=True)`` or ``task.participate(background=True)`` of the
Python API: a thread of this process, training on this machine's files; nothing but model updates
leaves it, as with the CLI. Runs are kept per werkbund user (and platform), not per browser, so a
user who logs out and in again, or opens a second browser, finds their runs; another user of the
same dashboard never sees them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunEntry:
    role: str  # "aggregator" or "participant"
    task: str
    user: str
    run: Any  # werkbund.Run
    session: Any  # the werkbund.Session the run uses
    dataset: str | None = None
    started: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return not self.run.done

    def progress(self) -> dict:
        progress = dict(self.run.progress)
        progress["dataset"] = self.dataset
        return progress


class RunRegistry:
    """Runs by (platform address, user, task, role); one live run of each at a time."""

    def __init__(self):
        self._runs: dict[tuple, RunEntry] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session, task: str, role: str) -> tuple:
        return (session.platform, session.url, session.name, task, role)

    def get(self, session, task: str, role: str) -> RunEntry | None:
        with self._lock:
            return self._runs.get(self._key(session, task, role))

    def of_task(self, session, task: str) -> list[RunEntry]:
        """This user's runs of a task (the aggregator first)."""
        found = [self.get(session, task, role) for role in ("aggregator", "participant")]
        return [entry for entry in found if entry is not None]

    def start(self, session, task: str, role: str, launch, dataset: str | None = None) -> RunEntry:
        """Start ``launch()`` (which returns a werkbund.Run) unless a run of the same kind is going."""
        from werkbund.platform.errors import InvalidState

        key = self._key(session, task, role)
        with self._lock:
            current = self._runs.get(key)
            if current is not None and current.active:
                raise InvalidState(f"the {role} of task {task!r} is already running in this dashboard")
            entry = RunEntry(role, task, session.name, launch(), session, dataset)
            self._runs[key] = entry
        return entry

    def uses(self, session) -> bool:
        """Whether a live run uses this werkbund session (then it must stay open)."""
        with self._lock:
            return any(e.session is session and e.active for e in self._runs.values())

    def stop_all(self, timeout: float = 30.0) -> None:
        with self._lock:
            entries = [e for e in self._runs.values() if e.active]
        for entry in entries:
            try:
                entry.run.stop(timeout=timeout)
            except Exception:  # stopping at shutdown: nothing more to do for it
                pass
