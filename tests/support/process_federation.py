"""Tasks whose every party is a real process, for the crash, durability and replica tests: a local
(or cloud) platform on a fixed port, an aggregator and participants started through the CLI, killed
with SIGKILL or frozen with SIGSTOP at a chosen point of a round, and the checks that the task ended
COMPLETE with every update once."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PASSWORDS, WERKBUND, Cli, quiet_env

ROUNDS = 12
USERS = (("alice", "acme"), ("bob", "beta"), ("carol", "gamma"), ("mallory", "mu"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_csv(path, data):
    """``data`` (a Dataset) as the CSV a site joins with: its features, then its labels as `label`."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*data.features, "label"])
        for row, label in zip(data.x, data.y):
            writer.writerow([*(f"{v:g}" for v in row), int(label)])


def wait_all(procs, timeout):
    """Wait for every process to end, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.wait(timeout=max(1, deadline - time.monotonic()))


def wait_for(condition, timeout: float, what: str, procs=()):
    """Poll ``condition`` until it holds; fail naming ``what`` (and any process that ended meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        ended = [p.args[1:3] for p in procs if p.poll() is not None]
        assert not ended, f"waiting for {what}: {ended} ended"
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout:.0f} s")


class Federation:
    """A local platform on a fixed port over one SQLite file, an aggregator and two participants (or
    ``participants``, carol among them; ``definition`` changes the task's)."""

    def __init__(self, tmp: Path, participants=("bob", "carol"), definition: dict | None = None):
        self.tmp = tmp
        self.participants = tuple(participants)
        self.definition = {"algorithm": "logistic_regression", "quorum": len(self.participants), "rounds": ROUNDS,
                           "epochs": 1, "batch_size": 64, "learning_rate": 0.05, "round_timeout": 600,
                           **(definition or {})}
        self.n_rounds = self.definition["rounds"]
        self.port = free_port()
        self.db = f"sqlite:///{tmp / 'platform.sqlite'}"
        self.cli = Cli(f"http://127.0.0.1:{self.port}", tmp)
        self.platform = None
        self.starts = 0
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, list[Path]] = {}
        self._api = None

    # -- the platform
    def start_platform(self):
        self.starts += 1
        log = open(self.tmp / f"platform-{self.starts}.log", "w")
        self.platform = subprocess.Popen(
            [WERKBUND, "local-platform", "--port", str(self.port), "--db", self.db],
            env=quiet_env(WERKBUND_HOME=str(self.tmp / "platform-home")), stdout=subprocess.PIPE, stderr=log,
            text=True, stdin=subprocess.DEVNULL)
        wait_for(lambda: "listening on" in (self.platform.stdout.readline() or "") or self.platform.poll() is not None,
                 60, "the platform to listen")
        assert self.platform.poll() is None, (self.tmp / f"platform-{self.starts}.log").read_text()

    def forget_api(self):
        """Close alice's connection; `api()` opens a new one when next asked (once the platform or
        broker it went to runs again)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    def kill(self, proc):
        if proc is self.platform:  # asked again only once it runs again
            self.forget_api()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    # -- the users
    def start(self, user: str, *args: str):
        name = "aggregate" if user == "alice" else user
        log = self.tmp / f"{name}-{len(self.logs.get(name, [])) + 1}.log"
        self.logs.setdefault(name, []).append(log)
        self.procs[name] = self.cli.start(user, *args, log=log)
        return self.procs[name]

    def aggregate(self, *extra: str):
        return self.start("alice", "aggregate", "--task", "t", "--checkpoint-dir", str(self.tmp / "ckpt"),
                          "--results", str(self.tmp / "results"), *extra)

    def participate(self, user: str):
        return self.start(user, "participate", "--task", "t")

    def log(self, name: str) -> str:
        return "\n".join(p.read_text() for p in self.logs.get(name, []))

    def setup_task(self):
        self.start_platform()
        for user, org in USERS:
            if user == "alice" or user in self.participants:
                assert self.cli.run(user, "register", "--org", org).returncode == 0
        (self.tmp / "task.json").write_text(json.dumps(self.definition))
        created = self.cli.run("alice", "create", "--task", "t", "--definition", str(self.tmp / "task.json"))
        assert created.returncode == 0, created.stderr
        for i, user in enumerate(self.participants):
            joined = self.cli.run(user, "join", "--task", "t", "--data", "builtin:digits",
                                  "--shard", f"{i + 1}/{len(self.participants)}")
            assert joined.returncode == 0, joined.stderr
        self.aggregate()
        for user in self.participants:
            self.participate(user)

    # -- what the platform says (asked only while it runs)
    def api(self):
        """Alice's handle, kept between polls (a login per poll would let the task run ahead)."""
        from werkbund.client.api import connect

        if self._api is None:
            self._api = connect(platform=self.cli.platform, url=self.cli.url, user="alice",
                                password=PASSWORDS["alice"])
        return self._api

    def rounds(self) -> list[dict]:
        return self.api().rounds("t")

    def round_under_way(self) -> tuple[int, set[str]]:
        """The last round the aggregator started (its round_started entry goes on the ledger before the round
        is sent) and who began sending an update for it: signed its statement, by its log's line written
        before the send (the statement rides on the update and reaches the ledger with the next round's)."""
        entries = [item["entry"] for item in self.api().transport.call("ledger_entries", task="t", start=0)]
        started = max((e["payload"]["round"] for e in entries if e["type"] == "round_started"), default=-1)
        return started, {name for name in self.participants
                         if f"round {started + 1}: sending the update" in self.log(name)}

    def sent(self, user: str, number: int) -> bool:
        """Whether ``user``'s log says their update of round ``number`` left (the line after the send)."""
        return f"round {number + 1}: update sent" in self.log(user)

    def hold_a_round_open(self, published_ok: bool = False) -> int:
        """Round 1 recorded, then carol frozen (SIGSTOP) in a round R where bob (every other participant)
        sent his update and she did not publish hers: the aggregator waits for her update of R, and the
        task cannot end before she is let go. Returns R.

        Found without a deadline: the aggregator is frozen as soon as its log records round 1, so no
        round starts or ends while carol is frozen and the round under way is read from the ledger. If
        she had not published her update of that round, it is R. If she had, she is let go until her log
        says it was sent (the frozen aggregator cannot start the next round meanwhile), frozen again
        waiting for that next round, and R is the next round.

        ``published_ok``: a round that cannot end while she is frozen after publishing counts as held too
        (under POM 2 and 3 the round needs her after her update: her signed view and shares, or her
        decryption), so R may be a round whose update she published: the one under way if the next has
        not started 30 s after the aggregator is let go, else the next."""
        procs = list(self.procs.values())
        aggregator, carol = self.procs["aggregate"].pid, self.procs["carol"].pid
        wait_for(lambda: "round 1/" in self.log("aggregate"), 300, "round 1's record", procs)
        os.kill(aggregator, signal.SIGSTOP)
        os.kill(carol, signal.SIGSTOP)
        number, published = self.round_under_way()
        if "carol" in published and published_ok:
            os.kill(aggregator, signal.SIGCONT)
            try:  # the round ends without her if she had done her part of it; the next cannot
                wait_for(lambda: self.round_under_way()[0] > number, 30, "the next round", procs)
                number += 1
            except AssertionError as exc:
                if "did not happen" not in str(exc):
                    raise
        elif "carol" in published:
            os.kill(carol, signal.SIGCONT)
            wait_for(lambda: self.sent("carol", number), 120, f"carol's update of round {number + 1} to leave",
                     procs)
            os.kill(carol, signal.SIGSTOP)
            number += 1
        os.kill(aggregator, signal.SIGCONT)
        assert number < self.n_rounds, "the task reached its last round before carol could be frozen"
        others = set(self.participants) - {"carol"}
        wait_for(lambda: all(self.sent(user, number) for user in others), 120,
                 f"the others' updates of round {number + 1}", procs)
        return number

    def finish(self, timeout: float = 600, every_round_whole: bool = True):
        """Every process ends 0 and the task COMPLETE; with ``every_round_whole`` every round also lists
        every participant as reported once. Returns ``werkbund info --json``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not end:\n{self.log(name)[-3000:]}")
        codes = {name: proc.returncode for name, proc in self.procs.items()}
        assert set(codes.values()) == {0}, {n: self.log(n)[-3000:] for n in codes}
        info = json.loads(self.cli.run("bob", "info", "--task", "t", "--json").stdout)
        assert info["status"] == "COMPLETE"
        assert [r["round"] for r in info["rounds"]] == list(range(self.n_rounds))
        for record in info["rounds"] if every_round_whole else ():  # every update once; none rejected or missing
            assert sorted(record["reported"]) == sorted(self.participants), record
            assert not record["rejected"] and not record["missing"], record
        assert "task t COMPLETE" in self.log("aggregate")
        # whatever was killed, every round is on the ledger: started, the statement of each update it used
        # (relayed with the next round's, or appended by its author), the aggregate
        entries = [item["entry"] for item in self.api().transport.call("ledger_entries", task="t", start=0)]
        for record in info["rounds"]:
            said = {(e["type"], e["author"]) for e in entries if (e.get("payload") or {}).get("round") == record["round"]}
            assert {("round_started", "alice"), ("aggregate_published", "alice")} <= said, (record, said)
            assert {("update_submitted", p) for p in record["reported"]} <= said, (record, said)
        return info

    def close(self):
        self.forget_api()
        for proc in [*self.procs.values(), self.platform]:
            if proc is not None and proc.poll() is None:
                self.kill(proc)


class CloudFederation(Federation):
    """The same with the cloud platform: `werkbund platform serve` over a SQLite file, in a vhost of its
    own on the system's RabbitMQ broker, which keeps the queues while the service is down. ``broker``:
    another broker (a node or cluster of the test's own, with ``port`` and ``management_url``);
    ``extra``: more options of `werkbund platform serve`; the rest as Federation takes it."""

    def __init__(self, tmp: Path, broker=None, extra: tuple = (), **federation):
        import uuid

        from support.cloud_support import BROKER_PORT, MANAGEMENT, require_broker

        if broker is None:
            require_broker()
        super().__init__(tmp, **federation)
        self.broker_port, self.management = (broker.port, broker.management_url) if broker else (BROKER_PORT,
                                                                                                  MANAGEMENT)
        self.extra = tuple(extra)
        self.vhost = f"wb-test-{uuid.uuid4().hex[:8]}"
        self.cli = Cli(f"amqp://127.0.0.1:{self.broker_port}/{self.vhost}", tmp, platform="cloud")

    def start_platform(self):
        from support.cloud_support import start_cloud_platform

        self.starts += 1
        folder = self.tmp / f"service-{self.starts}"
        folder.mkdir()
        (folder / "platform-home").symlink_to(self.tmp / "platform-home", target_is_directory=True)
        self.platform, _ = start_cloud_platform(folder, self.db, self.vhost, self.broker_port, self.management,
                                                extra=self.extra)

    def close(self):
        super().close()
        from werkbund.platform.amqp.broker_admin import BrokerAdmin

        admin = BrokerAdmin(self.management, self.vhost)
        for account in admin.broker_users():
            admin.delete_broker_user(account)
        admin.delete_vhost()


def hold_at(federation, when: str) -> int:
    """Stop the task at a known point of round R's updates (R: see ``hold_a_round_open``) and return R.
    before: round R+1 just started, bob frozen before his update; during: bob's update of R in, carol's
    not (carol frozen); after: both updates of R sent to a frozen aggregator (they wait in its inbox)."""
    number = federation.hold_a_round_open()
    procs = list(federation.procs.values())
    if when == "before":
        os.kill(federation.procs["bob"].pid, signal.SIGSTOP)
        os.kill(federation.procs["carol"].pid, signal.SIGCONT)
        wait_for(lambda: federation.round_under_way()[0] > number, 120, "the next round", procs)
    elif when == "after":
        os.kill(federation.procs["aggregate"].pid, signal.SIGSTOP)
        os.kill(federation.procs["carol"].pid, signal.SIGCONT)
        wait_for(lambda: federation.sent("carol", number), 120, "carol's update", procs)
    return number
