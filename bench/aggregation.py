"""Aggregation throughput of each strategy against a plain NumPy weighted sum of the same arrays.

    .venv/bin/python bench/aggregation.py                      # 10 updates of a 10M-parameter float32 model
    .venv/bin/python bench/aggregation.py --params 1000000 --updates 20 --repeat 3
    .venv/bin/python bench/aggregation.py --strategies fedavg,median \\
        --spec '{"name": "fedadam", "inner": {"name": "trimmed_mean", "beta": 0.2}}'

For every strategy one round is timed: ``begin_round``, ``add`` of every update, ``result``.
Throughput is the bytes of the updates consumed per second (MB = 1e6 bytes); the ratio is to
the NumPy baseline (``sum_k n_k / n * w_k`` accumulated in float32) measured in the same run,
best of ``--repeat``. Peak memory is what tracemalloc saw allocated during the round on top of
the inputs (NumPy reports its buffers to tracemalloc); the process's peak RSS is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc

import numpy as np

from werkbund.algorithms.strategies import build_strategy

DEFAULT = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
           {"name": "clip", "max_norm": 1.0}, "median", {"name": "trimmed_mean", "beta": 0.1},
           {"name": "krum", "f": 1}, {"name": "multi_krum", "f": 1},
           {"name": "fedadam", "inner": {"name": "trimmed_mean", "beta": 0.1}}]


def label(spec) -> str:
    if isinstance(spec, str):
        return spec
    options = ",".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "inner"))
    inner = f"({label(spec['inner'])})" if "inner" in spec else ""
    return f"{spec['name']}{'[' + options + ']' if options else ''}{inner}"


def make_model(params: int, layers: int, updates: int, seed: int):
    rng = np.random.default_rng(seed)
    sizes = [params // layers + (1 if i < params % layers else 0) for i in range(layers)]
    global_weights = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    ups = []
    for _ in range(updates):
        ups.append([g + np.float32(0.01) * rng.standard_normal(g.size, dtype=np.float32)
                    for g in global_weights])
    samples = [int(n) for n in rng.integers(100, 1000, size=updates)]
    return global_weights, ups, samples


def numpy_weighted_sum(global_weights, ups, samples):
    total = sum(samples)
    acc = [np.zeros_like(g) for g in global_weights]
    for w, n in zip(ups, samples):
        for a, x in zip(acc, w):
            a += x * np.float32(n / total)
    return acc


def strategy_round(spec):
    strategy = build_strategy(spec)

    def run(global_weights, ups, samples):
        strategy.begin_round(global_weights)
        for i, (w, n) in enumerate(zip(ups, samples)):
            strategy.add(w, n, f"p{i}")
        return strategy.result()
    return run


def measure(fn, args, repeat: int) -> tuple[float, float]:
    """Best wall time over ``repeat`` runs and the tracemalloc peak above the starting level (bytes)."""
    best = float("inf")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peak = 0
    for _ in range(repeat):
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
        del out
    tracemalloc.stop()
    return best, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=10, help="updates per round (default 10)")
    p.add_argument("--params", type=int, default=10_000_000, help="model parameters (default 10M)")
    p.add_argument("--layers", type=int, default=4, help="arrays the parameters are split into")
    p.add_argument("--repeat", type=int, default=2, help="rounds per strategy, best time kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", help="comma-separated names, default options (default: a set of specs)")
    p.add_argument("--spec", action="append", default=[], help="a JSON strategy spec (repeatable)")
    args = p.parse_args(argv)

    specs = args.strategies.split(",") if args.strategies else (DEFAULT if not args.spec else [])
    specs = list(specs) + [json.loads(s) for s in args.spec]
    global_weights, ups, samples = make_model(args.params, args.layers, args.updates, args.seed)
    model_mb = sum(g.nbytes for g in global_weights) / 1e6
    consumed_mb = model_mb * args.updates
    print(f"{args.updates} updates x {args.params:,} float32 parameters in {args.layers} arrays "
          f"= {consumed_mb:.0f} MB per round (model {model_mb:.0f} MB); best of {args.repeat}; "
          f"numpy {np.__version__}, python {sys.version.split()[0]}")

    base_t, base_peak = measure(numpy_weighted_sum, (global_weights, ups, samples), args.repeat)
    base_rate = consumed_mb / base_t
    rows = [("numpy weighted sum (baseline)", base_t, base_rate, 1.0, base_peak)]
    for spec in specs:
        t, peak = measure(strategy_round(spec), (global_weights, ups, samples), args.repeat)
        rows.append((label(spec), t, consumed_mb / t, (consumed_mb / t) / base_rate, peak))

    width = max(len(r[0]) for r in rows)
    print(f"{'strategy':<{width}}  {'time s':>7}  {'MB/s':>8}  {'x numpy':>7}  {'peak MB':>8}  "
          f"{'x model':>7}")
    for name, t, rate, ratio, peak in rows:
        print(f"{name:<{width}}  {t:7.3f}  {rate:8.0f}  {ratio:7.3f}  {peak / 1e6:8.0f}  "
              f"{peak / 1e6 / model_mb:7.2f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux
    print(f"process peak RSS {rss:.0f} MB (inputs alone {consumed_mb + model_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
