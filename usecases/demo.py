"""`werkbund demo`: a federated task end to end on built-in data, on a real local platform.

The platform runs in this process (uvicorn on a free port, SQLite in the
output folder); each participant is a separate process that talks to it over
HTTP, like the aggregator in this process does.
"""
from __future__ import annotations

import multiprocessing
import secrets
import time
from pathlib import Path

import numpy as np


def _participant(url: str, user: str, password: str, task: str, dataset: str, shard: str, out: str) -> None:
    from werkbund.algorithms.data.loading import load_dataset
    from werkbund.algorithms.registry import get_algorithm
    from werkbund.client.api import connect
    from werkbund.client.cli.common import setup_logging

    setup_logging()
    handle = connect(platform="local", url=url, user=user, password=password).participant(task)
    data = load_dataset(f"builtin:{dataset}", shard=shard)
    train, test = data.split(handle.definition["test_size"], handle.definition["seed"])
    get_algorithm(handle.definition["algorithm"]).participant(handle, train, test, out_model=out).run()


def run_demo(participants: int = 3, rounds: int = 5, epochs: int = 2, dataset: str = "digits",
             out: Path = Path("werkbund-demo")) -> dict:
    from rich.console import Console
    from rich.table import Table

    from werkbund.algorithms.data.loading import load_dataset
    from werkbund.algorithms.plots import plot_accuracy
    from werkbund.algorithms.registry import get_algorithm
    from werkbund.client.api import register
    from werkbund.local_platform.server import LocalPlatformServer
    from werkbund.platform.db import sqlite_url

    if participants < 1:
        raise ValueError("the demo needs at least one participant")
    console = Console(stderr=True)
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "platform.sqlite"
    db.unlink(missing_ok=True)
    server = LocalPlatformServer(sqlite_url(db)).start()
    console.print(f"local platform on {server.url}")
    passwords = {name: secrets.token_urlsafe(12) for name in ["alice"] + [f"site{i + 1}" for i in range(participants)]}
    try:
        alice = register("alice", passwords["alice"], "OEM Maschinenbau", url=server.url)
        task = "demo-digits" if dataset == "digits" else "demo-mnist"
        alice.create_task(task, {"algorithm": "neural_network", "quorum": participants, "rounds": rounds,
                                 "epochs": epochs, "batch_size": 32, "learning_rate": 0.002, "round_timeout": 300,
                                 "description": f"werkbund demo on {dataset}"})
        names = [n for n in passwords if n != "alice"]
        context = multiprocessing.get_context("spawn")
        procs = []
        for i, name in enumerate(names):
            user = register(name, passwords[name], f"plant {i + 1}", url=server.url)
            data = load_dataset(f"builtin:{dataset}", shard=f"{i + 2}/{participants + 1}")
            user.join_task(task, data.schema())
            proc = context.Process(target=_participant, name=name,
                                   args=(server.url, name, passwords[name], task, dataset,
                                         f"{i + 2}/{participants + 1}", str(out / f"{name}.keras")))
            proc.start()
            procs.append(proc)
        holdout = load_dataset(f"builtin:{dataset}", shard=f"1/{participants + 1}")
        console.print(f"{participants} participants joined; the aggregator holds out {len(holdout)} rows")
        channel = alice.aggregator(task)
        outcome = get_algorithm("neural_network").aggregator(channel, holdout=holdout).run()
        for proc in procs:
            proc.join(timeout=120)
        failed = [p.name for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"participant process(es) {', '.join(failed)} failed")
        model_bytes, _ = alice.get_model(task)
        model_path = out / "final-model.keras"
        model_path.write_bytes(model_bytes)
        history = outcome["history"]
        plot = plot_accuracy(history, out / "accuracy.png", f"werkbund demo ({dataset}): accuracy per round")
        table = Table("round", "participants' loss", "participants' accuracy", "aggregator held-out accuracy")
        for h in history:
            table.add_row(str(h["round"] + 1), f"{h.get('loss', float('nan')):.4f}",
                          f"{h.get('accuracy', float('nan')):.4f}",
                          f"{h.get('aggregator', {}).get('accuracy', float('nan')):.4f}")
        Console().print(table)
        final = history[-1]
        return {"wall_s": time.monotonic() - started, "accuracy": float(np.round(final["accuracy"], 4)),
                "loss": float(np.round(final["loss"], 4)),
                "rounds": len(history), "model": str(model_path), "plot": plot, "history": history}
    finally:
        server.stop()
