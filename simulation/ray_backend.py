"""The Ray backend: the same virtual participants, hosted by Ray actors (``pip install 'werkbund[ray]'``).

For a simulation that outgrows one process (or one machine: ``ray.init(address=...)`` before
``simulate``, or ``RayBackend(address=...)``), the participants' steps run in Ray actors instead
of a thread pool. Each :class:`SiteHost` actor holds a share of the virtual participants: their
data, and the algorithm's own participant objects over the real participant handle, exactly as in
this process. The platform core, the mailboxes and the aggregator stay in the driver: a message
to participants goes to each actor once with the names it is for (a broadcast is shipped once per
actor, not once per participant); the frames the participants send back are routed by the driver
through the core's routes into the aggregator's mailbox, when the actor's call returns (a
completion callback, no polling). Ray runs an actor's calls in the order they were made, so each
participant sees its messages in order.
"""
from __future__ import annotations

import importlib
import logging
import threading

from werkbund.platform.errors import InvalidInput

log = logging.getLogger("werkbund.simulation")

EXTRA_HINT = "the Ray backend needs Ray, the optional extra: pip install 'werkbund[ray]'"


def import_ray():
    """``ray``, or InvalidInput naming the extra that brings it."""
    try:
        return importlib.import_module("ray")  # optional: not a dependency of werkbund itself
    except ImportError as exc:
        raise InvalidInput(f"{EXTRA_HINT} (import ray failed: {exc})") from None


class SiteHost:
    """A Ray actor holding some virtual participants (their data and algorithm objects)."""

    def __init__(self, algorithm: str, task: str, info: dict, sites: list):
        from werkbund.algorithms.registry import get_algorithm
        from werkbund.client.api import User
        from werkbund.simulation.sites import Quiet, Site, SiteTransport, VirtualParticipantHandle

        algo = get_algorithm(algorithm)
        self._out: list = []
        self.sites = {}
        for name, train, test in sites:
            transport = SiteTransport(name, self._collect)
            handle = VirtualParticipantHandle(User(transport), task, info)
            self.sites[name] = Site(name, algo.participant(handle, train, test, progress=Quiet()), transport)

    def _collect(self, user, task, to, body):
        self._out.append((user, to, bytes(body)))
        return {"delivered_to": 1, "size": len(body)}

    def deliver(self, names: list, sender: str, body: bytes):
        """Hand one message to each named participant; return their replies and who finished."""
        self._out = []
        finished = {}
        for name in names:
            site = self.sites[name]
            if site.done:
                continue
            site.transport.inbox.append((sender, body))
            site.step()
            if site.done:
                finished[name] = {"done": True, "result": site.result, "error": site.error}
        return self._out, finished

    def ping(self) -> int:
        return len(self.sites)


class RayBackend:
    """Virtual participants on Ray actors; the driver keeps the platform core and the aggregator.

    ``hosts``: how many actors (default: the CPUs Ray has); ``address``: a running Ray cluster
    (default: the one ``ray.init`` already joined in this process, else a local instance made here
    with ``num_cpus``, and shut down by :meth:`close`).
    """

    name = "ray"
    remote = True

    def __init__(self, hosts: int | None = None, address: str | None = None, num_cpus: int | None = None):
        self.ray = import_ray()
        self._owns = False
        if not self.ray.is_initialized():
            self.ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                          configure_logging=False)
            self._owns = True
        cpus = int(self.ray.available_resources().get("CPU", 1)) or 1
        self.workers = int(hosts or cpus)
        if self.workers < 1:
            raise ValueError("the Ray backend needs at least one actor")
        self._actors: list = []
        self._host_of: dict[str, int] = {}
        self._outcomes: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._platform = None
        self._task = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def build(self, algorithm: str, task: str, info: dict, sites: list, platform) -> None:
        """Start the actors with their share of ``sites`` ((name, train, test) each)."""
        self._platform, self._task = platform, task
        shares = [sites[k::self.workers] for k in range(self.workers)]
        actor = self.ray.remote(num_cpus=0)(SiteHost)
        for k, share in enumerate(s for s in shares if s):
            self._actors.append(actor.remote(algorithm, task, info, share))
            for name, _, _ in share:
                self._host_of[name] = k
                self._outcomes[name] = {"done": False, "result": None, "error": None}
        self.ray.get([a.ping.remote() for a in self._actors])  # fail here, not in round 0, if a host cannot start

    def deliver(self, task: str, names: list[str], sender: str, body: bytes) -> None:
        groups: dict[int, list[str]] = {}
        for name in names:
            groups.setdefault(self._host_of[name], []).append(name)
        body = bytes(body)
        for k, group in groups.items():
            ref = self._actors[k].deliver.remote(group, sender, body)
            with self._lock:
                self._pending += 1
            ref.future().add_done_callback(lambda future, group=group: self._returned(future, group))

    def _returned(self, future, group: list[str]) -> None:
        try:
            out, finished = future.result()
        except Exception as exc:  # the actor died: its participants stop; the aggregator notices the silence
            log.error("a Ray host of %d virtual participants failed: %s", len(group), exc)
            out, finished = [], {n: {"done": True, "result": None, "error": f"Ray host failed: {exc}"}
                                 for n in group}
        try:
            for user, to, frame in out:
                try:
                    self._platform.send_as(user, self._task, to, frame)
                except Exception as exc:  # refused by the core (e.g. the task ended): as a transport would say
                    log.warning("message from %s not delivered: %s", user, exc)
        finally:
            with self._lock:
                self._outcomes.update(finished)
                self._pending -= 1
                self._idle.notify_all()

    def outcomes(self) -> dict[str, dict]:
        with self._lock:
            return {name: dict(o) for name, o in self._outcomes.items()}

    def close(self) -> None:
        with self._lock:  # let the last replies (the final evaluations) land
            self._idle.wait_for(lambda: self._pending == 0, timeout=60)
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._owns:
            self.ray.shutdown()
            self._owns = False
