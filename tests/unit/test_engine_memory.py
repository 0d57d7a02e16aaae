"""What the round engine holds of a large model, and that what it lets go of comes back the same.

At a GiB every copy counts (issue 15's large-model round): the aggregator does not keep a round's
broadcast bytes while the updates come in when it can make them again (``Broadcast``), and a
participant keeps a large last update on disk only. Both are thresholds in bytes; the tests set them
to 0 so that a small model takes the large model's path.
"""
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from werkbund.algorithms.arrays import decode_weights, encode_weights
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.engine import participant as participant_module
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.broadcast import Broadcast
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.registry import Algorithm
from werkbund.client.api import register
from werkbund.client.messages import TaskMessage
from werkbund.client.transports.inproc import InProcPlatform


def test_a_sent_broadcast_that_can_be_made_again_is_not_held_and_comes_back_the_same(monkeypatch):
    monkeypatch.setattr(Broadcast, "RELEASE_FROM", 0)
    weights = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    held = Broadcast(encode_weights(weights), lambda: encode_weights(weights))
    first = held.payload()
    held.sent()
    assert held._payload is None and held.payload() == first  # made again for a restarted participant

    weights[0] += 1  # an algorithm that changed its global model before aggregate: refused, not sent wrong
    with pytest.raises(TaskFailure, match="global model changed while its updates came in"):
        held.payload()


def test_a_broadcast_that_cannot_be_made_again_or_is_small_stays_held(monkeypatch):
    payload = b"set-up bytes"
    held = Broadcast(payload)
    held.sent()
    assert held.payload() is payload
    small = Broadcast(encode_weights([np.zeros(3)]), lambda: b"never asked")
    small.sent()  # below RELEASE_FROM
    assert small.payload() != b"never asked"


class _Sent(list):
    def __call__(self, kind, payload=b"", **header):
        self.append((kind, bytes(payload), header))


def _participant(tmp_path):
    channel = SimpleNamespace(definition={"rounds": 2}, task="t", name="bob", state_dir=tmp_path,
                              ledger_enabled=False, send=_Sent())
    return RoundParticipant(channel, train=None, test=None)


def test_a_large_last_update_is_kept_on_disk_only_and_sent_again_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(participant_module, "KEEP_IN_MEMORY_BELOW", 0)
    part = _participant(tmp_path)
    payload = encode_weights([np.linspace(0, 1, 50, dtype=np.float32)])
    part._keep_update(1, payload, {"n_samples": 7})
    assert part._last_update == (1, None, {"n_samples": 7})  # not in memory
    part._send_again(SimpleNamespace(kind="round", header={"round": 1}, get=lambda k, d=None: d), 1)
    assert part.channel.send == [("update", payload, {"round": 1, "n_samples": 7})]


def test_a_large_last_update_whose_file_was_damaged_is_not_sent(tmp_path, monkeypatch):
    monkeypatch.setattr(participant_module, "KEEP_IN_MEMORY_BELOW", 0)
    part = _participant(tmp_path)
    part._keep_update(1, encode_weights([np.ones(8)]), {"n_samples": 7})
    (tmp_path / f"{participant_module.LAST_UPDATE}.bin").write_bytes(b"half of it")
    with pytest.raises(RuntimeError, match="cannot be read back; it cannot be sent again"):
        part._send_again(SimpleNamespace(kind="round", header={"round": 1}, get=lambda k, d=None: d), 1)
    assert part.channel.send == []


class _ReusingAggregator(RoundAggregator):
    """Like bench/big_model: the running sum takes the global vector's memory at the round's first update."""

    weighted_mean_update = True
    reuses_global_arrays = True

    def setup(self):
        self.weights, self.overwritten = [np.arange(1000, dtype=np.float32)], threading.Event()

    def global_weights(self):
        return self.weights

    def begin_round(self, number):
        self.sum, self.total = None, 0

    def accept_update(self, update):
        (w,), n = update.weights, update.n_samples
        if self.sum is None:
            (self.sum,), self.weights = self.weights, None
            np.multiply(w, np.float32(n), out=self.sum)
            self.overwritten.set()
        else:
            self.sum += np.float32(n) * w
        self.total += n

    def aggregate(self, number):
        self.weights, self.sum = [self.sum / np.float32(self.total)], None

    def final_model(self):
        return encode_weights(self.weights), {}


def _scripted_participant(handle, step, seen, before_update=None):
    """Answers every round with the global vector plus ``step``; ``seen``: the round broadcasts it got.
    ``before_update(handle)`` runs once, before its first update (a restart, say)."""
    while True:
        message = handle.receive(timeout=30)
        if message is None or message.kind == "failed":
            return
        if message.kind == "final":
            handle.send("final_eval", round=message.get("round"), eval={})
            return
        if message.kind != "round":
            continue
        seen.append(message.payload)
        if before_update is not None:
            before, before_update = before_update, None
            before(handle)
            continue  # the request comes again after the resync
        (w,) = decode_weights(message.payload)
        handle.send("update", encode_weights([w + np.float32(step)]), round=message.get("round"), n_samples=1)


def test_an_algorithm_that_reuses_its_global_arrays_sends_a_restarted_participant_the_broadcast_as_sent(monkeypatch):
    """The sum overwrote the global vector before carol (restarted) asked again: she still gets the round's
    broadcast byte for byte, from the engine's temporary file, and the round's mean is right."""
    monkeypatch.setattr(Broadcast, "RELEASE_FROM", 0)  # the large model's path, for a small one
    platform = InProcPlatform()
    users = {name: register(name, f"{name}-password", name, platform="inproc", inproc=platform)
             for name in ("alice", "bob", "carol")}
    users["alice"].create_task("t", {"quorum": 2, "rounds": 1, "round_timeout": 30, "min_updates": 2})
    data = load_dataset("builtin:digits")
    for name in ("bob", "carol"):
        users[name].join_task("t", data.shard(1, 2).schema())
    aggregator = _ReusingAggregator(users["alice"].aggregator("t"))

    def restart(handle):  # asks again only once bob's update went into the sum (the global is gone)
        assert aggregator.overwritten.wait(timeout=30)
        handle.send("resync", round=0)

    seen = {"bob": [], "carol": []}
    threads = [threading.Thread(target=_scripted_participant, args=(users["bob"].participant("t"), 1.0, seen["bob"]),
                                daemon=True),
               threading.Thread(target=_scripted_participant, args=(users["carol"].participant("t"), 3.0,
                                                                   seen["carol"], restart), daemon=True)]
    for thread in threads:
        thread.start()
    result = aggregator.run()
    for thread in threads:
        thread.join(timeout=30)
    assert result["task"]["status"] == "COMPLETE"
    sent = encode_weights([np.arange(1000, dtype=np.float32)])
    assert seen["carol"][:2] == [sent, sent] and seen["bob"][0] == sent
    assert np.array_equal(aggregator.weights[0], np.arange(1000, dtype=np.float32) + 2.0)  # mean of +1 and +3


def test_a_broadcast_kept_on_disk_comes_back_byte_for_byte_and_a_damaged_one_is_not_sent(monkeypatch):
    monkeypatch.setattr(Broadcast, "RELEASE_FROM", 0)
    payload = encode_weights([np.linspace(0, 1, 64, dtype=np.float32)])
    held = Broadcast(payload, spool=True)
    held.sent()
    assert held._payload is None and held.payload() == payload
    held._file.seek(10)
    held._file.write(b"\x00")  # the disk changed it
    with pytest.raises(TaskFailure, match="changed on disk"):
        held.payload()
    held.close()
    small = Broadcast(encode_weights([np.zeros(3)]), spool=True)
    monkeypatch.setattr(Broadcast, "RELEASE_FROM", 1 << 20)
    small.sent()  # below RELEASE_FROM: stays in memory, no file
    assert small._file is None and small.payload() == encode_weights([np.zeros(3)])


def test_an_algorithm_that_reuses_its_global_arrays_cannot_declare_pom_2_or_3():
    with pytest.raises(ValueError, match="POM 1 only"):
        Algorithm(name="reusing", aggregator=_ReusingAggregator, participant=RoundParticipant,
                  description="", privacy_modes=frozenset({1, 2}))


class _StepParticipant(RoundParticipant):
    def train(self, message):
        (w,) = self.global_weights(message)
        return [w + np.float32(1)], {"n_samples": 3}

    def evaluate_global(self, message):
        return {}

    def keep_final(self, message):
        return {"eval": {}}


def test_a_participant_does_not_hold_the_rounds_model_beside_its_update_and_their_bytes():
    """At a GiB every copy counts: once ``train`` returned, a plain (POM 1) participant lets go of the
    round's model, so what it holds while the update is encoded is the update and its bytes."""
    import tracemalloc

    size = 32 * 1024 * 1024
    channel = SimpleNamespace(definition={"rounds": 1}, task="t", name="bob", state_dir=None,
                              ledger_enabled=False, send=_Sent())
    tracemalloc.start()
    try:
        script = [TaskMessage("round", {"round": 0}, encode_weights([np.zeros(size // 4, np.float32)]), "alice"),
                  TaskMessage("final", {"round": 1}, b"", "alice")]
        channel.receive = lambda timeout: script.pop(0)
        tracemalloc.reset_peak()
        RoundParticipant.run(_StepParticipant(channel, train=None, test=None))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (kind, payload, header), _ = channel.send
    assert kind == "update" and decode_weights(payload)[0][0] == 1.0 and header["n_samples"] == 3
    assert peak < 2.5 * size, f"{peak / size:.2f} models held at once"  # 3 when the round's model stayed


def test_a_small_last_update_is_kept_in_one_file_and_an_older_pair_of_files_still_read(tmp_path):
    """A small update's bytes go into its .json (one file written and synced before it is sent, not two); the
    .bin of an earlier, larger round goes. Kept files of the older layout (.json and .bin) are read as before."""
    payload = encode_weights([np.linspace(0, 1, 50, dtype=np.float32)])
    part = _participant(tmp_path)
    part._keep_update(0, b"x" * 10, {"n_samples": 7})
    (tmp_path / f"{participant_module.LAST_UPDATE}.bin").write_bytes(b"a larger round's bytes")
    part._keep_update(1, payload, {"n_samples": 7})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{participant_module.LAST_UPDATE}.json"]
    assert _participant(tmp_path)._stored_update(quiet=True) == (1, payload, {"n_samples": 7})
    kept = json.loads((tmp_path / f"{participant_module.LAST_UPDATE}.json").read_text())
    del kept["payload_b64"]  # the layout before: the bytes beside it
    (tmp_path / f"{participant_module.LAST_UPDATE}.json").write_text(json.dumps(kept))
    (tmp_path / f"{participant_module.LAST_UPDATE}.bin").write_bytes(payload)
    assert _participant(tmp_path)._stored_update(quiet=True) == (1, payload, {"n_samples": 7})
    kept["payload_b64"] = "not base64!"
    (tmp_path / f"{participant_module.LAST_UPDATE}.json").write_text(json.dumps(kept))
    assert _participant(tmp_path)._stored_update(quiet=True) is None  # unreadable: never sent again
