"""What the round engine holds of a large model, and that what it lets go of comes back the same.

At a GiB every copy counts (issue 15's large-model round): the aggregator does not keep a round's
broadcast bytes while the updates come in when it can make them again (``Broadcast``), and a
participant keeps a large last update on disk only. Both are thresholds in bytes; the tests set them
to 0 so that a small model takes the large model's path.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from werkbund.algorithms.arrays import encode_weights
from werkbund.algorithms.engine import participant as participant_module
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.broadcast import Broadcast
from werkbund.algorithms.engine.participant import RoundParticipant


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
