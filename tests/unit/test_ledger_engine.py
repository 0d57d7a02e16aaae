"""Metadata before models, in one process: every update's hash goes on the ledger before the
update; the aggregator refuses bytes that do not match; the finished log verifies."""
import hashlib
import threading
from functools import partial

import pytest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.algorithms.arrays import decode_weights, encode_weights
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.moments import feature_moments
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.ledger import entries as E
from werkbund.ledger.verify import verify_log


def rounds(handle, data, told=None):
    """The round messages a scripted participant gets; the rest (statistics, the final model) it answers
    here, and the reasons of ``skipped`` messages go to ``told``."""
    while True:
        message = handle.receive(timeout=30)
        if message is None or message.kind == "failed":
            return
        number = message.get("round")
        if message.kind == "final":
            handle.send("final_eval", round=number, eval={})
            return
        if message.kind == "skipped" and told is not None:
            told.append(message.get("reason"))
        if message.kind == "stats":
            handle.send("stats", round=number, **feature_moments(data.x))
        elif message.kind == "round":
            yield number, message


def members(*names):
    """Users with identity keys (so their handles sign ledger entries) on one new in-process platform."""
    platform = InProcPlatform()
    return {name: register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                           identity=Ed25519PrivateKey.generate()) for name in names}


def run_task(aggregate, *participants):
    """Each participant (a callable) in its own thread, ``aggregate`` (the aggregator's run) in this one;
    the participants are joined whatever the aggregator did. Returns what ``aggregate`` returned."""
    threads = [threading.Thread(target=p, daemon=True) for p in participants]
    for t in threads:
        t.start()
    try:
        return aggregate()
    finally:
        for t in threads:
            t.join(timeout=60)


def lying(handle, data, n_samples=10, lie=True, told=None):
    """Publishes the hash of one update, then sends other bytes (or, with lie=False, the same)."""
    for number, message in rounds(handle, data, told):
        weights = decode_weights(message.payload)
        honest = encode_weights(weights)
        handle.publish_entry("update_submitted", {"round": number, "n_samples": n_samples,
                                                  "sha256": hashlib.sha256(honest).hexdigest()})
        if lie:
            weights[-1] = weights[-1] + 1.0
        handle.send("update", encode_weights(weights), round=number, n_samples=n_samples)


def test_an_update_that_does_not_match_its_published_hash_is_rejected_and_selection_skips():
    users = members("alice", "bob", "mallory", "tiny")
    users["alice"].create_task("t", {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": 60,
                                     "min_updates": 1, "selection": {"min_samples": 50}})
    digits = load_dataset("builtin:digits")
    bob_data, mallory_data = digits.shard(1, 2), digits.shard(2, 2)
    users["bob"].join_task("t", bob_data.schema())
    users["mallory"].join_task("t", mallory_data.schema())
    users["tiny"].join_task("t", mallory_data.schema())
    outcome, told = {}, []

    def honest():
        train, test = bob_data.split(0.2, 0)
        outcome["bob"] = ALGORITHM.participant(users["bob"].participant("t"), train, test).run()

    result = run_task(ALGORITHM.aggregator(users["alice"].aggregator("t")).run, honest,
                      partial(lying, users["mallory"].participant("t"), mallory_data),
                      partial(lying, users["tiny"].participant("t"), mallory_data, n_samples=5, lie=False, told=told))
    assert result["task"]["status"] == "COMPLETE"
    rounds = users["alice"].rounds("t")
    assert rounds[0]["reported"] == ["bob"]
    assert "but ledger entry" in rounds[0]["rejected"]["mallory"]
    assert "published" in rounds[0]["rejected"]["mallory"]
    assert "at least 50" in rounds[0]["rejected"]["tiny"] and "at least 50" in told[0]
    assert "bob" in outcome

    bundle = users["bob"].transport.call("ledger_bundle", task="t")
    types = [item["entry"]["type"] for item in bundle["entries"]]
    assert types[:4] == ["task_created", "joined", "joined", "joined"]
    assert types.count("update_submitted") == 6 and types.count("round_started") == 2
    assert types.count("aggregate_published") == 2 and types[-1] == "task_finished"
    latest = bundle["latest"]
    report = verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                        latest["checkpoint"], latest["signature"], bundle["platform_key"],
                        cosignatures=latest["cosignatures"] or None)
    assert report.ok, str(report)
    final_sha = hashlib.sha256(users["bob"].get_model("t")[0]).hexdigest()
    assert bundle["entries"][-1]["entry"]["payload"]["model_sha256"] == final_sha


def scripted(handle, data, barrier, seqs):
    """An honest participant whose rounds go in two steps: its update_submitted entry, then (once every
    scripted participant has published) the update, naming where the entry is."""
    for number, message in rounds(handle, data):
        update = encode_weights(decode_weights(message.payload))
        seq = handle.publish_entry("update_submitted", {"round": number, "n_samples": 10,
                                                        "sha256": hashlib.sha256(update).hexdigest()})["seq"]
        seqs.append((handle.name, number, seq))
        barrier.wait(timeout=30)
        handle.send("update", update, round=number, n_samples=10, ledger_seq=seq)


def test_updates_name_their_ledger_entry_so_one_read_of_the_ledger_serves_a_round():
    """Before, the aggregator read the ledger once per update. An update now names the seq of its
    update_submitted entry; the aggregator reads only when it has not read that far, so when every
    entry of a round is on the ledger before the first update arrives, one read serves the round."""
    names = ("alice", "bob", "carol", "dave")
    users = members(*names)
    users["alice"].create_task("t", {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": 60})
    digits = load_dataset("builtin:digits")
    shards = {name: digits.shard(i, 3) for i, name in enumerate(names[1:], start=1)}
    for name, shard in shards.items():
        users[name].join_task("t", shard.schema())
    barrier, seqs = threading.Barrier(3), []
    participants = [partial(scripted, users[name].participant("t"), shard, barrier, seqs)
                    for name, shard in shards.items()]
    channel = users["alice"].aggregator("t")
    reads, asked = [], []
    entries, published_update = channel.entries, channel.published_update

    def counted_entries(start=0):
        reads.append(start)
        return entries(start)

    def recorded(sender, number, at=None):
        asked.append((sender, number, at))
        return published_update(sender, number, at=at)

    channel.entries, channel.published_update = counted_entries, recorded
    result = run_task(ALGORITHM.aggregator(channel).run, *participants)
    assert result["task"]["status"] == "COMPLETE"
    assert [sorted(r["reported"]) for r in users["alice"].rounds("t")] == [["bob", "carol", "dave"]] * 2
    assert sorted(asked) == sorted(seqs)  # every update was looked up where its sender said
    assert len(reads) == 2  # one read of the ledger a round, not one per update


def test_a_wrong_ledger_seq_in_an_update_changes_nothing_the_entry_is_looked_up():
    """The seq an update names is a hint: a seq past what was read, of someone else's entry, or not a
    number leads to the sender's own latest entry for the round, or to none."""
    users = members("alice", "bob", "mallory")
    users["alice"].create_task("t", {"quorum": 2, "rounds": 1, "epochs": 1, "round_timeout": 60})
    digits = load_dataset("builtin:digits")
    for name in ("bob", "mallory"):
        users[name].join_task("t", digits.schema())
    bob, mallory = users["bob"].participant("t"), users["mallory"].participant("t")
    bob_seq = bob.publish_entry("update_submitted", {"round": 0, "n_samples": 10, "sha256": "b" * 64})["seq"]
    channel = users["alice"].aggregator("t")
    for at in (bob_seq, 10**9, -1, "3", True, None):
        assert channel.published_update("mallory", 0, at=at) is None
        assert channel.published_update("bob", 0, at=at)["seq"] == bob_seq
    later = mallory.publish_entry("update_submitted", {"round": 0, "n_samples": 10, "sha256": "m" * 64})["seq"]
    assert channel.published_update("mallory", 0, at=later)["sha256"] == "m" * 64


def test_a_round_of_the_engine_relays_every_statement_and_participants_stop_calling_the_ledger():
    """Three real participants, three rounds: each update carries its signed statement, the aggregator
    appends a round's statements with one ledger_relay request, and once a participant has pinned the
    platform key (one audit, at the first receipts) it makes no ledger request at all. The log holds every
    statement once and verifies; a participant whose statement is signed with another key is refused."""
    names = ("alice", "bob", "carol", "mallory")
    users = members(*names)
    users["alice"].create_task("t", {"quorum": 3, "rounds": 3, "epochs": 1, "round_timeout": 60, "min_updates": 1})
    digits = load_dataset("builtin:digits")
    shards = {"bob": digits.shard(1, 2), "carol": digits.shard(2, 2)}
    for name in ("bob", "carol", "mallory"):
        users[name].join_task("t", digits.shard(1, 2).schema())
    asked = {name: [] for name in names}
    for name in names:
        call = users[name].transport.call

        def counted(command, _call=call, _name=name, **params):
            asked[_name].append(command)
            return _call(command, **params)
        users[name].transport.call = counted
    told = []

    def forging(handle, data):
        stranger = Ed25519PrivateKey.generate()
        for number, message in rounds(handle, data, told):
            update = encode_weights(decode_weights(message.payload))
            statement = E.make_statement("t", "update_submitted", "mallory",
                                         {"round": number, "n_samples": 10, "sha256": hashlib.sha256(update).hexdigest()})
            handle.send("update", update, round=number, n_samples=10, ledger_statement=statement,
                        ledger_signature=E.encode_signature(E.sign_statement(statement, stranger)))

    outcome = {}

    def honest(name):
        train, test = shards[name].split(0.2, 0)
        outcome[name] = ALGORITHM.participant(users[name].participant("t"), train, test).run()

    result = run_task(ALGORITHM.aggregator(users["alice"].aggregator("t")).run,
                      *(partial(honest, n) for n in shards),
                      partial(forging, users["mallory"].participant("t"), digits.shard(2, 2)))
    assert result["task"]["status"] == "COMPLETE" and set(outcome) == {"bob", "carol"}
    records = users["alice"].rounds("t")
    assert [sorted(r["reported"]) for r in records] == [["bob", "carol"]] * 3
    assert all("not signed with mallory's key" in r["rejected"]["mallory"] for r in records)
    ledger = {name: [c for c in asked[name] if c.startswith("ledger_")] for name in names}
    # one relay before each round's broadcast and one before the final model; besides, only reads of the
    # verified log for the members' keys (again after each signature that failed: mallory's)
    assert ledger["alice"].count("ledger_relay") == 4
    # a round's record rides on the next round's relay (or the final one): only the last goes on its own
    assert asked["alice"].count("record_round") == 1 and [r["round"] for r in records] == [0, 1, 2]
    assert set(ledger["alice"]) == {"ledger_relay", "ledger_entries", "ledger_checkpoint"}
    for name in ("bob", "carol"):  # one audit pins the platform key; the receipts settle the rest
        assert ledger[name] == ["ledger_audit"], ledger[name]
    bundle = users["bob"].transport.call("ledger_bundle", task="t")
    entries = [item["entry"] for item in bundle["entries"]]
    for name in ("bob", "carol"):
        assert [e["payload"]["round"] for e in entries if e["author"] == name] == [0, 1, 2]
    assert not any(e["author"] == "mallory" and e["type"] == "update_submitted" for e in entries)
    latest = bundle["latest"]
    report = verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                        latest["checkpoint"], latest["signature"], bundle["platform_key"],
                        cosignatures=latest["cosignatures"] or None)
    assert report.ok, str(report)


def test_a_task_that_fails_mid_round_still_puts_what_was_submitted_on_the_ledger():
    """Statements ride on updates and wait for the next relay; a task that fails before it (too few valid
    updates) appends them first, so the log shows bob's update and mallory's refused one before task_failed."""
    users = members("alice", "bob", "mallory")
    users["alice"].create_task("t", {"quorum": 2, "rounds": 2, "epochs": 1, "round_timeout": 60, "min_updates": 2})
    digits = load_dataset("builtin:digits")
    for name in ("bob", "mallory"):
        users[name].join_task("t", digits.shard(1, 2).schema())

    def lying_relayed(handle, data):  # a signed statement whose hash is not that of the bytes sent
        for number, message in rounds(handle, data):
            weights = decode_weights(message.payload)
            fields = handle.statement_for_update("update_submitted", {
                "round": number, "n_samples": 10, "sha256": hashlib.sha256(encode_weights(weights)).hexdigest()})
            weights[-1] = weights[-1] + 1.0
            handle.send("update", encode_weights(weights), round=number, n_samples=10, **fields)

    def honest():
        train, test = digits.shard(1, 2).split(0.2, 0)
        try:
            ALGORITHM.participant(users["bob"].participant("t"), train, test).run()
        except Exception:  # noqa: BLE001 - the task fails under it: what matters is the ledger
            pass

    with pytest.raises(TaskFailure, match="only 1 valid update"):
        run_task(ALGORITHM.aggregator(users["alice"].aggregator("t")).run, honest,
                 partial(lying_relayed, users["mallory"].participant("t"), digits.shard(2, 2)))
    assert users["alice"].task_info("t")["status"] == "FAILED"
    entries = [item["entry"] for item in users["bob"].transport.call("ledger_bundle", task="t")["entries"]]
    types = [(e["type"], e["author"]) for e in entries]
    assert types[-1] == ("task_failed", "platform")
    assert ("update_submitted", "bob") in types and ("update_submitted", "mallory") in types
    assert types.index(("update_submitted", "bob")) < types.index(("task_failed", "platform"))


def test_a_statement_or_cosignature_the_platform_would_refuse_costs_only_its_sender():
    """The round's relay is one request: a participant must not be able to make the platform refuse all of it.
    mallory's statement is signed by her but holds a NUL (no database stores one), trudy's cosignature is not
    a cosignature at all: mallory's updates are refused, trudy's cosignature dropped, and the task completes."""
    names = ("alice", "bob", "mallory", "trudy")
    users = members(*names)
    users["alice"].create_task("t", {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": 60, "min_updates": 1})
    digits = load_dataset("builtin:digits")
    for name in names[1:]:
        users[name].join_task("t", digits.shard(1, 2).schema())

    def hostile(handle, data, how):
        for number, message in rounds(handle, data):
            update = encode_weights(decode_weights(message.payload))
            payload = {"round": number, "n_samples": 10, "sha256": hashlib.sha256(update).hexdigest()}
            if how == "nul":
                payload["note"] = "a\x00b"
            fields = handle.statement_for_update("update_submitted", payload)
            if how == "cosign":
                fields["ledger_cosign"] = {"size": "all of them", "signature": 7, "extra": True}
            handle.send("update", update, round=number, n_samples=10, **fields)

    def honest():
        train, test = digits.shard(1, 2).split(0.2, 0)
        ALGORITHM.participant(users["bob"].participant("t"), train, test).run()

    result = run_task(ALGORITHM.aggregator(users["alice"].aggregator("t")).run, honest,
                      *(partial(hostile, users[n].participant("t"), digits.shard(2, 2), how)
                        for n, how in (("mallory", "nul"), ("trudy", "cosign"))))
    assert result["task"]["status"] == "COMPLETE"
    records = users["alice"].rounds("t")
    assert [sorted(r["reported"]) for r in records] == [["bob", "trudy"]] * 2
    assert all("NUL" in r["rejected"]["mallory"] for r in records), records[0]["rejected"]
    entries = [item["entry"] for item in users["bob"].transport.call("ledger_bundle", task="t")["entries"]]
    assert [e["payload"]["round"] for e in entries if e["author"] == "trudy"] == [0, 1]
