"""What the aggregator's checkpoint after every round costs: seconds to save and load, and bytes on disk,
for models of a given number of parameters with FedAdam's state (two moments per weight, float64).

    .venv/bin/python bench/checkpoint.py --params 100000 1000000 10000000
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from werkbund.algorithms.engine.checkpoint import Checkpoint
from werkbund.algorithms.strategies import build_strategy


def layers(n_params: int) -> list[np.ndarray]:
    """Dense-like layers (a square-ish kernel and a bias) adding up to about ``n_params``."""
    side = int(np.sqrt(n_params / 2))
    return [np.random.default_rng(i).normal(0, 0.1, shape).astype(np.float32)
            for i, shape in enumerate([(side, side), (side,), (side, side), (side,)])]


def measure(n_params: int, repeat: int) -> dict:
    weights = layers(n_params)
    strategy = build_strategy("fedadam")
    strategy.begin_round(weights)
    strategy.add([w + 0.01 for w in weights], 10)
    strategy.result()
    state = strategy.state_dict()
    history = [{"round": r, "loss": 0.5, "accuracy": 0.9, "participants": {"a": {"loss": 0.5}}} for r in range(50)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Checkpoint(tmp, "bench", {"rounds": 100})
        started = time.perf_counter()
        for number in range(repeat):
            checkpoint.save(number, weights, state, {"history": history})
        save_s = (time.perf_counter() - started) / repeat
        started = time.perf_counter()
        for _ in range(repeat):
            checkpoint.load()
        load_s = (time.perf_counter() - started) / repeat
        size = sum(p.stat().st_size for p in checkpoint.directory.iterdir())
    return {"params": sum(w.size for w in weights), "save_s": save_s, "load_s": load_s, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'parameters':>12} {'save s':>8} {'load s':>8} {'MB on disk':>11}")
    for n in args.params:
        r = measure(n, args.repeat)
        print(f"{r['params']:>12} {r['save_s']:>8.3f} {r['load_s']:>8.3f} {r['bytes'] / 1e6:>11.1f}")


if __name__ == "__main__":
    main()
