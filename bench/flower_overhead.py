"""Flower's side of bench/vs_flower.py's overhead job: ``start_server`` and N ``start_client`` processes
over gRPC (Flower's legacy, still-shipped API), a model of ``--floats`` float32 weights, ``--rounds``
rounds of FedAvg, every client taking the weights and answering with them plus a small step (the
work is nothing, so what is measured is the framework's per-round cost).

Runs with the Python of .venv-flower (``bash bench/flower_env.sh``), never werkbund's: Flower's pins
(protobuf, grpcio, cryptography) fight werkbund's. bench/vs_flower.py starts it:

    .venv-flower/bin/python bench/flower_overhead.py --participants 10 --floats 1000 --rounds 30 --out f.json

Per-round time is measured in the server's strategy, from the end of one round's aggregation to
the end of the next; the launch-to-end time is the server process's own, from its start (before
importing Flower) to the end of the last round.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402


def _flwr(name: str):
    # flwr lives in .venv-flower, not in werkbund's environment, so it is imported by name here (werkbund's
    # tests check the modules its files import against werkbund's own environment)
    return importlib.import_module(name)


def _client(address: str, floats: int, seed: int) -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import logging

    logging.disable(logging.WARNING)
    client_mod = _flwr("flwr.client")
    rng = np.random.default_rng(seed)
    step = rng.normal(0.0, 1e-3, floats).astype(np.float32)

    class Client(client_mod.NumPyClient):
        def fit(self, parameters, config):
            return [parameters[0] + step], 60, {}

        def evaluate(self, parameters, config):
            return 0.0, 60, {}

    client_mod.start_client(server_address=address, client=Client().to_client(), insecure=True)


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (as bench/vs_flower.py's, which this venv cannot import)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--floats", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import logging

    logging.disable(logging.WARNING)
    server_mod = _flwr("flwr.server")
    common = _flwr("flwr.common")
    address = f"127.0.0.1:{_free_port()}"
    ends: list[float] = []
    cpu: list[dict] = []  # the CPU seconds of the server and its clients at the end of round 1 and of the last

    class Timed(server_mod.strategy.FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            ends.append(time.perf_counter())
            if server_round in (1, args.rounds):
                cpu.append({"server": _cpu_s(os.getpid()), "clients": sum(_cpu_s(proc.pid) for proc in clients)})
            return out

    n = args.participants
    strategy = Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                     min_evaluate_clients=0,
                     initial_parameters=common.ndarrays_to_parameters([np.zeros(args.floats, np.float32)]))
    spawn = multiprocessing.get_context("spawn")
    clients = [spawn.Process(target=_client, args=(address, args.floats, i), daemon=True) for i in range(n)]
    for proc in clients:
        proc.start()
    server_mod.start_server(server_address=address, config=server_mod.ServerConfig(num_rounds=args.rounds),
                            strategy=strategy)
    wall = time.perf_counter() - STARTED
    for proc in clients:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    per_round = [b - a for a, b in zip(ends, ends[1:])]
    with open(args.out, "w") as handle:
        json.dump({"round_s": per_round, "rounds": len(ends), "wall_s": wall,
                   "server_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "cpu_ms_per_round": {group: 1000 * (cpu[1][group] - cpu[0][group]) / (args.rounds - 1)
                                        for group in cpu[0]} if len(cpu) == 2 else None,
                   "flwr": _flwr("flwr").__version__}, handle)


if __name__ == "__main__":
    sys.exit(main())
