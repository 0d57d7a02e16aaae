"""Federated k-means, logistic and linear regression and statistics against the same methods on the
pooled data (scikit-learn / NumPy), on the use-case data (sites as in ``usecases/data.py``).

    .venv/bin/python bench/tabular_algorithms.py --data-dir "$WERKBUND_DATA_DIR" [--rows 3000] [--rounds 20]

Every federation runs in one process over the in-process transport (the real platform core, a
file SQLite database, one thread per site). Printed per method: the federated figure, the central
one, and the wall time of the federation. Figures depend on the machine's load; the time includes
the platform's password hashing for the registrations.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the in-process federation runner

from inproc_federation import run_federation  # noqa: E402

from werkbund.algorithms.data.dataset import Dataset  # noqa: E402
from werkbund.usecases.data import load_scenario  # noqa: E402


def pooled(scenario, part):
    data = scenario.pooled(part)
    return data.x.astype(np.float64), data.y


def timed(definition, sites):
    started = time.perf_counter()
    creator, aggregator, outcome, results = run_federation(definition, sites)
    return creator, aggregator, time.perf_counter() - started


def bench_logistic(data_dir, rows, rounds):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scenario = load_scenario("ai4i", data_dir, rows=rows)
    definition = {"algorithm": "logistic_regression", "rounds": rounds, "epochs": 3, "batch_size": 32,
                  "learning_rate": 0.05, "round_timeout": 120}
    creator, aggregator, seconds = timed(definition, scenario.sites)
    x_test, y_test = pooled(scenario, 1)
    aggregator.holdout = scenario.pooled(1)
    federated = aggregator.evaluate()
    x, y = pooled(scenario, 0)
    scaler = StandardScaler().fit(x)
    central = LogisticRegression(max_iter=2000).fit(scaler.transform(x), y)
    central_accuracy = float((central.predict(scaler.transform(x_test)) == y_test).mean())
    majority = float((y_test == np.bincount(y.astype(int)).argmax()).mean())
    print(f"logistic_regression  AI4I machine failure, 3 companies, {rounds} rounds, "
          f"{len(x)} train / {len(x_test)} test rows: "
          f"accuracy federated {federated['accuracy']:.4f} (recall of failures {federated['recall'][1]:.3f}), "
          f"central {central_accuracy:.4f}, majority class {majority:.4f}; {seconds:.1f} s")


def bench_linear(data_dir, rows, rounds):
    from sklearn.linear_model import LinearRegression

    scenario = load_scenario("cmapss", data_dir, rows=rows)
    definition = {"algorithm": "linear_regression", "rounds": rounds, "epochs": 5, "batch_size": 64,
                  "learning_rate": 0.02, "round_timeout": 300}
    creator, aggregator, seconds = timed(definition, scenario.sites)
    x_test, y_test = pooled(scenario, 1)
    aggregator.holdout = scenario.pooled(1)
    federated = aggregator.evaluate()
    x, y = pooled(scenario, 0)
    central = LinearRegression().fit(x, y.astype(np.float64))
    error = central.predict(x_test) - y_test
    print(f"linear_regression    C-MAPSS RUL, 4 operators, {rounds} rounds, "
          f"{len(x)} train / {len(x_test)} test rows: RMSE federated "
          f"{federated['rmse']:.2f}, central least squares {np.sqrt((error ** 2).mean()):.2f}; "
          f"MAE {federated['mae']:.2f} vs {np.abs(error).mean():.2f}; {seconds:.1f} s")


def bench_kmeans(data_dir, rows, rounds, clusters=4):
    from sklearn.cluster import KMeans

    scenario = load_scenario("ai4i", data_dir, rows=rows)
    definition = {"algorithm": "kmeans", "clusters": clusters, "rounds": rounds, "round_timeout": 120}
    creator, aggregator, seconds = timed(definition, scenario.sites)
    x, _ = pooled(scenario, 0)
    z = (x - aggregator.mean) / aggregator.scale
    central = KMeans(n_clusters=clusters, n_init=10, random_state=0).fit(z)
    federated = float(((z[:, None, :] - aggregator.centroids[None]) ** 2).sum(axis=2).min(axis=1).sum())
    print(f"kmeans               AI4I features, 3 companies, k={clusters}, {len(x)} rows: inertia federated "
          f"{federated:.1f} ({len(aggregator.inertia)} Lloyd rounds, converged: "
          f"{aggregator.converged_round is not None}), scikit-learn KMeans n_init=10 {central.inertia_:.1f} "
          f"(ratio {federated / central.inertia_:.4f}); {seconds:.1f} s")


def bench_statistics(data_dir, rows):
    scenario = load_scenario("cmapss", data_dir, rows=rows)
    # all of each operator's training rows are described; its test part stays empty
    sites = {name: (train, Dataset(train.x[:0], train.y[:0], train.features, train.target, train.kind))
             for name, (train, _) in scenario.sites.items()}
    creator, aggregator, seconds = timed({"algorithm": "statistics", "bins": 20, "round_timeout": 120}, sites)
    x, _ = pooled(scenario, 0)
    worst = 0.0
    for i, name in enumerate(scenario.features):
        stats = aggregator.report["columns"][name]
        for key, value in (("mean", x[:, i].mean()), ("std", x[:, i].std())):
            if value:
                worst = max(worst, abs(stats[key] - value) / abs(value))
    print(f"statistics           C-MAPSS, 4 operators, {len(x)} rows x {x.shape[1]} columns, 20 bins: largest "
          f"relative difference of mean/std from pooled NumPy {worst:.2e}; {seconds:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("WERKBUND_DATA_DIR") or None,
                        required=not os.environ.get("WERKBUND_DATA_DIR"),
                        help="folder with ai4i2020/ and cmapss/ (default: $WERKBUND_DATA_DIR; docs/datasets.md)")
    parser.add_argument("--rows", type=int, default=3000, help="rows per site (C-MAPSS) or in all (AI4I)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each task (k-means stops when converged)")
    args = parser.parse_args()
    bench_logistic(args.data_dir, args.rows, args.rounds)
    bench_linear(args.data_dir, args.rows, args.rounds)
    bench_kmeans(args.data_dir, args.rows, args.rounds)
    bench_statistics(args.data_dir, args.rows)


if __name__ == "__main__":
    main()
