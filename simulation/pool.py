"""The default backend: virtual participants as actors on a bounded thread pool.

A message for a virtual participant is put in its queue and the participant is scheduled, unless
it is already scheduled or running (then it is marked to look again when it is done, so no
message is left behind and one participant never runs on two workers at once, which keeps its
messages in order). A worker runs the participant until its queue is empty and moves on. Nothing
polls and nothing blocks per participant: N participants cost N small objects, not N threads.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from werkbund.simulation.sites import Site


def default_workers() -> int:
    """Workers for the pool: one per core, at most 4 (the work is short NumPy steps under the GIL;
    more threads only add switching)."""
    return max(1, min(4, os.cpu_count() or 1))


class ThreadBackend:
    name = "threads"

    def __init__(self, workers: int | None = None):
        self.workers = int(workers or default_workers())
        if self.workers < 1:
            raise ValueError("a simulation needs at least one worker")
        self.sites: dict[str, Site] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="werkbund-sim")

    def add(self, sites: list[Site]) -> None:
        self.sites.update({site.name: site for site in sites})

    def deliver(self, task: str, names: list[str], sender: str, body: bytes) -> None:
        for name in names:
            site = self.sites[name]
            site.transport.inbox.append((sender, body))
            self._schedule(site)

    def _schedule(self, site: Site) -> None:
        with site.lock:
            if site.done:
                site.transport.inbox.clear()
                return
            if site.running:
                site.again = True
                return
            site.running = True
        self._pool.submit(self._drain, site)

    @staticmethod
    def _drain(site: Site) -> None:
        while True:
            site.step()
            with site.lock:
                if site.again and not site.done:
                    site.again = False
                    continue
                site.running = False
                return

    def outcomes(self) -> dict[str, dict]:
        return {name: {"done": s.done, "result": s.result, "error": s.error} for name, s in self.sites.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
