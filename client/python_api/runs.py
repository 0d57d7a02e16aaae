"""Aggregator and participant runs from Python: in the foreground, or in the background behind a :class:`Run`.

A run is the same engine the CLI drives (``algorithms/engine``). In the background it works in a
thread of this process, so a notebook cell returns at once; the :class:`Run` handle is polled
(``progress``), waited on (``wait``) or stopped (``stop``). Stopping is cooperative: the
channel the engine talks through checks a stop flag while it waits for messages, and the
progress callbacks check it between epochs, so a run stops within about half a second of waiting
or at the end of the current epoch, never in the middle of writing a message.

What a stop means for the task:

- an aggregator with a checkpoint (the default, under ``WERKBUND_HOME/checkpoints/TASK``) leaves
  the task STARTED after its last completed round; ``task.aggregate(resume=True)`` goes on from
  there, and the participants keep waiting. Without a checkpoint yet, the task FAILS with the
  reason "aggregator interrupted" and the participants are told.
- a participant tells the aggregator that it stopped ("participant stopped by its user") and
  leaves; the aggregator records it as rejected in the round that was waiting for it and asks it
  no more (or fails the round below ``min_updates``).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from werkbund.algorithms.engine.progress import Progress

POLL_SECONDS = 0.5


class RunStopped(KeyboardInterrupt):
    """A run was stopped by its user (``Run.stop()``); handled by the engine like Ctrl-C."""


class StopFlag:
    def __init__(self):
        self.event = threading.Event()

    def check(self) -> None:
        if self.event.is_set():
            raise RunStopped("stopped by its user")


class StoppableChannel:
    """The engine's channel with a stop flag: ``receive`` waits in short slices and checks it.

    Everything else goes to the wrapped handle unchanged.
    """

    def __init__(self, inner, flag: StopFlag, on_stop: Callable[[], None] | None = None):
        self._inner = inner
        self._flag = flag
        self._on_stop = on_stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def receive(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            self._stop_if_asked()
            remaining = deadline - time.monotonic()
            message = self._inner.receive(timeout=max(0.0, min(POLL_SECONDS, remaining)))
            if message is not None or time.monotonic() >= deadline:
                return message

    def info(self) -> dict:
        self._stop_if_asked()
        return self._inner.info()

    def wait_for_quorum(self, timeout=None, poll: float = 1.0, on_progress=None, check=None):
        return self._inner.wait_for_quorum(timeout=timeout, poll=min(poll, POLL_SECONDS), on_progress=on_progress,
                                           check=self._stop_if_asked)

    def _stop_if_asked(self) -> None:
        if self._flag.event.is_set():
            if self._on_stop is not None:
                on_stop, self._on_stop = self._on_stop, None
                try:
                    on_stop()
                except Exception:  # the stop goes on; the other side notices the silence
                    pass
            self._flag.check()


class TrackingProgress(Progress):
    """Keeps the state a :class:`Run` reports (round x of y, epoch, last message) and passes every
    event on to a display (log lines, a terminal or a notebook progress bar)."""

    def __init__(self, display: Progress, flag: StopFlag, rounds: int | None = None):
        self.display = display
        self.flag = flag
        self.lock = threading.Lock()
        self.state: dict = {"round": 0, "rounds": rounds, "epoch": 0, "epochs": None, "message": "",
                            "summary": ""}

    def _set(self, **values) -> None:
        with self.lock:
            self.state.update(values)

    def message(self, text):
        self._set(message=text)
        self.display.message(text)

    def rounds_started(self, total):
        self._set(rounds=total)
        self.display.rounds_started(total)

    def round_done(self, number, total, summary):
        self._set(round=number + 1, rounds=total, summary=summary)
        self.display.round_done(number, total, summary)
        self.flag.check()

    def epochs_started(self, round_number, total):
        self._set(epoch=0, epochs=total, round=max(self.state["round"], round_number + 1))
        self.display.epochs_started(round_number, total)
        self.flag.check()

    def epoch_done(self, epoch, total, logs):
        self._set(epoch=epoch + 1, epochs=total)
        self.display.epoch_done(epoch, total, logs)
        self.flag.check()

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.state)

    def close(self):
        self.display.close()


class Run:
    """A background aggregator or participant run (``task.aggregate(background=True)`` and
    ``task.participate(background=True)``).

    - ``run.progress``: a dict with ``status`` (``running``, ``done``, ``failed``, ``stopped``),
      ``round`` and ``rounds``, ``epoch`` and ``epochs``, the last ``message`` and ``elapsed_s``;
    - ``run.wait(timeout=None)``: block until it ends and return its :class:`~werkbund.Result`
      (raises what the run raised: ``TaskFailure``, ``TaskEnded``, ``RunStopped``, ...);
      ``TimeoutError`` if ``timeout`` seconds passed first (the run goes on);
    - ``run.stop(timeout=60)``: ask it to stop and wait until it has; see the module help for
      what a stop means for the task;
    - ``run.done``, ``run.result``, ``run.error``.
    """

    def __init__(self, role: str, task: str, work: Callable[[TrackingProgress], Any], display: Progress,
                 flag: "StopFlag | None" = None, rounds: int | None = None):
        self.role = role
        self.task = task
        self._flag = flag or StopFlag()
        self._tracker = TrackingProgress(display, self._flag, rounds)
        self._work = work
        self._finished = threading.Event()
        self._result = None
        self._error: BaseException | None = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._main, name=f"werkbund-{role}-{task}", daemon=True)

    def start(self) -> "Run":
        """Start the run's thread (``task.aggregate``/``participate`` do); returns the run."""
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self._result = self._work(self._tracker)
        except BaseException as exc:  # kept for wait(); a background thread has nobody else to tell
            self._error = exc
        finally:
            self._ended = time.monotonic()
            try:
                self._tracker.close()
            finally:
                self._finished.set()

    @property
    def done(self) -> bool:
        """Whether the run has ended (completed, failed or stopped)."""
        return self._finished.is_set()

    @property
    def status(self) -> str:
        if not self.done:
            return "stopping" if self._flag.event.is_set() else "running"
        if self._error is None:
            return "done"
        return "stopped" if isinstance(self._error, RunStopped) else "failed"

    @property
    def progress(self) -> dict:
        """Where the run stands now (cheap; safe to poll from a notebook cell)."""
        snap = self._tracker.snapshot()
        end = self._ended or time.monotonic()
        snap.update(status=self.status, role=self.role, task=self.task, elapsed_s=round(end - self._started, 1))
        if self._error is not None:
            snap["error"] = str(self._error) or type(self._error).__name__
        return snap

    @property
    def result(self):
        """The :class:`~werkbund.Result` once the run completed, else None."""
        return self._result

    @property
    def error(self) -> BaseException | None:
        """What ended the run if it did not complete, else None."""
        return self._error

    def wait(self, timeout: float | None = None):
        """Block until the run ends; return its Result or raise its error."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"the {self.role} run of task {self.task!r} is still going after {timeout:g} s "
                               f"(round {self.progress['round']} of {self.progress['rounds']}); it goes on")
        if self._error is not None:
            raise self._error
        return self._result

    def stop(self, timeout: float | None = 60.0) -> dict:
        """Ask the run to stop and wait (up to ``timeout`` s) until it has; returns ``progress``."""
        self._flag.event.set()
        self._finished.wait(timeout)
        return self.progress

    def __repr__(self) -> str:
        p = self.progress
        where = f"round {p['round']} of {p['rounds']}" if p["rounds"] else p["message"] or "starting"
        return f"<werkbund.Run {self.role} of {self.task!r}: {p['status']}, {where}, {p['elapsed_s']} s>"

    def _repr_html_(self) -> str:
        import html

        p = self.progress
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                       for k, v in p.items() if v not in (None, ""))
        return f"<b>werkbund {self.role} run of {html.escape(self.task)}</b><table>{rows}</table>"
