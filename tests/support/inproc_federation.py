"""A whole federation in one process for the algorithm tests: a creator running the aggregator and
one thread per participant, all over the in-process transport (the real platform core)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from werkbund.algorithms.engine.progress import Progress
from werkbund.algorithms.registry import get_algorithm
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform


def run_federation(definition: dict, sites: dict, holdout=None, test_size: float = 0.2, seed: int = 0,
                   participant_options: dict | None = None, out_dir=None, attacks: dict | None = None):
    """Run a task to its end. ``sites`` maps a user name to its Dataset (split here) or (train, test).
    ``attacks`` maps a site to a function of its trained weights that returns what it sends instead
    (the real participant trains; the function stands for a hostile one that tampers with the result).

    Returns (creator handle, aggregator object, aggregator outcome, {site: participant result}).
    """
    # a file database: an in-memory SQLite shares one connection between the threads, and concurrent
    # commits from fast (NumPy) participants then fail with "cannot commit - no transaction is active"
    folder = Path(tempfile.mkdtemp(prefix="wb-inproc-"))
    atexit.register(shutil.rmtree, folder, True)
    platform = InProcPlatform(f"sqlite:///{folder / 'platform.db'}")
    creator = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    creator.create_task("t", dict(definition, quorum=len(sites)))
    algorithm = get_algorithm(definition["algorithm"])
    results, threads = {}, []
    for name, data in sites.items():
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform)
        train, test = data if isinstance(data, tuple) else data.split(test_size, seed)
        user.join_task("t", (data[0] if isinstance(data, tuple) else data).schema())
        options = (participant_options or {}).get(name, {})
        out = None if out_dir is None else str(out_dir / f"{name}.model")

        def work(handle=user.participant("t"), train=train, test=test, name=name, options=options, out=out):
            try:
                participant = algorithm.participant(handle, train, test, out_model=out, **options)
                attack = (attacks or {}).get(name)
                if attack is not None:
                    honest = participant.train
                    participant.train = lambda message: (lambda w, h: (attack(w), h))(*honest(message))
                results[name] = participant.run()
            except Exception as exc:  # the test looks at it
                results[name] = exc

        threads.append(threading.Thread(target=work, daemon=True))
    for thread in threads:
        thread.start()
    aggregator = algorithm.aggregator(creator.aggregator("t"), holdout=holdout)
    try:
        outcome = aggregator.run()
    finally:
        for thread in threads:
            thread.join(timeout=60)
    return creator, aggregator, outcome, results


class CrashAfter(Progress):
    """Stands for a Ctrl-C right after round ``number`` (0-based) was aggregated and checkpointed."""

    def __init__(self, number: int):
        self.number = number

    def round_done(self, number, total, summary):
        if number == self.number:
            raise KeyboardInterrupt
