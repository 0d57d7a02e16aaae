"""How a run from Python shows its progress: bars in Jupyter, bars on a terminal, lines elsewhere.

- In a Jupyter kernel with tqdm and ipywidgets (the ``notebooks`` extra): two notebook progress
  bars (rounds; epochs of the current round) and the engine's messages printed under them.
- On a terminal: rich's bars (the CLI's :class:`RichProgress`).
- Elsewhere (a script whose output goes to a file, a test): one plain line per event on stderr.
"""
from __future__ import annotations

import sys

from werkbund.algorithms.engine.progress import Progress


def in_jupyter() -> bool:
    """Whether this code runs in a Jupyter (IPython) kernel."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class LineProgress(Progress):
    """One line per event on a stream (stderr by default): for scripts, logs and CI."""

    def __init__(self, prefix: str = "", stream=None):
        self.prefix = prefix
        self.stream = stream

    def _print(self, text: str) -> None:
        print(f"{self.prefix}{text}", file=self.stream or sys.stderr, flush=True)

    def message(self, text):
        self._print(text)

    def round_done(self, number, total, summary):
        self._print(f"round {number + 1}/{total}: {summary}")

    def epoch_done(self, epoch, total, logs):
        self._print(f"epoch {epoch + 1}/{total}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))


class NotebookProgress(LineProgress):
    """tqdm's notebook bars for rounds and epochs; messages as lines (no per-epoch lines)."""

    def __init__(self, prefix: str = ""):
        super().__init__(prefix, sys.stdout)
        from tqdm.notebook import tqdm

        self._tqdm = tqdm
        self._rounds = None
        self._epochs = None

    def rounds_started(self, total):
        self._rounds = self._tqdm(total=total, desc=f"{self.prefix}rounds", unit="round")

    def round_done(self, number, total, summary):
        if self._rounds is not None:
            self._rounds.n = number + 1
            self._rounds.set_postfix_str(summary[:80], refresh=True)
        else:
            super().round_done(number, total, summary)

    def epochs_started(self, round_number, total):
        if self._epochs is None:
            self._epochs = self._tqdm(total=total, desc=f"{self.prefix}epochs", unit="epoch")
        self._epochs.reset(total=total)
        self._epochs.set_description(f"{self.prefix}round {round_number + 1} epochs")

    def epoch_done(self, epoch, total, logs):
        if self._epochs is not None:
            self._epochs.n = epoch + 1
            self._epochs.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=True)

    def close(self):
        for bar in (self._rounds, self._epochs):
            if bar is not None:
                bar.close()


def make_display(show: bool | str = True, prefix: str = "") -> Progress:
    """The progress display for ``show``: False for silence (log records only), True for the best
    this environment offers, or one of ``"notebook"``, ``"terminal"``, ``"lines"``."""
    if show is False or show is None:
        return Progress()
    if show is True:
        if in_jupyter():
            show = "notebook"
        elif sys.stderr.isatty():
            show = "terminal"
        else:
            show = "lines"
    if show == "notebook":
        try:
            import ipywidgets  # noqa: F401
            import tqdm.notebook  # noqa: F401
        except ImportError:  # the notebooks extra is not installed: lines instead of bars
            return LineProgress(prefix, sys.stdout)
        return NotebookProgress(prefix)
    if show == "terminal":
        from werkbund.algorithms.engine.progress import RichProgress

        return RichProgress()
    if show == "lines":
        return LineProgress(prefix)
    raise ValueError(f"progress must be True, False, 'notebook', 'terminal' or 'lines', not {show!r}")
