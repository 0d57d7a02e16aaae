"""``werkbund.simulate``: N virtual companies from one data set, through the platform core, in one process.

What happens, in order:

1. the data is loaded and cut into N parts (``partition.py``); each part is split into train and
   test rows with the task's ``test_size`` and ``seed``, exactly as ``Task.participate`` splits a
   participant's data;
2. a platform core starts in this process (``SimPlatform``: ``PlatformService`` over an in-memory
   SQLite database, the real mailboxes); a coordinator and N virtual users are made without argon2;
3. the coordinator creates the task through the core's ``create_task`` (the definition checked as
   always, quorum and ``max_participants`` set to N); the virtual participants are enrolled with
   their data schemas in one transaction;
4. every virtual participant is the algorithm's own participant class over a real participant
   handle, run by the backend (``threads``: a bounded pool in this process; ``ray``: Ray actors);
5. the coordinator runs the algorithm's own aggregator in the calling thread: quorum, start,
   federated standardization, the rounds, the final model, ``finish_task``: the task ends
   COMPLETE on the core like a real one, and the result is the ``werkbund.Result`` of that task.

The ledger: virtual participants have no identity keys unless ``ledger=True`` (or the task's POM is
2 or 3), so by default the round engine runs without the members' ledger entries
(``update_submitted``, audits), as for any user without a key; the platform's own entries (task
created, joined, finished) are written as always.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from werkbund.algorithms.engine.progress import Progress
from werkbund.client.python_api.results import Result
from werkbund.platform.errors import InvalidInput
import werkbund.simulation.data as sim_data
from werkbund.simulation.partition import DEFAULT_MIN_ROWS, describe, parse_partition, partition_rows
from werkbund.simulation.platform import SimPlatform
from werkbund.simulation.sites import Quiet, Site, SiteTransport, VirtualParticipantHandle

COORDINATOR = "coordinator"


def participant_names(count: int) -> list[str]:
    """``site-001``, ``site-002``, ... (as wide as ``count`` needs, at least three digits)."""
    width = max(3, len(str(count)))
    return [f"site-{i:0{width}d}" for i in range(1, count + 1)]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class RoundClock(Progress):
    """Passes the aggregator's progress to a display (shortened: a summary naming 1,000
    participants is one line, not a page) and notes when every round ends."""

    WIDTH = 160

    def __init__(self, display: Progress):
        self.display = display
        self.started: float | None = None
        self.ends: list[float] = []

    def _short(self, text: str) -> str:
        return text if len(text) <= self.WIDTH else text[:self.WIDTH - 3] + "..."

    def message(self, text):
        self.display.message(self._short(text))

    def rounds_started(self, total):
        self.started = time.perf_counter()
        self.display.rounds_started(total)

    def round_done(self, number, total, summary):
        self.ends.append(time.perf_counter())
        self.display.round_done(number, total, self._short(summary))

    def epochs_started(self, round_number, total):
        self.display.epochs_started(round_number, total)

    def epoch_done(self, epoch, total, logs):
        self.display.epoch_done(epoch, total, logs)

    def close(self):
        self.display.close()

    @property
    def round_times(self) -> list[float]:
        if self.started is None:
            return []
        marks = [self.started, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]


class SimulationResult(Result):
    """The :class:`werkbund.Result` of a simulated task, with what the simulation measured.

    Besides ``history``, ``participants``, ``plot()``, ``final`` and ``model`` (as for any task):

    - ``round_times``: seconds of every round (broadcast to recorded), ``per_round_s``: their mean
      after the first round; ``setup_s``: platform, users, task and enrolment; ``wall_s``: all;
    - ``n_participants``, ``partition`` (the spec), ``sizes`` (rows per virtual participant),
      ``partition_summary`` (sizes and label skew), ``backend``, ``workers``;
    - ``peak_rss_mib``: the process's peak resident memory when the simulation ended;
    - ``errors``: virtual participants that stopped with an error, with the reason.
    """

    def __init__(self, task, outcome: dict, facts: dict):
        super().__init__(task, "aggregator", outcome)
        self.facts = facts
        self.platform = facts.pop("_platform", None)  # keeps the in-memory core alive for the tables
        for key, value in facts.items():
            setattr(self, key, value)

    @property
    def final(self):
        """The final model; with ``ledger`` its sha256 checked against the task's verified ledger (as
        ``Task.model`` does, without keeping a ledger view under WERKBUND_HOME for a throw-away platform)."""
        if self._final is None:
            from werkbund.client.ledger import bundle_report

            final = self._task.model(check_ledger=False)
            if self.facts.get("ledger"):
                bundle = self._task.session.client.transport.call("ledger_bundle", task=self.task)
                final.check_ledger(bundle, bundle_report(bundle))
            self._final = final
        return self._final

    @property
    def per_round_s(self) -> float | None:
        times = self.round_times[1:] or self.round_times
        return float(np.mean(times)) if times else None

    def summary(self) -> str:
        """One line: participants, partition, rounds, times, memory and the last round's figures."""
        from werkbund.algorithms.metrics import headline

        last = (self.records[-1].get("metrics") or {}) if self.records else {}
        figures = headline(last)
        per_round = f"{self.per_round_s:.3f} s per round after the first" if self.per_round_s is not None else ""
        return (f"simulated {self.task}: {self.n_participants} participants ({self.partition}), "
                f"{len(self.records)} rounds in {self.wall_s:.1f} s (setup {self.setup_s:.1f} s, {per_round}), "
                f"peak memory {self.peak_rss_mib:.0f} MiB" + (f", last round {figures}" if figures else ""))

    def save(self, folder: str | Path) -> list[str]:
        """As ``Result.save``, plus ``simulation.json`` (the facts above) and the final model."""
        written = super().save(folder)
        folder = Path(folder).expanduser()
        facts = {k: v for k, v in self.facts.items() if k != "sizes"}
        facts.update(per_round_s=self.per_round_s, summary=self.summary(),
                     sizes={"min": int(min(self.sizes)), "max": int(max(self.sizes)), "total": int(sum(self.sizes))})
        (folder / "simulation.json").write_text(json.dumps(facts, indent=2, default=str))
        written.append(str(folder / "simulation.json"))
        final = self.final
        suffix = ".keras" if final.bytes[:2] == b"PK" else ".json" if final.bytes[:1] == b"{" else ".safetensors"
        written.append(str(final.save(folder / f"model{suffix}")))
        return written

    def __repr__(self) -> str:
        return f"<werkbund.SimulationResult: {self.summary()}>"


def _definition(definition: Any) -> dict:
    if isinstance(definition, dict):
        return dict(definition)
    if isinstance(definition, (str, Path)):
        path = Path(definition).expanduser()
        if not path.is_file():
            raise InvalidInput(f"task definition {definition} is not a file (give a dict or a JSON file)")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"task definition {path} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidInput(f"task definition {path} must hold a JSON object")
        return loaded
    raise InvalidInput("a task definition is a dict or the path of a JSON file")


def _backend(backend, workers):
    if not isinstance(backend, str):
        return backend  # an object with add/deliver/outcomes/close, e.g. a RayBackend made by the caller
    if backend == "threads":
        from werkbund.simulation.pool import ThreadBackend

        return ThreadBackend(workers)
    if backend == "ray":
        from werkbund.simulation.ray_backend import RayBackend

        return RayBackend(hosts=workers)
    raise InvalidInput(f"unknown simulation backend {backend!r}; use threads or ray")


def simulate(definition: Any, data: Any, partition: str = "iid", participants: int = 10, seed: int = 0, *,
             target: str | None = None, features: list[str] | str | None = None, kind: str | None = None,
             missing: str = "drop", rounds: int | None = None, backend: Any = "threads",
             workers: int | None = None, progress: bool | str = True, holdout: Any = None,
             min_rows: int = DEFAULT_MIN_ROWS, task: str = "simulation", out: str | Path | None = None,
             ledger: bool | None = None, db_url: str = "sqlite://") -> SimulationResult:
    """Simulate a task with ``participants`` virtual companies cut from one data set.

    Args:
        definition: the task definition (a dict or a JSON file), as for ``create_task``; ``quorum`` and
            ``max_participants`` become ``participants``.
        data: anything ``Task.join`` takes: a CSV/Parquet/NPZ path, ``"builtin:digits"``, a DataFrame
            (with ``target``), ``(x, y)`` arrays or a Dataset.
        partition: ``"iid"``, ``"column:NAME"`` (one group of that column per company, e.g. AI4I's
            ``column:Type``), ``"dirichlet:ALPHA"`` (label skew) or ``"quantity:BETA"`` (size skew).
        participants: how many virtual companies.
        seed: seeds the partition, and the task (splits, initial models) unless the definition has a seed.
        target, features, kind, missing: how to read ``data``, as for ``Task.join``.
        rounds: overrides the definition's rounds.
        backend: ``"threads"`` (a bounded pool in this process) or ``"ray"`` (Ray actors; the ``ray``
            extra).
        workers: pool threads (default: one per core, at most 4) or Ray actors (default: Ray's CPUs).
        progress: as for ``Task.aggregate``: True (a bar in Jupyter or on a terminal, lines elsewhere),
            False, ``"notebook"``, ``"terminal"`` or ``"lines"``.
        holdout: the coordinator's own held-out data, evaluated every round (anything ``data`` may be).
        min_rows: the fewest rows a virtual company gets from a skewed partition.
        task: the task's name on the simulated platform.
        out: a folder for the results (``SimulationResult.save``), if wanted.
        ledger: give the coordinator and every virtual participant an Ed25519 identity key (made in
            memory, its public half registered with the core), so the round engine writes and audits
            the members' ledger entries as in a real task, and POM 2 and 3 (which sign their key
            announcements) can run. Default: only when the definition's ``pom`` is 2 or 3; without
            keys the engine runs without the members' entries (the platform's own are written always).
            The threads backend only.
        db_url: the simulated platform's database (default: SQLite in memory, gone with the result).

    Returns a :class:`SimulationResult` (a ``werkbund.Result``): ``history``, ``participants``,
    ``plot()``, ``model``, plus ``round_times``, ``per_round_s``, ``peak_rss_mib``, ``summary()``.
    Raises ``TaskFailure`` if the task fails, as a real aggregator run does.
    """
    from werkbund.client.api import User
    from werkbund.client.python_api.progress import make_display
    from werkbund.client.python_api.session import Session
    from werkbund.client.python_api.task import Task, as_dataset
    from werkbund.platform.commands import dispatch

    began = time.perf_counter()
    if not isinstance(participants, int) or isinstance(participants, bool) or participants < 1:
        raise InvalidInput(f"participants must be a positive whole number, not {participants!r}")
    try:
        spec = parse_partition(partition)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    definition = _definition(definition)
    if rounds is not None:
        definition["rounds"] = rounds
    definition.setdefault("seed", seed)
    definition["quorum"] = participants
    definition["max_participants"] = max(participants, int(definition.get("max_participants") or 0))
    kind = kind or definition.get("kind") or "classification"

    if ledger is None:
        ledger = int(definition.get("pom") or 1) != 1
    if ledger and (backend == "ray" or getattr(backend, "remote", False)):
        raise InvalidInput("the Ray backend runs without identity keys (no ledger, POM 1 only); use the threads "
                           "backend for ledger=True or a task with pom 2 or 3")
    engine = _backend(backend, workers)  # before any work: a missing extra is told at once
    platform = SimPlatform(db_url)
    clock = RoundClock(make_display(progress))
    try:
        dataset, column = sim_data.load(data, target=target, features=features, kind=kind, missing=missing,
                                        column=spec.column)
        try:
            parts = rows_of(spec, participants, seed, dataset, column, min_rows)
        except ValueError as exc:
            raise InvalidInput(f"partition {spec}: {exc}") from None
        holdout_data = None if holdout is None else as_dataset(holdout, target=target, features=features, kind=kind)

        names = participant_names(participants)
        platform.add_virtual_users([COORDINATOR], org="simulation coordinator")
        platform.add_virtual_users(names)
        keys = identities([COORDINATOR, *names], platform) if ledger else {}
        creator = User(platform.transport(COORDINATOR), keys.get(COORDINATOR))
        creator.create_task(task, definition)
        locals_ = [dataset._take(rows) for rows in parts]
        platform.enroll(task, [(name, local.schema()) for name, local in zip(names, locals_)])
        sizes = describe(parts)
        clock.message(f"{participants} virtual participants enrolled in {task} ({spec}: {sizes['min_rows']} to "
                      f"{sizes['max_rows']} rows each, median {sizes['median_rows']:g})")
        info = dispatch(platform.service, names[0], "task_info", {"task": task})
        algorithm = checked_algorithm(info["definition"])  # as each participant's client checks it
        test_size, split_seed = info["definition"].get("test_size", 0.2), info["definition"].get("seed", 0)
        splits = [local.split(test_size, split_seed) for local in locals_]  # as Task.participate splits
        if getattr(engine, "remote", False):
            engine.build(algorithm.name, task, info, [(n, *split) for n, split in zip(names, splits)], platform)
        else:
            def control(user, command, params):
                return dispatch(platform.service, user, command, params)

            sites = []
            for name, (train, test) in zip(names, splits):
                transport = SiteTransport(name, platform.send_as, control)
                handle = VirtualParticipantHandle(User(transport, keys.get(name)), task, info)
                sites.append(Site(name, algorithm.participant(handle, train, test, progress=Quiet()), transport))
            engine.add(sites)
        platform.mailboxes.attach(task, names, engine)
        setup_s = time.perf_counter() - began

        channel = creator.aggregator(task)
        checked_algorithm(channel.definition)  # as the creator's client checks it before aggregating
        outcome = algorithm.aggregator(channel, holdout=holdout_data, progress=clock).run()
    finally:
        clock.close()
        platform.mailboxes.detach(task)
        engine.close()
    outcomes = engine.outcomes()
    facts = {
        "_platform": platform, "n_participants": participants, "partition": str(spec), "seed": seed,
        "algorithm": algorithm.name, "backend": getattr(engine, "name", type(engine).__name__),
        "workers": getattr(engine, "workers", None), "sizes": [int(len(p)) for p in parts],
        "partition_summary": describe(parts, dataset.y if dataset.kind == "classification" else None),
        "ledger": bool(ledger), "round_times": clock.round_times, "setup_s": setup_s, "wall_s": time.perf_counter() - began,
        "peak_rss_mib": peak_rss_mib(),
        "errors": {n: o["error"] for n, o in outcomes.items() if o.get("error")},
    }
    session = Session(creator, "inproc", None)
    result = SimulationResult(Task(session, task), outcome, facts)
    if out is not None:
        result.save(out)
    return result


def identities(names: list[str], platform: SimPlatform) -> dict:
    """An Ed25519 identity key per user, made in memory (never written), the public half registered
    through the core's ``set_identity_key`` as ``werkbund register`` does."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from werkbund.ledger.entries import encode_public_key

    keys = {}
    for name in names:
        keys[name] = Ed25519PrivateKey.generate()
        platform.transport(name).call("set_identity_key", public_key=encode_public_key(keys[name]))
    return keys


def checked_algorithm(definition: dict):
    """The task's algorithm as installed here; its defaults are filled into ``definition`` (as the
    API's ``aggregate`` and ``participate`` do with their channel's copy)."""
    from werkbund.client.definitions import task_algorithm

    algorithm, checked = task_algorithm(definition)
    definition.update({k: v for k, v in checked.items() if k not in definition})
    return algorithm


def rows_of(spec, participants: int, seed: int, dataset, column=None,
            min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """The row indices of every virtual participant for a parsed spec."""
    labels = dataset.y if spec.kind == "dirichlet" else None
    return partition_rows(spec, participants, seed, labels=labels, column_values=column, n_rows=len(dataset),
                     min_rows=min_rows)
