"""Progress reporting for long work: rounds, participants, epochs.

The engine calls a :class:`Progress`; the default one logs lines, the rich one
(used by the CLI on a terminal) also draws progress bars.
"""
from __future__ import annotations

import logging

log = logging.getLogger("werkbund.progress")


class Progress:
    """Logs what happens; subclasses may draw it too."""

    def message(self, text: str) -> None:
        log.info(text)

    def rounds_started(self, total: int) -> None:
        pass

    def round_done(self, number: int, total: int, summary: str) -> None:
        log.info("round %d/%d: %s", number + 1, total, summary)

    def epochs_started(self, round_number: int, total: int) -> None:
        pass

    def epoch_done(self, epoch: int, total: int, logs: dict) -> None:
        log.info("epoch %d/%d: %s", epoch + 1, total, ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))

    def close(self) -> None:
        pass


class RichProgress(Progress):
    """Progress bars on the terminal (rich), with the same log lines."""

    def __init__(self, console=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn

        self._bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=False)
        self._bars.start()
        self._rounds = None
        self._epochs = None

    def rounds_started(self, total):
        self._rounds = self._bars.add_task("rounds", total=total)

    def round_done(self, number, total, summary):
        super().round_done(number, total, summary)
        if self._rounds is not None:
            self._bars.update(self._rounds, completed=number + 1)

    def epochs_started(self, round_number, total):
        if self._epochs is not None:
            self._bars.remove_task(self._epochs)
        self._epochs = self._bars.add_task(f"round {round_number + 1} epochs", total=total)

    def epoch_done(self, epoch, total, logs):
        super().epoch_done(epoch, total, logs)
        if self._epochs is not None:
            self._bars.update(self._epochs, completed=epoch + 1)

    def close(self):
        self._bars.stop()
