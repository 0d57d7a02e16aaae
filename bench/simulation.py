"""`werkbund.simulate` at 10, 100 and 1,000 virtual companies, and Flower's simulation on the same data.

    .venv/bin/python bench/simulation.py --data-dir $WERKBUND_DATA_DIR
    .venv/bin/python bench/simulation.py --participants 10 100 1000 --rounds 6 --mlp-participants 100
    bash bench/flower_env.sh && .venv/bin/python bench/simulation.py     # with Flower's figures and the ratio
    .venv/bin/python bench/simulation.py --ray        # also werkbund's Ray backend (the ray extra) at the largest N

Data: the AI4I 2020 rows ($WERKBUND_DATA_DIR/ai4i2020/ai4i2020.csv, 10,000 rows, the five numeric
features, target ``Machine failure``), cut into N parts (``--partition``, default IID) with the
task's seed, each part split 80/20 into train and test rows as a participant splits its data.

For every N, one ``werkbund.simulate`` in a fresh process (so its peak memory is its own):
``logistic_regression`` (NumPy softmax regression, local mini-batch Adam, FedAvg), the threads
backend. Then, with ``--mlp-participants``, the ``neural_network`` algorithm (a Keras MLP, 64 and
32 hidden units) at that N. Reported: seconds per round after the first (the mean of rounds 2..R,
each from the broadcast of the global model to the recorded aggregate), the first round and the
set-up, and the peak resident memory of the process tree (the sum of every process's own peak
would be higher; this is the largest sum seen, sampled every 0.1 s, and it counts shared pages once
per process).

Flower (when ``.venv-flower`` exists: ``bash bench/flower_env.sh``; or ``--flower-python``): the
same partitions and splits, standardized with the pooled train moments (what werkbund's federated
standardization computes), written to one .npz per client; ``bench/flower_simulation.py`` runs Flower's
``run_simulation`` (Ray backend, one CPU per virtual client, so one actor per core) with the same
model, optimizer, epochs, batch size and rounds, in its own venv. The ratio is Flower's seconds
per round over werkbund's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AI4I_TARGET = "Machine failure"


# ------------------------------------------------------------------------------ memory of a process tree
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kib(pid)
        todo.extend(tree.get(pid, []))
    return total / 1024


def run_measured(command: list[str], env: dict, timeout: float, log: Path) -> tuple[int, float]:
    """Run ``command``; return (exit code, peak MiB of its process tree)."""
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=ROOT)
        peak = 0.0
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss_mib(proc.pid))
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        finally:
            stop.set()
            sampler.join()
    return code, peak


# ---------------------------------------------------------------------------------- the werkbund side
def definition(args, algorithm: str, rounds: int) -> dict:
    return {"algorithm": algorithm, "rounds": rounds, "epochs": args.epochs, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "seed": args.seed}


def child(args) -> None:
    """One simulation in this process; its facts as one JSON line on stdout."""
    import logging

    logging.getLogger("werkbund").setLevel(logging.WARNING)
    import werkbund
    from werkbund.usecases.data import AI4I_FEATURES

    rounds = args.mlp_rounds if args.child == "neural_network" else args.rounds
    result = werkbund.simulate(definition(args, args.child, rounds), ai4i_path(args), target=AI4I_TARGET,
                               features=AI4I_FEATURES, partition=args.partition, participants=args.n, seed=args.seed,
                               workers=args.workers, backend=args.backend, progress=False)
    last = result.history.iloc[-1]
    print(json.dumps({"round_times": result.round_times, "per_round_s": result.per_round_s, "setup_s": result.setup_s,
                      "wall_s": result.wall_s, "peak_rss_mib": result.peak_rss_mib, "errors": len(result.errors),
                      "reported_last_round": int(last["n_reported"]), "accuracy": float(last.get("accuracy")),
                      "workers": result.workers}))


def werkbund_run(args, algorithm: str, n: int, folder: Path, backend: str = "threads") -> dict:
    command = [sys.executable, __file__, "--child", algorithm, "--n", str(n), "--backend", backend, *passthrough(args)]
    log = folder / f"werkbund-{algorithm}-{backend}-{n}.log"
    code, peak = run_measured(command, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), args.timeout, log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        raise SystemExit(f"werkbund simulation of {n} participants failed (exit {code}); see {log}:\n"
                         + log.read_text()[-3000:])
    return dict(json.loads(lines[-1]), tree_peak_mib=peak)


def passthrough(args) -> list[str]:
    out = ["--rounds", str(args.rounds), "--mlp-rounds", str(args.mlp_rounds), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
           "--partition", args.partition, "--data-dir", str(args.data_dir)]
    if args.workers:
        out += ["--workers", str(args.workers)]
    return out


def ai4i_path(args) -> Path:
    return Path(args.data_dir).expanduser() / "ai4i2020" / "ai4i2020.csv"


# ------------------------------------------------------------------------------------ the Flower side
def write_flower_parts(args, n: int, folder: Path) -> None:
    """The partitions and train/test splits werkbund.simulate makes, standardized: one .npz per client."""
    import numpy as np

    from werkbund.usecases.data import AI4I_FEATURES
    from werkbund.simulation import data as sim_data
    from werkbund.simulation.partition import parse_partition
    from werkbund.simulation.runner import rows_of

    spec = parse_partition(args.partition)
    dataset, column = sim_data.load(str(ai4i_path(args)), target=AI4I_TARGET, features=AI4I_FEATURES,
                                    column=spec.column)
    classes = np.unique(dataset.y)
    index = {c: i for i, c in enumerate(classes.tolist())}
    splits = [dataset._take(rows).split(0.2, args.seed) for rows in rows_of(spec, n, args.seed, dataset, column)]
    pooled = np.concatenate([train.x for train, _ in splits]).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    scale = np.where(std ** 2 > 1e-12, std, 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"n": n, "features": int(dataset.x.shape[1]),
                                                  "classes": int(len(classes))}))
    for i, (train, test) in enumerate(splits):
        np.savez(folder / f"{i}.npz", xtr=(train.x - mean) / scale,
                 ytr=np.array([index[v] for v in train.y.tolist()], dtype=np.int64),
                 xte=(test.x - mean) / scale, yte=np.array([index[v] for v in test.y.tolist()], dtype=np.int64))


def flower_run(args, n: int, folder: Path) -> dict | None:
    parts, out, log = folder / f"parts-{n}", folder / f"flower-{n}.json", folder / f"flower-{n}.log"
    write_flower_parts(args, n, parts)
    command = [args.flower_python, str(ROOT / "bench" / "flower_simulation.py"), "--parts", str(parts),
               "--rounds", str(args.rounds), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--learning-rate", str(args.learning_rate), "--seed", str(args.seed), "--out", str(out)]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_DEDUP_LOGS="0", PYTHONWARNINGS="ignore")
    code, peak = run_measured(command, env, args.timeout, log)
    if code != 0 or not out.exists():
        print(f"  Flower with {n} participants failed (exit {code}); its log {log} ends:\n"
              + "\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        return None
    facts = json.loads(out.read_text())
    times = facts["round_times"]
    return dict(facts, per_round_s=sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0],
                tree_peak_mib=peak)


# --------------------------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("WERKBUND_DATA_DIR"),
                        help="Folder with ai4i2020/ai4i2020.csv (default: $WERKBUND_DATA_DIR).")
    parser.add_argument("--participants", type=int, nargs="+", default=[10, 100, 1000],
                        help="Numbers of virtual companies, logistic regression (default: 10 100 1000).")
    parser.add_argument("--rounds", type=int, default=6, help="Rounds per run; the first is reported apart (default 6).")
    parser.add_argument("--epochs", type=int, default=1, help="Local epochs per round (default 1).")
    parser.add_argument("--batch-size", type=int, default=32, help="Local batch size (default 32).")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Local Adam learning rate (default 0.01).")
    parser.add_argument("--partition", default="iid", help="iid, column:Type, dirichlet:A, quantity:B (default iid).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the partition and the task (default 0).")
    parser.add_argument("--workers", type=int, help="werkbund's pool threads (default: one per core, at most 4).")
    parser.add_argument("--mlp-participants", type=int, default=100,
                        help="Participants of the neural_network (Keras MLP) run; 0 skips it (default 100).")
    parser.add_argument("--mlp-rounds", type=int, default=3, help="Rounds of the MLP run (default 3).")
    parser.add_argument("--flower-python", default=str(ROOT / ".venv-flower" / "bin" / "python"),
                        help="The Python of a venv with flwr[simulation] (default: .venv-flower/bin/python, made by "
                             "bench/flower_env.sh); Flower is skipped when it does not exist.")
    parser.add_argument("--flower-participants", type=int, nargs="*",
                        help="Numbers of participants to run Flower with (default: the same as --participants).")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds each run may take (default 1800).")
    parser.add_argument("--ray", action="store_true",
                        help="Also run werkbund's Ray backend (the ray extra) at the largest --participants (default: "
                             "threads only).")
    parser.add_argument("--json", help="Also write every figure to this JSON file (default: none).")
    parser.add_argument("--backend", default="threads", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data_dir or not ai4i_path(args).exists():
        parser.error("the AI4I data is needed: --data-dir or WERKBUND_DATA_DIR with ai4i2020/ai4i2020.csv in it")
    if args.child:
        return child(args)
    if args.rounds < 2:
        parser.error("--rounds must be 2 or more: the first round is reported apart")

    flower = Path(args.flower_python).exists()
    flower_ns = set(args.participants if args.flower_participants is None else args.flower_participants)
    print(f"AI4I 2020, {args.partition}, {args.rounds} rounds, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"Adam {args.learning_rate}; {os.cpu_count()} cores; seconds per round after the first")
    if not flower:
        print(f"Flower: skipped, no {args.flower_python} (make it with `bash bench/flower_env.sh`)")
    header = (f"{'model':<10} {'N':>5} | {'werkbund s/round':>16} {'1st round':>9} {'setup s':>7} {'peak MiB':>8} "
              f"{'acc':>6} | {'Flower s/round':>14} {'1st round':>9} {'peak MiB':>8} {'acc':>6} | {'Flower/werkbund':>15}")
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="wb-bench-sim-") as tmp:
        folder = Path(tmp)
        runs = [("logreg", "logistic_regression", n, "threads") for n in args.participants]
        if args.ray:
            runs.append(("logreg/ray", "logistic_regression", max(args.participants), "ray"))
        if args.mlp_participants:
            runs.append(("mlp", "neural_network", args.mlp_participants, "threads"))
        for label, algorithm, n, backend in runs:
            ours = werkbund_run(args, algorithm, n, folder, backend)
            theirs = flower_run(args, n, folder) if flower and label == "logreg" and n in flower_ns else None
            ratio = f"{theirs['per_round_s'] / ours['per_round_s']:.1f}x" if theirs else "-"
            flower_cols = (f"{theirs['per_round_s']:>14.3f} {theirs['round_times'][0]:>9.3f} "
                           f"{theirs['tree_peak_mib']:>8.0f} {theirs['accuracy_last_round'] or 0:>6.3f}"
                           if theirs else f"{'-':>14} {'-':>9} {'-':>8} {'-':>6}")
            print(f"{label:<10} {n:>5} | {ours['per_round_s']:>16.3f} {ours['round_times'][0]:>9.3f} "
                  f"{ours['setup_s']:>7.1f} {ours['tree_peak_mib']:>8.0f} {ours['accuracy']:>6.3f} | {flower_cols} | "
                  f"{ratio:>15}", flush=True)
            if ours["errors"] or ours["reported_last_round"] != n:
                print(f"  werkbund: {ours['reported_last_round']} of {n} reported in the last round, "
                      f"{ours['errors']} participant error(s)")
            rows.append({"model": label, "participants": n, "backend": backend, "werkbund": ours, "flower": theirs})
    if flower and any(r["flower"] for r in rows):
        print("Flower: run_simulation (Ray backend, 1 CPU per client), message-API FedAvg, the same NumPy model and "
              f"Adam; flwr {next(r['flower']['flwr'] for r in rows if r['flower'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
