"""Privacy operation modes 2 (secure aggregation) and 3 (CKKS) in the round engine.

In one process on the in-process platform (real Keras, real cryptography, real TenSEAL), with the
digits data split among 2-3 sites, 1-2 rounds; plus one run of both modes as separate `werkbund`
processes on the local and on the cloud platform. The core protocol's dropout, uniformity and
share-handling cases are in test_secagg.py; here they go through the engine and the platform.
"""
import json
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.inproc_federation import CrashAfter

from werkbund.algorithms.arrays import decode_weights
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.algorithms.builtin.neural_network import NeuralNetworkAggregator, NeuralNetworkParticipant
from werkbund.algorithms.privacy.ckks import encryption as he_ckks
from werkbund.algorithms.privacy.wire import flatten, unpack_blobs, vector_from
from werkbund.algorithms.strategies import FedAvg
from werkbund.client.api import User, register
from werkbund.client.transports.inproc import InProcPlatform, InProcTransport
from werkbund.platform.errors import InvalidInput

SITES = ("bob", "carol", "dave")


class RecordingParticipant(NeuralNetworkParticipant):
    """Keeps what it trained (weights, sample count, the global weights it started from)."""

    def __init__(self, *args, record, vanish_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.record, self.vanish_at = record, vanish_at
        if self.pom is not None:
            handle, seen = self.pom.handle, record.setdefault("seen", [])

            kind, at_round = vanish_at if isinstance(vanish_at, tuple) else (vanish_at, None)

            def vanishing(message):
                seen.append((self.channel.name, message.kind))
                if message.kind == kind and at_round in (None, message.get("round")):
                    raise TaskEnded(f"{self.channel.name} vanished at {vanish_at}")
                handle(message)
            self.pom.handle = vanishing

    def train(self, message):
        weights, header = super().train(message)
        self.record[(self.channel.name, message.get("round"))] = (
            [np.array(w) for w in weights], header["n_samples"], decode_weights(message.payload))
        return weights, header


class RecordingAggregator(NeuralNetworkAggregator):
    """Keeps the global weights after every round and what each participant's update looked like."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after, self.received = {}, {}
        if self.pom is not None:
            take = self.pom.accept

            def recording(update):
                self.received[(update.sender, update.get("round"))] = bytes(update.payload)
                take(update)
            self.pom.accept = recording

    def aggregate(self, number):
        super().aggregate(number)
        self.after[number] = [w.copy() for w in self.weights]



def federation(definition, sites=SITES, vanish=None, forged=(), crash_after=None, checkpoints=None):
    """Run a task in-process; returns (aggregator or exception, participants' outcomes, records).

    With ``crash_after`` the aggregator is interrupted after that round and resumed from its
    checkpoints (in ``checkpoints``) by a new aggregator."""
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform,
                     identity=Ed25519PrivateKey.generate())
    alice.create_task("t", definition)
    digits = load_dataset("builtin:digits")
    record, outcome, threads = {}, {}, []
    for i, name in enumerate(sites):
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                        identity=Ed25519PrivateKey.generate())
        data = digits.shard(i + 1, len(sites))
        user.join_task("t", data.schema())
        if name in forged:  # runs with a key other than the one it registered
            transport = InProcTransport(platform)
            transport.login(name, f"{name}-password")
            user = User(transport, Ed25519PrivateKey.generate())
        train, test = data.split(0.2, 0)

        def run(user=user, name=name, train=train, test=test):
            try:
                outcome[name] = RecordingParticipant(user.participant("t"), train, test, record=record,
                                                     vanish_at=(vanish or {}).get(name)).run()
            except TaskEnded as exc:
                outcome[name] = exc
        threads.append(threading.Thread(target=run, daemon=True))
    for t in threads:
        t.start()
    crash = CrashAfter(crash_after) if crash_after is not None else None
    aggregator = RecordingAggregator(alice.aggregator("t"), progress=crash, checkpoint_dir=checkpoints)
    try:
        aggregator.quorum_timeout = 60
        try:
            aggregator.run()
        except KeyboardInterrupt:
            aggregator = RecordingAggregator(alice.aggregator("t"), checkpoint_dir=checkpoints)
            aggregator.run(resume=True)
    except TaskFailure as exc:
        aggregator.failure = exc
    for t in threads:
        t.join(timeout=60)
    return aggregator, alice, outcome, record


def plain_fedavg(record, names, number):
    strategy = FedAvg()
    first = record[(names[0], number)]
    strategy.begin_round(first[2])
    for name in names:
        weights, n, _ = record[(name, number)]
        strategy.add(weights, n, name)
    return strategy.result()


# Where a participant vanishes its exchange's deadline is waited out once; every other participant must train
# and answer before that deadline even on a loaded CI machine, where one Keras participant's first round took
# more than 8 s. BASE's deadline is never reached where nobody vanishes.
VANISH_DEADLINE = 30
BASE = {"quorum": 3, "rounds": 1, "epochs": 1, "round_timeout": 60, "batch_size": 64, "learning_rate": 0.01}


def test_pom2_aggregate_equals_plain_fedavg_and_the_aggregator_sees_only_masked_vectors():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2))
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    expected = plain_fedavg(record, list(SITES), 0)
    got = aggregator.after[0]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(got, expected)) < 1e-6
    assert all(isinstance(outcome[s], dict) and outcome[s]["eval"]["accuracy"] > 0.2 for s in SITES)
    for name in SITES:
        weights, n, start = record[(name, 0)]
        change = (flatten(weights) - flatten(start)) * n
        masked = vector_from(aggregator.received[(name, 0)], np.uint64, change.size)
        as_numbers = masked.view(np.int64).astype(np.float64) / 2.0 ** aggregator.pom.server.config.frac_bits
        assert np.max(np.abs(as_numbers - change)) > 1e3       # not the update, nor close to it
        high = masked >> np.uint64(32)                         # an encoded small number has high bits 0 or all 1
        assert np.mean((high == 0) | (high == 0xFFFFFFFF)) < 0.01


def test_pom2_survives_a_dropout_after_masking_and_keeps_its_input():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2, round_timeout=VANISH_DEADLINE),
                                                    vanish={"dave": "secagg_unmask"})
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    expected = plain_fedavg(record, list(SITES), 0)  # dave's masked input still counts
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[0], expected)) < 1e-6
    assert aggregator.pom.stats["survivors"] == list(SITES)
    entry = alice.rounds("t")[0]
    assert entry["missing"] == [] and entry["metrics"]["pom"]["survivors"] == list(SITES)
    assert entry["metrics"]["pom"]["threshold"] == 2 and entry["metrics"]["pom"]["dropped"] == []


def test_pom2_later_rounds_take_their_keys_from_the_round_before_and_a_dropout_falls_back():
    # dave vanishes after sending his masked input of round 1 (of 0, 1, 2): round 0 runs the key stages
    # as exchanges, round 1 gets its keys with round 0's messages, round 2 (without dave) runs them
    # again as exchanges, since dave's keys for it never came (round_timeout is the deadline dave
    # misses)
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2, rounds=3, round_timeout=VANISH_DEADLINE),
                                                    vanish={"dave": ("secagg_unmask", 1)})
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    entries = alice.rounds("t")
    assert [e["metrics"]["pom"]["keys_with_previous_round"] for e in entries] == [False, True, False]
    assert [e["metrics"]["pom"]["survivors"] for e in entries] == [list(SITES), list(SITES), ["bob", "carol"]]
    assert [e["metrics"]["pom"]["participants"] for e in entries] == [3, 3, 2]
    for number, names in ((0, list(SITES)), (1, list(SITES)), (2, ["bob", "carol"])):
        expected = plain_fedavg(record, names, number)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[number], expected)) < 1e-6
    assert all(isinstance(outcome[s], dict) for s in ("bob", "carol"))


def test_pom2_resumed_aggregator_runs_the_key_stages_again_then_pipelines(tmp_path):
    # interrupted after round 1, when the participants already hold their keys for round 2: the new
    # aggregator knows nothing of them, so round 2 gets fresh keys through the key stages
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2, rounds=4), crash_after=1,
                                                    checkpoints=tmp_path)
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    entries = alice.rounds("t")
    assert [e["metrics"]["pom"]["keys_with_previous_round"] for e in entries] == [False, True, False, True]
    for number in (2, 3):
        expected = plain_fedavg(record, list(SITES), number)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[number], expected)) < 1e-6
    assert all(isinstance(outcome[s], dict) for s in SITES)


def test_pom2_shares_go_one_message_per_participant_when_a_large_roster_would_swell_the_broadcast(monkeypatch):
    from werkbund.algorithms.privacy.secagg import aggregation as secure_aggregation

    monkeypatch.setattr(secure_aggregation, "DELIVERIES_WITH_BROADCAST", 0)  # as if the roster were in the hundreds
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2, rounds=2))
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    assert sorted(n for n, kind in record["seen"] if kind == "secagg_delivery") == sorted(SITES * 2)
    for number in (0, 1):
        expected = plain_fedavg(record, list(SITES), number)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[number], expected)) < 1e-6


def test_pom2_fails_clearly_below_the_threshold():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2, round_timeout=VANISH_DEADLINE,
                                                         pom_options={"threshold": 3}),
                                                    vanish={"dave": "secagg_unmask"})
    assert "the threshold is 3" in str(aggregator.failure)
    info = alice.task_info("t")
    assert info["status"] == "FAILED"
    assert "secure aggregation failed" in info["reason"] and "answered the unmask request" in info["reason"]
    assert isinstance(outcome["bob"], TaskEnded) and "threshold" in str(outcome["bob"])


def test_pom2_refuses_a_forged_key_announcement():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=2), forged=("dave",))
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    rejected = alice.rounds("t")[0]["rejected"]
    assert "forged or invalid signature" in rejected["dave"]
    expected = plain_fedavg(record, ["bob", "carol"], 0)  # the round went on with the honest two
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[0], expected)) < 1e-6


def test_pom3_aggregator_cannot_decrypt_and_the_sum_matches_fedavg():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=3, quorum=2), sites=SITES[:2])
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    context = aggregator.pom.context
    assert not context.is_private()
    blobs = unpack_blobs(aggregator.received[("bob", 0)])
    size = int(flatten(record[("bob", 0)][0]).size)
    assert len(blobs) == he_ckks.n_chunks(size) >= 2  # the model needs more than one ciphertext
    with pytest.raises(ValueError, match="secret"):
        he_ckks.read_ciphertexts(context, blobs, size)[0].decrypt()
    expected = plain_fedavg(record, list(SITES[:2]), 0)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[0], expected)) < 1e-5


def test_pom3_asks_only_the_decryptors_and_one_that_vanishes_is_covered_by_the_other():
    aggregator, alice, outcome, record = federation(dict(BASE, pom=3, round_timeout=VANISH_DEADLINE),
                                                    vanish={"bob": "pom3_decrypt"})
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    pom = alice.rounds("t")[0]["metrics"]["pom"]
    assert pom["contributors"] == list(SITES) and pom["decrypted_by"] == ["carol"]
    asked = sorted(name for name, kind in record["seen"] if kind == "pom3_decrypt")
    assert asked == ["bob", "carol"]  # dave, not a decryptor, never received the encrypted sum
    expected = plain_fedavg(record, list(SITES), 0)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(aggregator.after[0], expected)) < 1e-5


def test_pom3_trains_as_well_as_pom1():
    # full-batch training, so the participants' shuffling cannot make the two runs differ
    definition = dict(BASE, quorum=2, rounds=2, epochs=8, batch_size=4096, learning_rate=0.02, seed=7)
    accuracy = {}
    for pom in (1, 3):
        aggregator, alice, outcome, record = federation(dict(definition, pom=pom), sites=SITES[:2])
        assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
        accuracy[pom] = aggregator.history[-1]["accuracy"]
    assert accuracy[1] > 0.5
    assert abs(accuracy[3] - accuracy[1]) <= 0.01, accuracy


@pytest.mark.parametrize("strategy", ["median", {"name": "fedadam", "inner": {"name": "trimmed_mean"}}, "krum"])
def test_strategies_that_need_each_update_are_refused(strategy):
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    for pom in (2, 3):
        with pytest.raises(InvalidInput, match="needs every participant's update"):
            alice.create_task(f"t{pom}", {"pom": pom, "quorum": 2, "strategy": strategy})
    alice.create_task("ok", {"pom": 2, "quorum": 2, "strategy": {"name": "fedadam", "inner": "fedavg"}})
    assert json.dumps(alice.task_info("ok")["pom"]) == "2"


@pytest.fixture(params=["local", pytest.param("cloud-sqlite", marks=pytest.mark.broker)])
def any_platform(request, tmp_path_factory):
    """(kind, URL) of a running local platform, or of the cloud platform (RabbitMQ, SQLite)."""
    from conftest import running_platform

    with running_platform(request.param, tmp_path_factory.mktemp(request.param)) as platform:
        yield platform


@pytest.mark.slow
def test_pom2_and_pom3_tasks_run_end_to_end_as_separate_processes(any_platform, tmp_path):
    from conftest import Cli
    from support.process_federation import wait_all, write_csv

    cli = Cli(any_platform[1], tmp_path, platform=any_platform[0])
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma")):
        result = cli.run(user, "register", "--org", org)
        assert result.returncode == 0, result.stderr
    digits = load_dataset("builtin:digits")
    for i, user in enumerate(("bob", "carol")):
        write_csv(tmp_path / f"{user}.csv", digits.shard(i + 1, 2))
    procs, names = [], []
    # POM 2, POM 3, and differential privacy (orthogonal to the mode) on top of POM 1
    dp = {"noise_multiplier": 1.0, "epsilon": 50.0, "delta": 1e-5}
    for pom in (2, 3, "1-dp"):
        task = f"private-{pom}"
        definition = {"quorum": 2, "rounds": 1, "epochs": 1, "round_timeout": 200}
        definition.update({"pom": 1, "dp": dp} if pom == "1-dp" else {"pom": pom})
        (tmp_path / f"{task}.json").write_text(json.dumps(definition))
        created = cli.run("alice", "create", "--task", task, "--definition", str(tmp_path / f"{task}.json"))
        assert created.returncode == 0, created.stderr
        procs.append(cli.start("alice", "aggregate", "--task", task, "--results", str(tmp_path / task),
                               log=tmp_path / f"{task}-alice.log"))
        names.append(f"{task}-alice")
        for user in ("bob", "carol"):
            joined = cli.run(user, "join", "--task", task, "--data", str(tmp_path / f"{user}.csv"), "--target", "label")
            assert joined.returncode == 0, joined.stderr
            procs.append(cli.start(user, "participate", "--task", task, "--out", str(tmp_path / f"{task}-{user}.keras"),
                                   log=tmp_path / f"{task}-{user}.log"))
            names.append(f"{task}-{user}")
    wait_all(procs, timeout=400)
    logs = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in names}
    assert [p.returncode for p in procs] == [0] * len(procs), logs
    for pom in (2, 3):
        shown = cli.run("alice", "info", "--task", f"private-{pom}")
        assert f"POM {pom}" in shown.stdout and "COMPLETE" in shown.stdout, shown.stdout
        rounds = json.loads(cli.run("alice", "info", "--task", f"private-{pom}", "--json").stdout)["rounds"]
        assert sorted(rounds[0]["reported"]) == ["bob", "carol"]
    dp_round = json.loads(cli.run("alice", "info", "--task", "private-1-dp", "--json").stdout)["rounds"][0]
    assert sorted(dp_round["reported"]) == ["bob", "carol"]
    assert 0 < dp_round["metrics"]["dp"]["epsilon"] <= dp["epsilon"]
    assert set(dp_round["metrics"]["dp"]["participants"]) == {"bob", "carol"}
    assert "CKKS key made by bob" in logs["private-3-alice"]
    listed = cli.run("bob", "list")
    assert "private-2" in listed.stdout and "private-3" in listed.stdout


def test_packed_blobs_round_trip_and_cut_or_padded_ones_are_refused():
    from werkbund.algorithms.privacy.wire import PomError, pack_blobs

    blobs = [b"a", b"", b"xyz" * 5]
    assert unpack_blobs(pack_blobs(blobs)) == blobs
    for bad in (b"\x00", pack_blobs(blobs)[:-1], pack_blobs(blobs) + b"!", (10**6).to_bytes(4, "big")):
        with pytest.raises(PomError):
            unpack_blobs(bad)
