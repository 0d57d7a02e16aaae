"""One federated task over a set of sites, run through a real platform, for use cases and benchmarks.

A creator and one user per site register on the platform; every site joins with the schema
of its own data and runs the algorithm's participant in its own thread, talking to the
platform like any other client (HTTP for the local platform); the creator runs the
aggregator in the calling thread. Nothing but the platform connects them: the sites' rows
stay in their threads, and the aggregator sees only what the messages carry.

``platform="local"`` (the default) starts a local platform server (uvicorn, SQLite in
``workdir``) on a free port; ``platform="inproc"`` uses the in-process platform core with the
same mailboxes, without HTTP (for fast tests).
"""
from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("werkbund.usecase")


@contextmanager
def running_platform(platform: str, workdir: Path):
    """Yield the keyword arguments that ``register`` needs to reach a fresh platform."""
    if platform == "inproc":
        from werkbund.client.transports.inproc import InProcPlatform

        yield {"platform": "inproc", "inproc": InProcPlatform()}
        return
    if platform != "local":
        raise ValueError(f"unknown platform {platform!r}: use local or inproc")
    from werkbund.local_platform.server import LocalPlatformServer
    from werkbund.platform.db import sqlite_url

    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "platform.sqlite"
    db.unlink(missing_ok=True)
    server = LocalPlatformServer(sqlite_url(db)).start()
    log.info("local platform on %s (database %s)", server.url, db)
    try:
        yield {"platform": "local", "url": server.url}
    finally:
        try:
            server.stop()
        except OSError as exc:  # the run is over and its results are in; a daemon thread is left behind at worst
            log.warning("the local platform did not shut down cleanly: %s", exc)


def load_model_bytes(data: bytes):
    """A Keras model from the bytes of a .keras file (safe mode: Keras classes only)."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        return keras.saving.load_model(path, safe_mode=True, compile=False)


def run_federated(task: str, sites: dict, definition: dict, workdir: Path, platform: str = "local",
                  schema_overrides: dict | None = None, holdout=None, progress=None,
                  algorithm: str = "neural_network") -> dict:
    """Run one task: ``sites`` maps a site name to its (train, test) datasets.

    Returns the aggregator's per-round history, the final model (loaded), the participants'
    results and the wall time. ``schema_overrides`` (e.g. the agreed ``classes``) is merged into
    every site's schema; ``holdout`` is the creator's own evaluation data, if any.
    """
    from werkbund.algorithms.registry import get_algorithm
    from werkbund.client.api import register

    algo = get_algorithm(algorithm)
    definition = dict(definition, algorithm=algorithm, quorum=len(sites), min_updates=len(sites))
    started = time.monotonic()
    results, errors = {}, {}
    with running_platform(platform, workdir) as where:
        creator = register("creator", secrets.token_urlsafe(16), "use-case coordinator", **where)
        creator.create_task(task, definition)
        threads = []
        for name, (train, test) in sites.items():
            user = register(name, secrets.token_urlsafe(16), f"site {name}", **where)
            schema = dict(train.schema(), **(schema_overrides or {}))
            user.join_task(task, schema)

            def participate(user=user, name=name, train=train, test=test):
                try:
                    results[name] = algo.participant(user.participant(task), train, test).run()
                except BaseException as exc:  # reported by the caller; the aggregator sees the silence
                    log.exception("site %s failed", name)
                    errors[name] = f"{type(exc).__name__}: {exc}"
                finally:
                    user.close()

            threads.append(threading.Thread(target=participate, name=f"site-{name}", daemon=True))
        for thread in threads:
            thread.start()
        try:
            outcome = algo.aggregator(creator.aggregator(task), holdout=holdout, progress=progress).run()
        finally:
            for thread in threads:
                thread.join(timeout=120)
        model_bytes, meta = creator.get_model(task)
        creator.close()
    if errors:
        raise RuntimeError(f"site(s) failed: {errors}")
    return {"history": outcome["history"], "model": load_model_bytes(model_bytes), "meta": meta.get("meta", {}),
            "participants": results, "wall_s": time.monotonic() - started, "model_bytes": len(model_bytes)}
