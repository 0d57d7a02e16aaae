"""werkbund against Flower on the same overhead job, in one run, with the ratio (issue 15, part a and c;
part b, the large model, is bench/vs_flower_big.py behind ``--part b``).

    bash bench/flower_env.sh                       # once: Flower in .venv-flower (its pins fight ours)
    .venv/bin/python bench/vs_flower.py            # 10 participants, 1,000 floats, 30 rounds, local and cloud
    .venv/bin/python bench/vs_flower.py --participants 2 10 50 100 --platforms local   # how cost grows
    .venv/bin/python bench/vs_flower.py --part b   # part b: a 256 MiB and a 1 GiB model (bench/vs_flower_big.py)

The job: N participant processes, a model of about 1,000 float weights, R rounds, work that is
nothing next to the framework's own cost, so the figure is each framework's per-round overhead.

- Flower (``bench/flower_overhead.py`` in .venv-flower): ``start_server`` and N ``start_client``
  processes over gRPC, FedAvg, each client answering the weights plus a fixed small step.
- werkbund: ``logistic_regression`` (99 generated features, 10 classes: 1,000 weights) on 60 rows per
  participant, one epoch a round, FedAvg, ledger on (every member has an identity key, so every
  round's entries are signed and appended), each participant a process of its own through the
  Python API; the platform a process of its own: ``werkbund local-platform`` (Flask over HTTP,
  SQLite) or ``werkbund platform serve`` (RabbitMQ on 127.0.0.1:5672 with its management plugin,
  SQLite), in a vhost of its own removed afterwards.
- ``--platforms broker``: the same round through RabbitMQ with no werkbund code (``bench/broker_floor.py``):
  one persistent, confirmed message of the model's size to N durable queues, N client processes each
  answering with one. What a round through a durable broker costs before anything is authenticated,
  stored, signed or trained: the floor under the cloud platform's round.

Figures: seconds per round after the first (median; werkbund: the aggregator's ``duration_s`` of
each round; Flower: end of one aggregation to the end of the next) and launch-to-end wall time
(werkbund: from starting the participant processes to the aggregator's end, platform start and
registration excluded; Flower: the server process's whole life). Ratio: werkbund over Flower, so
1.0 means as fast as Flower and below 1 faster. Under each werkbund line: the CPU a round took in each
kind of process (the aggregator, the platform, the participants, RabbitMQ's Erlang VM in the cloud
runs), from /proc between the end of round 1 and the end of the last, and how busy the machine's cores
were meanwhile: on a machine whose cores are all in use, a round is as long as the work of its busiest
part, and the local platform is one process (its routes take turns on one interpreter). Flower's line
gives the same for its server and its clients, so the CPU a round of the two compares as well.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WERKBUND = str(Path(sys.executable).with_name("werkbund"))
FEATURES, CLASSES, ROWS = 99, 10, 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path) -> dict:
    return {**os.environ, "WERKBUND_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
            "WERKBUND_KEY_PASSPHRASE": "bench-passphrase"}


def _site_data(index: int, seed: int):
    """60 rows of a 10-class problem with 99 features, the same generator for every site (so FedAvg fits)."""
    import numpy as np

    from werkbund.algorithms.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (CLASSES, FEATURES))
    local = np.random.default_rng(seed + 1 + index)
    y = local.integers(0, CLASSES, ROWS)
    x = centers[y] + local.normal(0.0, 1.0, (ROWS, FEATURES))
    return Dataset(x.astype("float64"), y, [f"f{i}" for i in range(FEATURES)], "label")


@contextmanager
def local_platform(home: Path):
    port = _free_port()
    log = home / "platform.log"
    proc = subprocess.Popen([WERKBUND, "local-platform", "--port", str(port)], env=_env(home),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_for(proc, log, f"listening on http://127.0.0.1:{port}")
        yield {"platform": "local", "url": f"http://127.0.0.1:{port}"}, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def cloud_platform(home: Path):
    from werkbund.platform.amqp.broker_admin import BrokerAdmin

    vhost = f"wb-bench-{uuid.uuid4().hex[:8]}"
    management = "http://guest:guest@127.0.0.1:15672"
    proc = subprocess.Popen([WERKBUND, "platform", "serve", "--broker", f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                             "--db", f"sqlite:///{home / 'cloud.db'}", "--management", management], env=_env(home),
                            stdout=open(home / "platform.log", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    admin = BrokerAdmin(management, vhost)
    try:
        _wait_for(proc, home / "platform.log", "serving on")
        yield {"platform": "cloud", "url": f"amqp://127.0.0.1:5672/{vhost}"}, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for account in admin.broker_users():
            admin.delete_broker_user(account)
        admin.delete_vhost()


def _wait_for(proc, log: Path, mark: str) -> None:
    """Until the platform's log (a file: a pipe nobody reads would block its logging) says ``mark``."""
    while mark not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError("the platform did not start:\n" + log.read_text()[-4000:])
        time.sleep(0.1)


def _participant(where: dict, name: str, raw: bytes, index: int, seed: int, home: str) -> None:
    os.environ.update({"WERKBUND_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"})
    from werkbund.algorithms.builtin.linear_models import LogisticRegressionParticipant
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from werkbund.client.api import connect

    user = connect(user=name, password=f"{name}-password",
                   identity=Ed25519PrivateKey.from_private_bytes(raw) if raw else None, **where)
    data = _site_data(index, seed)
    train, test = data.split(0.2, seed)
    LogisticRegressionParticipant(user.participant("overhead"), train, test).run()


class _CpuWatch:
    """The CPU each process takes from the end of round 1 to the end of the last round (``Progress`` hooks of
    the aggregator), per round in ms: where a round's work goes on a machine whose cores are all busy."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids, self._first, self.per_round_ms = pids, None, {}

    def snapshot(self) -> dict:
        taken = {group: sum(_cpu_s(pid) for pid in pids) for group, pids in self.pids.items()}
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        taken["_busy"], taken["_all"] = sum(fields) - fields[3] - fields[4], sum(fields)
        return taken

    def round_done(self, number: int, total: int) -> None:
        if number == 0:
            self._first = self.snapshot()
        elif number == total - 1 and self._first:
            before, after = self._first, self.snapshot()
            rounds = total - 1
            self.per_round_ms = {group: 1000 * (after[group] - before[group]) / rounds for group in self.pids}
            self.per_round_ms["machine busy %"] = 100 * (after["_busy"] - before["_busy"]) / (after["_all"] - before["_all"])


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads) so far; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM on this machine (its CPU in the cloud runs), found by name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if "(beam.smp)" in stat.read_text():
                found.append(int(stat.parent.name))
        except OSError:
            pass
    return found


def run_werkbund(kind: str, participants: int, rounds: int, seed: int = 0, ledger: bool = True) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from werkbund.algorithms.builtin.linear_models import LogisticRegressionAggregator
    from werkbund.algorithms.engine.progress import Progress
    from werkbund.client.api import register

    with tempfile.TemporaryDirectory(prefix="werkbund-vs-flower-") as tmp:
        home = Path(tmp)
        starter = local_platform if kind == "local" else cloud_platform
        with starter(home) as (where, platform_pid):
            os.environ.update(_env(home))
            creator = register("creator", "creator-password", "acme", identity=Ed25519PrivateKey.generate(), **where)
            if not ledger:  # the experiment: no identity key on the creator's handle, so no entry is signed
                creator.identity = None
            creator.create_task("overhead", {"algorithm": "logistic_regression", "quorum": participants,
                                             "rounds": rounds, "epochs": 1, "batch_size": 32, "seed": seed,
                                             "round_timeout": 600})
            spawn = multiprocessing.get_context("spawn")
            procs, handles = [], [creator]
            for i in range(participants):
                name = f"site{i:03d}"
                identity = Ed25519PrivateKey.generate()
                raw = identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
                user = register(name, f"{name}-password", name, identity=identity, **where)
                user.join_task("overhead", _site_data(i, seed).schema())
                handles.append(user)
                procs.append(spawn.Process(target=_participant, args=(where, name, raw if ledger else b"", i, seed, str(home)),
                                           daemon=True))
            started = time.perf_counter()
            for proc in procs:
                proc.start()
            watch = _CpuWatch({"aggregator": [os.getpid()], "platform": [platform_pid],
                               "participants": [proc.pid for proc in procs],
                               **({"broker": _broker_pids()} if kind == "cloud" else {})})

            class Watched(Progress):
                def round_done(self, number, total, summary):
                    watch.round_done(number, total)

            outcome = LogisticRegressionAggregator(creator.aggregator("overhead"), progress=Watched()).run()
            wall = time.perf_counter() - started
            for proc in procs:
                proc.join(timeout=60)
            platform_peak = _peak_rss_mib(platform_pid)
            for handle in handles:
                handle.close()
    durations = [h["duration_s"] for h in outcome["history"]]
    return {"round_s": durations, "median_round_s": statistics.median(durations[1:] or durations), "wall_s": wall,
            "rounds": len(durations), "platform_peak_rss_mib": platform_peak,
            "accuracy": outcome["history"][-1].get("accuracy"), "cpu_ms_per_round": watch.per_round_ms}


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_flower(python: str, participants: int, rounds: int) -> dict | None:
    if not Path(python).exists():
        return None
    with tempfile.TemporaryDirectory(prefix="flower-overhead-") as tmp:
        out = Path(tmp) / "flower.json"
        subprocess.run([python, str(ROOT / "bench" / "flower_overhead.py"), "--participants", str(participants),
                        "--floats", str(FEATURES * CLASSES + CLASSES), "--rounds", str(rounds), "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        figures = json.loads(out.read_text())
    figures["median_round_s"] = statistics.median(figures["round_s"])
    return figures


def _print_cpu(label: str, cpu: dict | None, n: int) -> None:
    """The CPU a round of each kind of process, and the total (how much work a round is on this machine)."""
    if not cpu:
        return
    groups = {group: value for group, value in cpu.items() if group != "machine busy %"}
    print(f"        {label} CPU a round (ms): " + ", ".join(
        f"{group} {value:.1f}" + (f" ({value / n:.1f} each)" if group in ("participants", "clients") else "")
        for group, value in groups.items()) + f"; all {sum(groups.values()):.1f}"
        + (f"; the machine's cores {cpu['machine busy %']:.0f} % busy" if "machine busy %" in cpu else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b"), default="a",
                        help="a (and c, its --participants sweep): the overhead job; b: the large-model round")
    parser.add_argument("--participants", type=int, nargs="+", help="default: 10 (part a), 2 (part b)")
    parser.add_argument("--rounds", type=int, help="default: 30 (part a), 3 (part b)")
    parser.add_argument("--platforms", nargs="*", choices=("local", "cloud", "broker"), default=["local", "cloud"],
                        help="broker: a bare round through RabbitMQ, no werkbund code (bench/broker_floor.py)")
    parser.add_argument("--flower-python", default=str(ROOT / ".venv-flower" / "bin" / "python"))
    parser.add_argument("--no-ledger", action="store_true",
                        help="werkbund without identity keys after joining (no entry signed): what the ledger costs")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024],
                        help="part b: model sizes in MiB, smallest first (a size runs only if the one before finished)")
    parser.add_argument("--flower", nargs="*", choices=("legacy", "deployment"), default=["legacy", "deployment"],
                        help="part b: Flower runtimes to run (none: werkbund only)")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0,
                        help="part b: stop the run's processes once the machine's used memory passes this")
    args = parser.parse_args()
    if args.part == "b":
        import vs_flower_big

        return vs_flower_big.main(args)
    args.participants, args.rounds = args.participants or [10], args.rounds or 30
    rows = []
    for n in args.participants:
        flower = run_flower(args.flower_python, n, args.rounds)
        if flower is None:
            print(f"(no Flower at {args.flower_python}: run `bash bench/flower_env.sh` for its figures)")
        else:
            _print_cpu("Flower", flower.get("cpu_ms_per_round"), n)
        for kind in args.platforms:
            if kind == "broker":
                from broker_floor import run_broker_floor

                figures = run_broker_floor(n, args.rounds, size=4 * (FEATURES * CLASSES + CLASSES))
            else:
                figures = run_werkbund(kind, n, args.rounds, ledger=not args.no_ledger)
            ratio = figures["median_round_s"] / flower["median_round_s"] if flower else None
            rows.append({"participants": n, "platform": kind, "werkbund": figures, "flower": flower, "ratio": ratio})
            print(f"N={n:4d} {kind:5s}  {'bare RabbitMQ' if kind == 'broker' else 'werkbund'} "
                  f"{figures['median_round_s']:.3f} s/round, wall {figures['wall_s']:.1f} s, "
                  + (f"platform peak {figures['platform_peak_rss_mib']:.0f} MiB | "
                     if figures["platform_peak_rss_mib"] else "no platform | ")
                  + (f"Flower {flower['median_round_s']:.4f} s/round, wall {flower['wall_s']:.1f} s | "
                     f"werkbund/Flower {ratio:.1f}x" if flower else "Flower -"), flush=True)
            _print_cpu(kind, figures["cpu_ms_per_round"], n)
    print("\n| N | platform | werkbund s/round | werkbund wall s | Flower s/round | Flower wall s | werkbund / Flower "
          "| growth from the smallest N: werkbund | Flower |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        w, f = row["werkbund"], row["flower"]
        first = next(r for r in rows if r["platform"] == row["platform"])  # (issue 15: at most 10x from 10 to 100)
        grown = w["median_round_s"] / first["werkbund"]["median_round_s"]
        flower_grown = f["median_round_s"] / first["flower"]["median_round_s"] if f and first["flower"] else None
        print(f"| {row['participants']} | {row['platform']} | {w['median_round_s']:.3f} | {w['wall_s']:.1f} | "
              + (f"{f['median_round_s']:.4f} | {f['wall_s']:.1f} | {row['ratio']:.1f}x |" if f else "- | - | - |")
              + f" {grown:.1f}x | " + (f"{flower_grown:.1f}x |" if flower_grown else "- |"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
