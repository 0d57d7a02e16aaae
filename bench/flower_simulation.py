"""Flower's side of bench/simulation.py: the same federated logistic regression with Flower's
``run_simulation`` (Ray backend), on the partitions bench/simulation.py wrote.

Runs with the Python of .venv-flower (``bash bench/flower_env.sh``), never werkbund's: Flower's
pins (protobuf 6, an older Ray and cryptography) fight werkbund's. bench/simulation.py starts it:

    .venv-flower/bin/python bench/flower_simulation.py --parts PARTS_DIR --rounds 6 --out times.json

What each virtual client computes per round, as werkbund's ``logistic_regression`` participant does:
take the global weights, evaluate them on its own test rows (softmax, accuracy, cross-entropy,
confusion matrix), train ``epochs`` epochs of mini-batch Adam (batch ``batch_size``, the Adam
moments kept from round to round in Flower's ``context.state``) on its own standardized train
rows, and reply with the new weights, its sample count and its figures. The server averages the
weights by sample count (Flower's message-API FedAvg; its separate evaluation round switched off,
since every reply already carries the evaluation). Per-round time is measured in the ServerApp from
the end of one aggregation to the end of the next.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
import types

import numpy as np

# flwr lives in .venv-flower, not in werkbund's environment, so it is imported by name here (werkbund's
# tests check the modules its files import against werkbund's own environment)
_app = importlib.import_module("flwr.app")
ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict = (
    _app.ArrayRecord, _app.ConfigRecord, _app.Context, _app.Message, _app.MetricRecord, _app.RecordDict)
ClientApp = importlib.import_module("flwr.clientapp").ClientApp
_serverapp = importlib.import_module("flwr.serverapp")
ServerApp, Grid = _serverapp.ServerApp, _serverapp.Grid
FedAvg = importlib.import_module("flwr.serverapp.strategy").FedAvg
run_simulation = importlib.import_module("flwr.simulation").run_simulation

def partition(pid: int) -> tuple:
    """This client's (x_train, y_train, x_test, y_test), read from its own file once per Ray worker.

    The cache lives in ``sys.modules``, not in a global of this script: Flower ships the ClientApp to
    its actors pickled by value with every message, so a global here would start empty each time."""
    cache = sys.modules.setdefault("_werkbund_bench_partitions", types.ModuleType("_werkbund_bench_partitions"))
    parts = cache.__dict__.setdefault("parts", {})
    if pid not in parts:
        with np.load(os.path.join(os.environ["WB_FLOWER_PARTS"], f"{pid}.npz"), allow_pickle=False) as npz:
            parts[pid] = (npz["xtr"], npz["ytr"], npz["xte"], npz["yte"])
    return parts[pid]


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(w, b, x, y, classes):
    if not len(y):
        return {}
    p = softmax(x @ w + b)
    predicted = p.argmax(axis=1)
    confusion = np.bincount(y * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())
    return {"accuracy": float((predicted == y).mean()), "loss": loss, "n_test": len(y),
            "confusion_trace": int(np.trace(confusion))}


client = ClientApp()


@client.train()
def train(msg, context):
    pid = int(context.node_config["partition-id"])
    x, y, xt, yt = partition(pid)
    cfg = msg.content["config"]
    w, b = (a.copy() for a in msg.content["arrays"].to_numpy_ndarrays())
    figures = evaluate(w, b, xt, yt, w.shape[1])
    lr, epochs, batch = float(cfg["lr"]), int(cfg["epochs"]), int(cfg["batch"])
    if "adam" in context.state:  # Adam's moments and step count, kept from round to round
        mw, mb, vw, vb = context.state["adam"].to_numpy_ndarrays()
        t = int(context.state["adam_t"]["t"])
    else:
        mw, mb, vw, vb, t = np.zeros_like(w), np.zeros_like(b), np.zeros_like(w), np.zeros_like(b), 0
    rng = np.random.default_rng(int(cfg["seed"]) + len(x) + 7919 * int(cfg["server-round"]))
    n, losses = len(x), []
    for _ in range(epochs):
        order = rng.permutation(n)
        for first in range(0, n, batch):
            rows = order[first:first + batch]
            p = softmax(x[rows] @ w + b)
            yy = y[rows]
            losses.append(float(-np.log(np.clip(p[np.arange(len(yy)), yy], 1e-12, 1.0)).mean()) * len(rows))
            p[np.arange(len(yy)), yy] -= 1.0
            p /= len(yy)
            gw, gb = x[rows].T @ p, p.sum(axis=0)
            t += 1
            correction = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            for param, g, m, v in ((w, gw, mw, vw), (b, gb, mb, vb)):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                param -= lr * correction * m / (np.sqrt(v) + 1e-7)
    context.state["adam"] = ArrayRecord([mw, mb, vw, vb])
    context.state["adam_t"] = ConfigRecord({"t": t})
    metrics = {"num-examples": n, "train_loss": float(sum(losses) / max(n, 1))}
    metrics.update({k: v for k, v in figures.items() if isinstance(v, (int, float))})
    return Message(RecordDict({"arrays": ArrayRecord([w, b]), "metrics": MetricRecord(metrics)}), reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's aggregation ends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ends: list[float] = []
        self.started = time.perf_counter()

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies = len(replies)
        out = super().aggregate_train(server_round, replies)
        self.ends.append(time.perf_counter())
        return out


def make_server(n: int, rounds: int, features: int, classes: int, config: dict, out: str):
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                               min_available_nodes=n)
        initial = ArrayRecord([np.zeros((features, classes)), np.zeros(classes)])
        started = time.perf_counter()
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds,
                                train_config=ConfigRecord(config))
        marks = [started, *strategy.ends]
        w, b = result.arrays.to_numpy_ndarrays()
        last = result.train_metrics_clientapp.get(rounds)
        with open(out, "w") as handle:
            json.dump({"round_times": [b2 - a for a, b2 in zip(marks, marks[1:])], "replies_last_round": strategy.replies,
                       "accuracy_last_round": float(last["accuracy"]) if last and "accuracy" in last else None,
                       "weights_norm": float(np.linalg.norm(w))}, handle)

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", required=True,
                        help="The folder bench/simulation.py wrote: meta.json and one I.npz per client (xtr, ytr, xte, yte).")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray (default: all).")
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="CPUs per virtual client, Flower's client_resources (default 1: one actor per core).")
    parser.add_argument("--out", required=True, help="JSON file for the per-round times.")
    args = parser.parse_args()
    os.environ["WB_FLOWER_PARTS"] = os.path.abspath(args.parts)  # Ray's workers inherit it
    with open(os.path.join(args.parts, "meta.json")) as handle:
        meta = json.load(handle)
    n, features, classes = meta["n"], meta["features"], meta["classes"]
    config = {"lr": args.learning_rate, "epochs": args.epochs, "batch": args.batch_size, "seed": args.seed}
    began = time.perf_counter()
    run_simulation(server_app=make_server(n, args.rounds, features, classes, config, args.out), client_app=client,
                   num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.cpus, "include_dashboard": False}})
    with open(args.out) as handle:
        facts = json.load(handle)
    facts.update(wall_s=time.perf_counter() - began, participants=n, driver_peak_rss_mib=(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), flwr=importlib.import_module("flwr").__version__)
    with open(args.out, "w") as handle:
        json.dump(facts, handle)


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # a crashed simulation runtime leaves Flower's server thread waiting: exit anyway
        import traceback

        traceback.print_exc()
        os._exit(1)
