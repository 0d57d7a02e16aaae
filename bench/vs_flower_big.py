"""Issue 15, part (b) of bench/vs_flower.py: a whole round with a large model, werkbund against Flower.

    .venv/bin/python bench/vs_flower.py --part b                          # 256 MiB, then 1 GiB; 2 participants, 3 rounds
    .venv/bin/python bench/vs_flower.py --part b --sizes 256 --platforms local --rounds 3

The job: 2 participant processes, a model that is one float32 vector of ``--sizes`` MiB, each
participant answering the global vector plus a fixed step (nothing to compute: the figures are
moving, checking and averaging the model).

- werkbund: the ``big_model`` algorithm, a plug-in (bench/big_model, entry point in
  ``werkbund.algorithms``) installed as a third-party one is, with ``pip install --target`` into a
  folder on the bench's path; the platform (``werkbund local-platform`` or ``werkbund platform
  serve``, as in part a), the aggregator and each participant are processes of their own.
- Flower 1.42 in .venv-flower, the same vector and step, FedAvg: the legacy ``start_server`` and 2
  ``start_client`` processes over gRPC (``bench/flower_overhead.py``), and the deployment runtime:
  ``flower-superlink``, 2 ``flower-supernode`` processes and the app in bench/flower_big_app
  submitted with ``flwr run`` (the superlink starts the ServerApp, each supernode its ClientApp).
  A Flower runtime whose processes' memory at the smaller size, scaled to the next, would pass the
  limit is not started at the next size; the table says so.

Figures: seconds per round after the first (median; werkbund: the aggregator's ``duration_s``,
Flower: end of one aggregation to the end of the next); MB/s of model moved, counting per round
the global model down to each participant and each participant's update up (2 x participants x
model bytes, MB = 10^6 bytes) over the seconds per round; peak resident memory (VmHWM / max RSS) of
the aggregator (Flower: the server process, the ServerApp), of each participant and of the platform, as
each process reports it, and the largest RSS a sampler saw every 0.2 s for every process with its children
(RabbitMQ's too, which nothing else reports; Flower's clients and supernodes only this way).
The sampler also keeps the machine safe: once its used memory passes ``--memory-limit-gib`` it
stops the run's processes and says which held what.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import queue
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from memory_watch import MemoryWatch, _cmdline, _machine_used_gib
from simulation import _children
from vs_flower import ROOT, _env, _free_port, _peak_rss_mib, cloud_platform, local_platform

PLUGIN = ROOT / "bench" / "big_model"
MIB = 1024 * 1024
STEP = 1e-3
ROWS = 10
FLOWER_LEGACY = "flower (legacy start_server, gRPC)"
FLOWER_DEPLOYMENT = "flower (deployment runtime: superlink, supernodes, flwr run)"
FLOWER_APP = ROOT / "bench" / "flower_big_app"


def install_plugin(folder: Path) -> Path:
    """``pip install --target`` of bench/big_model, as a company installs a published algorithm; the
    folder goes on this process's path, which spawned processes inherit."""
    source, target = folder / "big_model_source", folder / "big_model_site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True, timeout=300)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return target


def _peak_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _site_data():
    """A few rows: the participant's data play no part in a round of ``big_model`` except its sample count."""
    import numpy as np

    from werkbund.algorithms.data.dataset import Dataset

    return Dataset(np.zeros((ROWS, 1)), np.arange(ROWS) % 2, ["x"], "label")


def _connect(where: dict, name: str, raw: bytes, home: str):
    os.environ.update({"WERKBUND_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"})
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from werkbund.client.api import connect

    return connect(user=name, password=f"{name}-password",
                   identity=Ed25519PrivateKey.from_private_bytes(raw) if raw else None, **where)


def _report_failure(out, role: str) -> None:
    out.put((role, {"error": traceback.format_exc(limit=-3).strip().splitlines()[-1],
                    "traceback": traceback.format_exc(limit=-6), "peak_mib": _peak_self_mib()}))


def _aggregator(where: dict, raw: bytes, home: str, out) -> None:
    try:
        from werkbund.algorithms.registry import get_algorithm

        user = _connect(where, "creator", raw, home)
        outcome = get_algorithm("big_model").aggregator(user.aggregator("big")).run()
        out.put(("aggregator", {"round_s": [h["duration_s"] for h in outcome["history"]],
                                "memory_mib": [h.get("memory_mib") for h in outcome["history"]],
                                "peak_mib": _peak_self_mib()}))
    except BaseException:
        _report_failure(out, "aggregator")


def _participant(where: dict, name: str, raw: bytes, home: str, out) -> None:
    try:
        from werkbund.algorithms.registry import get_algorithm

        user = _connect(where, name, raw, home)
        train, test = _site_data().split(0.2, 0)
        get_algorithm("big_model").participant(user.participant("big"), train, test).run()
        out.put((name, {"peak_mib": _peak_self_mib()}))
    except BaseException:
        _report_failure(out, name)


def run_werkbund_big(kind: str, mib: int, participants: int, rounds: int, limit_gib: float,
                     ledger: bool = True, timeout: float = 1500) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from werkbund.client.api import register

    def raw(key) -> bytes:
        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())

    floats = mib * MIB // 4
    figures: dict = {"framework": "werkbund", "platform": kind, "mib": mib, "participants": participants}
    with tempfile.TemporaryDirectory(prefix="werkbund-vs-flower-big-") as tmp:
        home = Path(tmp)
        starter = local_platform if kind == "local" else cloud_platform
        with starter(home) as (where, platform_pid), MemoryWatch(limit_gib) as watch:
            watch.watch("platform", platform_pid, stoppable=False)
            os.environ.update(_env(home))
            keys = {name: Ed25519PrivateKey.generate() for name in ["creator"] + [f"site{i}" for i in range(participants)]}
            creator = register("creator", "creator-password", "acme", identity=keys["creator"], **where)
            creator.create_task("big", {"algorithm": "big_model", "floats": floats, "step": STEP, "quorum": participants,
                                        "rounds": rounds, "round_timeout": timeout})
            handles = [creator]
            for name in list(keys)[1:]:
                user = register(name, f"{name}-password", name, identity=keys[name], **where)
                user.join_task("big", _site_data().schema())
                handles.append(user)
            spawn = multiprocessing.get_context("spawn")
            out = spawn.Queue()
            key = {name: raw(k) if ledger else b"" for name, k in keys.items()}  # no key: nothing signed
            procs = {"aggregator": spawn.Process(target=_aggregator, args=(where, key["creator"], str(home), out))}
            procs.update({name: spawn.Process(target=_participant, args=(where, name, key[name], str(home), out))
                          for name in list(keys)[1:]})
            started = time.perf_counter()
            for role, proc in procs.items():
                proc.start()
                watch.watch(role, proc.pid)
            reports = _collect(out, procs, watch, started + timeout)
            figures["wall_s"] = time.perf_counter() - started
            figures["platform_peak_mib"] = _peak_rss_mib(platform_pid)
            for proc in procs.values():
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
            for handle in handles:
                handle.close()
    figures.update(reports=reports, sampled_peak_mib=watch.peaks, machine_peak_gib=watch.machine_peak_gib,
                   stopped=watch.tripped)
    rounds_s = reports.get("aggregator", {}).get("round_s")
    if rounds_s:
        figures["round_s"] = rounds_s
        figures["median_round_s"] = statistics.median(rounds_s[1:] or rounds_s)
        figures["mb_per_s"] = 2 * participants * floats * 4 / 1e6 / figures["median_round_s"]
    return figures


def _collect(out, procs: dict, watch: MemoryWatch, deadline: float) -> dict:
    """Every process's report, until all have reported, one has died without reporting, or time is up."""
    reports: dict = {}
    while len(reports) < len(procs):
        try:
            role, report = out.get(timeout=1)
            reports[role] = report
            if "error" in report:
                break
            continue
        except queue.Empty:
            pass
        dead = [r for r, p in procs.items() if r not in reports and p.exitcode is not None]
        if dead or watch.tripped or time.perf_counter() > deadline:
            for role in dead:
                reports[role] = {"error": f"process exited with code {procs[role].exitcode} without a report"
                                 + (f" ({watch.tripped})" if watch.tripped else "")}
            if time.perf_counter() > deadline:
                reports["timeout"] = {"error": "no end within the time limit"}
            break
    return reports


def run_flower_big(python: str, mib: int, participants: int, rounds: int, limit_gib: float,
                   timeout: float = 1500) -> dict:
    floats = mib * MIB // 4
    figures: dict = {"framework": FLOWER_LEGACY, "platform": "-", "mib": mib,
                     "participants": participants}
    if not Path(python).exists():
        figures["stopped"] = f"no Flower at {python}: run `bash bench/flower_env.sh`"
        return figures
    with tempfile.TemporaryDirectory(prefix="flower-big-") as tmp, MemoryWatch(limit_gib) as watch:
        result = Path(tmp) / "flower.json"
        log = Path(tmp) / "flower.log"
        started = time.perf_counter()
        with open(log, "w") as sink:
            proc = subprocess.Popen([python, str(ROOT / "bench" / "flower_overhead.py"), "--participants",
                                     str(participants), "--floats", str(floats), "--rounds", str(rounds), "--out",
                                     str(result)], stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            watch.watch("server", proc.pid, children=False)
            _watch_clients(watch, proc, participants)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                watch.stop()
                proc.wait()
                figures["stopped"] = f"no end within {timeout:.0f} s"
        figures["wall_s"] = time.perf_counter() - started
        if result.exists():
            done = json.loads(result.read_text())
            figures.update(round_s=done["round_s"], rounds_done=done["rounds"], flwr=done["flwr"],
                           reports={"server": {"peak_mib": done["server_peak_rss_mib"]}})
            if done["round_s"]:
                figures["median_round_s"] = statistics.median(done["round_s"])
                figures["mb_per_s"] = 2 * participants * floats * 4 / 1e6 / figures["median_round_s"]
            else:
                figures["stopped"] = f"only {done['rounds']} round(s) ended: no round-to-round time"
        else:
            figures["stopped"] = (watch.tripped or figures.get("stopped")
                                  or f"exit code {proc.returncode}: " + " | ".join(log.read_text().strip().splitlines()[-3:]))
    figures.update(sampled_peak_mib=watch.peaks, machine_peak_gib=watch.machine_peak_gib)
    return figures


def run_flower_deployment(python: str, mib: int, participants: int, rounds: int, limit_gib: float,
                          timeout: float = 1500) -> dict:
    """Flower's deployment runtime: ``flower-superlink``, one ``flower-supernode`` per participant and the
    app in bench/flower_big_app submitted with ``flwr run``; the superlink starts the ServerApp and each
    supernode its ClientApp as processes of their own (isolation ``subprocess``)."""
    floats = mib * MIB // 4
    figures: dict = {"framework": FLOWER_DEPLOYMENT, "platform": "-", "mib": mib, "participants": participants}
    bin_dir = Path(python).parent
    if not (bin_dir / "flower-superlink").exists():
        figures["stopped"] = f"no flower-superlink beside {python}: run `bash bench/flower_env.sh`"
        return figures
    with tempfile.TemporaryDirectory(prefix="flower-deployment-") as tmp, MemoryWatch(limit_gib) as watch:
        tmp = Path(tmp)
        env = {**os.environ, "FLWR_HOME": str(tmp / "flwr-home"), "GRPC_VERBOSITY": "ERROR",
               "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}  # it starts flower-superexec by name
        env.pop("PYTHONPATH", None)  # werkbund's plug-in folder is nothing to Flower
        link = f"127.0.0.1:{_free_port()}"  # Flower 1.42: the runtime, control and fleet APIs on one HTTP port
        (tmp / "flwr-home").mkdir()
        (tmp / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{link}"\ninsecure = true\n')
        procs, logs = [], []

        def start(role: str, command: list[str]) -> subprocess.Popen:
            logs.append(tmp / f"{role}.log")
            proc = subprocess.Popen(command, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=tmp)
            procs.append(proc)
            watch.watch(role, proc.pid)
            return proc

        try:
            start("superlink and ServerApp", [str(bin_dir / "flower-superlink"), "--insecure", "--port",
                                              link.rsplit(":", 1)[1], "--database", str(tmp / "state.db"),
                                              "--disable-runtime-dependency-installation"])
            _wait_listening(link, procs[0], logs[0])
            for i in range(participants):
                start(f"site{i}", [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", link,
                                   "--port", str(_free_port()), "--node-config", f"partition-id={i}"])
            out = tmp / "flower.json"
            started = time.perf_counter()
            run = subprocess.run([str(bin_dir / "flwr"), "run", str(FLOWER_APP), "bench", "--stream", "--run-config",
                                  f"floats={floats} rounds={rounds} step={STEP} out='{out}'"], env=env, cwd=tmp,
                                 capture_output=True, text=True, timeout=timeout)
            figures["wall_s"] = time.perf_counter() - started
            if out.exists():
                done = json.loads(out.read_text())
                per_round = [b - a for a, b in zip(done["ends"], done["ends"][1:])]
                figures.update(round_s=per_round, reports={"server": {"peak_mib": done["serverapp_peak_rss_mib"]}})
                if per_round:
                    figures["median_round_s"] = statistics.median(per_round)
                    figures["mb_per_s"] = 2 * participants * floats * 4 / 1e6 / figures["median_round_s"]
            else:
                figures["stopped"] = watch.tripped or (f"flwr run exit code {run.returncode}: " + " | ".join(
                    (run.stdout + run.stderr).strip().splitlines()[-4:]))
        except subprocess.TimeoutExpired:
            figures["stopped"] = watch.tripped or f"no end within {timeout:.0f} s"
        except RuntimeError as exc:
            figures["stopped"] = str(exc).strip().splitlines()[-1]
        finally:
            watch.stop()
            for proc in procs:
                proc.wait()
    figures.update(sampled_peak_mib=watch.peaks, machine_peak_gib=watch.machine_peak_gib)
    return figures


def _wait_listening(address: str, proc: subprocess.Popen, log: Path, wait: float = 120) -> None:
    """Until ``address`` takes a connection (the superlink), or RuntimeError with its log."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the superlink is not listening on {address}:\n" + log.read_text()[-2000:])


def _watch_clients(watch: MemoryWatch, server: subprocess.Popen, participants: int, wait: float = 60) -> None:
    """The Flower server's client processes (multiprocessing spawn children), each watched as a participant."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and server.poll() is None:
        clients = [pid for pid in _children().get(server.pid, []) if "spawn_main" in _cmdline(pid)]
        if len(clients) >= participants:
            for i, pid in enumerate(clients):
                watch.watch(f"site{i}", pid)
            return
        time.sleep(0.1)


def _would_not_fit(rows: list[dict], framework: str, mib: int, limit_gib: float) -> str | None:
    """Why Flower at ``mib`` is not started: its processes' memory at a smaller size, scaled to this one,
    with what the machine uses now, passes the limit (Flower is not run into the wall)."""
    done = [r for r in rows if r["framework"] == framework and r.get("sampled_peak_mib") and r["mib"] < mib]
    if not done:
        return None
    held = sum(v for k, v in done[-1]["sampled_peak_mib"].items() if not k.startswith("rabbitmq")) / 1024
    need = held * mib / done[-1]["mib"] + _machine_used_gib()
    if need <= limit_gib:
        return None
    return (f"not run: its server and clients held {held:.1f} GiB at {done[-1]['mib']} MiB, so about "
            f"{need:.0f} GiB with what the machine uses now, over the {limit_gib:.0f} GiB limit")


def _row(f: dict) -> str:
    reports, sampled = f.get("reports", {}), f.get("sampled_peak_mib", {})

    def peak(role: str) -> str:
        own = reports.get(role, {}).get("peak_mib") or (f.get("platform_peak_mib") if role == "platform" else None)
        seen = sampled.get(role)
        return ((f"{own:,.0f}" if own else "-") + (f" ({seen:,.0f})" if seen else "")) if own or seen else "-"

    sites = sorted({r for r in [*reports, *sampled] if r.startswith("site")})
    model = f["mib"]
    center = "aggregator" if f["framework"] == "werkbund" else "server"
    own = reports.get(center, {}).get("peak_mib")
    return (f"| {f['framework']} | {f['platform']} | {model} | "
            + (f"{f['median_round_s']:.2f} | {f['mb_per_s']:.0f} | " if "median_round_s" in f else "- | - | ")
            + f"{peak(center)} | " + (f"{own / model:.1f}x | " if own else "- | ")
            + (" / ".join(peak(s) for s in sites) or "-") + " | "
            + (peak("platform") if f["framework"] == "werkbund" else "-") + " | "
            + (f"{sampled.get('rabbitmq (whole broker)', 0):,.0f}" if f["platform"] == "cloud" else "-") + " | "
            + (f"{f['machine_peak_gib']:.1f} | " if "machine_peak_gib" in f else "- | ")
            + f"{f.get('stopped') or _errors(reports) or 'ok'} |")


def _errors(reports: dict) -> str:
    return "; ".join(f"{role}: {r['error']}" for role, r in reports.items() if "error" in r)


def main(args) -> None:
    participants = (args.participants or [2])[0]
    rounds = args.rounds or 3
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="werkbund-big-plugin-"))
    try:
        install_plugin(tmp)
        for mib in args.sizes:
            if rows and any(r.get("stopped") or _errors(r.get("reports", {})) for r in rows if r["framework"] == "werkbund"):
                print(f"{mib} MiB: skipped, werkbund did not finish the smaller model", flush=True)
                break
            for kind in args.platforms:
                rows.append(run_werkbund_big(kind, mib, participants, rounds, args.memory_limit_gib,
                                             ledger=not args.no_ledger))
                print(json.dumps(rows[-1]), flush=True)
            if "legacy" in args.flower:
                reason = _would_not_fit(rows, FLOWER_LEGACY, mib, args.memory_limit_gib)
                rows.append({"framework": FLOWER_LEGACY, "platform": "-", "mib": mib, "stopped": reason} if reason else
                            run_flower_big(args.flower_python, mib, participants, rounds, args.memory_limit_gib))
                print(json.dumps(rows[-1]), flush=True)
            if "deployment" in args.flower:
                reason = _would_not_fit(rows, FLOWER_DEPLOYMENT, mib, args.memory_limit_gib)
                rows.append({"framework": FLOWER_DEPLOYMENT, "platform": "-", "mib": mib, "stopped": reason} if reason
                            else run_flower_deployment(args.flower_python, mib, participants, rounds,
                                                       args.memory_limit_gib))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{participants} participants, {rounds} rounds; MB/s = 2 x {participants} x model bytes / s per round; "
          "peaks in MiB as the process reports them (sampled every 0.2 s, with children)")
    print("| framework | platform | model MiB | s/round | MB/s | aggregator (Flower: server) peak | its peak / model | "
          "participant peaks | platform peak | broker RSS (sampled) | machine GiB used | outcome |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
