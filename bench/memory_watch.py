"""Memory watching for bench/vs_flower_big.py: the machine's memory in use, each process tree's peak
resident memory, and a guard that stops the benchmark's processes before the machine runs out."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from simulation import _children, _rss_kib, tree_rss_mib


def _machine_used_gib() -> float:
    """Memory in use on the machine (MemTotal - MemAvailable: what cannot be had back from caches)."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) / 1024 ** 2


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _broker_pid() -> int | None:
    """The RabbitMQ node (the largest beam.smp: rabbitmqctl and rabbitmq-plugins run one of their own)."""
    beams = [int(d) for d in os.listdir("/proc") if d.isdigit() and _comm(d) == "beam.smp"]
    return max(beams, key=_rss_kib, default=None)


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class MemoryWatch:
    """Samples every 0.2 s the RSS of the named processes (with their children unless said otherwise,
    bench/simulation.py's tree_rss_mib) and the machine's used memory; past ``limit_gib`` used it kills
    the processes it may stop, with their children, and records why."""

    def __init__(self, limit_gib: float):
        self.limit = limit_gib
        self.named: dict[str, int] = {}
        self.alone: set[str] = set()  # roles whose children are watched on their own
        self.stoppable: list[int] = []
        self.peaks: dict[str, float] = {}
        self.machine_peak_gib = 0.0
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pid: int, stoppable: bool = True, children: bool = True) -> None:
        self.named[role] = pid
        if not children:
            self.alone.add(role)
        if stoppable:
            self.stoppable.append(pid)

    def __enter__(self):
        broker = _broker_pid()
        if broker is not None:
            self.named["rabbitmq (whole broker)"] = broker
            self.alone.add("rabbitmq (whole broker)")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            used = _machine_used_gib()
            self.machine_peak_gib = max(self.machine_peak_gib, used)
            now = {role: _rss_kib(pid) / 1024 if role in self.alone else tree_rss_mib(pid)
                   for role, pid in list(self.named.items())}
            for role, rss in now.items():
                self.peaks[role] = max(self.peaks.get(role, 0.0), rss)
            if used > self.limit and not self.tripped:
                self.tripped = (f"machine memory in use {used:.1f} GiB > limit {self.limit:.0f} GiB; RSS then: "
                                + ", ".join(f"{r} {v:.0f} MiB" for r, v in now.items()))
                self.stop()

    def stop(self) -> None:
        """Kill the processes it may stop, children first."""
        tree, todo = _children(), list(self.stoppable)
        while todo:
            pid = todo.pop()
            todo.extend(tree.get(pid, []))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
