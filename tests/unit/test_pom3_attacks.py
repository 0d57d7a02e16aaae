"""POM 3 against a malicious aggregator: the attacks that once got a decryptor to reveal single
updates and the CKKS secret key, replayed, and refused.

The engine-level tests run the pooled-moments algorithm of test_privacy_layers.py (no Keras) on the
in-process platform with real TenSEAL, real ledger entries, and an aggregator layer that, after each
honest round, replays decryption requests (old, future and made-up round numbers), forwards single
updates, subsets other than the one it committed to on the ledger, and crafted ciphertexts
(``c0 = 0, c1 = 1`` and ``c1 = P``, written in SEAL's own format). The unit tests show what the
crafted ciphertexts would give away without the checks, that the noise flooding drowns it, and
that a refused update leaves the encrypted sum as it was.
"""
import functools
import os
import struct
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import tenseal as ts
import tenseal.sealapi as sealapi
from support.pooled_moments import SITES, federation, site_data

from werkbund.algorithms.engine import aggregation_stack
from werkbund.algorithms.privacy.ckks import encryption as he
from werkbund.algorithms.privacy.ckks.aggregation import (
    COMMIT, HomomorphicAggregation, HomomorphicParticipant,
)
from werkbund.algorithms.privacy.wire import PomError, pack_blobs
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.client.ledger import publish
from werkbund.platform.errors import PermissionDenied

SPECIAL_PRIME = sealapi.CoeffModulus.Create(he.POLY_DEGREE, list(he.COEFF_BITS))[-1].value()  # "P"


# -- crafting a SEAL ciphertext, as an attacker with the public parameters can -----------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


@functools.lru_cache(maxsize=1)
def _seal_version() -> bytes:
    """The first 5 bytes of SEAL's header (magic, header size, version), from an honest ciphertext."""
    with tempfile.TemporaryDirectory() as folder:
        ts.ckks_vector(he.new_secret_context(), [0.0]).ciphertext()[0].save(os.path.join(folder, "ct"))
        with open(os.path.join(folder, "ct"), "rb") as f:
            return f.read(5)


def _seal_header(size: int) -> bytes:
    """SEAL's 16-byte header, uncompressed, for ``size`` bytes after it."""
    return _seal_version() + b"\x00\x00\x00" + struct.pack("<Q", size + 16)


def crafted(ctx, c0: int, c1: int, length: int) -> bytes:
    """A serialized TenSEAL CKKSVector holding the ciphertext (c0, c1) of two constant polynomials, at
    POM 3's level and scale: what ``ckks.encryption.read_ciphertexts`` takes for a fresh encryption."""
    n = he.POLY_DEGREE
    primes = [m.value() for m in sealapi.CoeffModulus.Create(n, list(he.COEFF_BITS))][:-1]
    data = np.concatenate([np.full(n, c % q, dtype="<u8") for c in (c0, c1) for q in primes])  # NTT of a constant
    array = struct.pack("<Q", data.size) + data.tobytes()
    body = (struct.pack("<4Q", *ctx.seal_context().data.first_parms_id()) + b"\x01"
            + struct.pack("<QQQdQ", 2, n, len(primes), 2.0 ** he.SCALE_BITS, 1)
            + _seal_header(len(array)) + array)
    seal = _seal_header(len(body)) + body
    sizes = _varint(length)
    return (b"\x0a" + _varint(len(sizes)) + sizes + b"\x12" + _varint(len(seal)) + seal
            + b"\x19" + struct.pack("<d", 2.0 ** he.SCALE_BITS))


# -- a malicious aggregator --------------------------------------------------------------------

class Attacking(HomomorphicAggregation):
    """Runs each round honestly, then tries what a malicious aggregator would; ``answers`` keeps, for each
    attempt, ``"decrypted"`` or the participant's error."""

    answers: dict = {}

    def _ask(self, label, participant, number, updates, contributors, total):
        got = {}
        collected = self.agg.exchange("pom3_decrypt", pack_blobs(updates), expect="pom3_plain", number=number,
                                      total=total, contributors=contributors, decryptors=[participant],
                                      handler=lambda message: got.setdefault(message.sender, "decrypted"),
                                      among=[participant], minimum=0)
        self.answers[label] = got.get(participant) or collected.rejected.get(participant, "no answer")

    def end_round(self, number, collected):
        super().end_round(number, collected)  # bob and carol decrypt the committed sum
        everyone, sent = sorted(self._payloads), dict(self._payloads)
        honest, total = [sent[p] for p in everyone], self._total
        if number == 0:
            for replayed in (0, 1, 7, 1_000_000):  # bob decrypted round 0; 1 has not happened; 7 and 10^6 never do
                self._ask(f"bob round {replayed}", "bob", replayed, honest, everyone, total)
            # dave sent an update in round 0 and decrypted nothing yet
            self._ask("carol's update alone", "dave", 0, [sent["carol"]], ["carol"], total)
            self._ask("carol's update in place of dave's", "dave", 0, [sent["bob"], sent["carol"], sent["carol"]],
                      everyone, total)
            n = {p: SITES[p] for p in everyone}
            self._ask("a subset", "dave", 0, [sent["bob"], sent["dave"]], ["bob", "dave"], n["bob"] + n["dave"])
            self.channel.publish_entry(COMMIT, {"round": 0, "contributors": ["bob", "dave"],
                                                "n_samples": n["bob"] + n["dave"]})
            self._ask("a subset, committed second", "dave", 0, [sent["bob"], sent["dave"]], ["bob", "dave"],
                      n["bob"] + n["dave"])
            for label, c1 in (("c0=0, c1=1", 1), ("c0=0, c1=P", SPECIAL_PRIME)):
                forged = pack_blobs([crafted(self.context, 0, c1, self._n)] * he.n_chunks(self._n))
                self._ask(f"{label} alone", "dave", 0, [forged], ["carol"], total)
                self._ask(f"{label} as carol's", "dave", 0, [forged if p == "carol" else sent[p] for p in everyone],
                          everyone, total)
            self._ask("a wrong total", "dave", 0, honest, everyone, total + 1)
            self._ask("round 0, honest", "dave", 0, honest, everyone, total)  # what dave may decrypt, once
        else:
            self._ask("dave round 0 again", "dave", 0, honest, everyone, total)
            self._ask(f"bob round {number} again", "bob", number, honest, everyone, total)


@pytest.fixture
def attacked(monkeypatch):
    monkeypatch.setitem(aggregation_stack.PRIVACY_MODES, 3, (Attacking, HomomorphicParticipant))
    Attacking.answers = {}
    aggregator, alice, outcome, pooled = federation(3)
    return aggregator, alice, Attacking.answers, pooled


def test_a_malicious_aggregator_gets_no_decryption_but_the_committed_sum_once_per_round(attacked):
    aggregator, alice, answers, pooled = attacked
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    assert np.max(np.abs(aggregator.weights[0] - pooled.mean(axis=0))) < 1e-5  # the honest rounds still work
    assert answers.pop("round 0, honest") == "decrypted"
    refused = {
        "bob round 0": "already decrypted that round's sum once",
        "bob round 1": "sent no encrypted update in that round",
        "bob round 7": "sent no encrypted update in that round",
        "bob round 1000000": "sent no encrypted update in that round",
        "carol's update alone": "not at least 2 distinct participants of the task including this one",
        "carol's update in place of dave's": "the ciphertexts forwarded as dave's update are not the ones dave "
                                             "recorded on the ledger",
        "a subset": "the sum committed on the ledger first is of ['bob', 'carol', 'dave']",
        "a subset, committed second": "the sum committed on the ledger first is of ['bob', 'carol', 'dave']",
        "c0=0, c1=1 alone": "not at least 2 distinct participants",
        "c0=0, c1=1 as carol's": "the ciphertexts forwarded as carol's update are not the ones carol recorded "
                                 "on the ledger",
        "c0=0, c1=P alone": "not at least 2 distinct participants",
        "c0=0, c1=P as carol's": "the ciphertexts forwarded as carol's update are not the ones carol recorded "
                                 "on the ledger",
        "a wrong total": "the sum committed on the ledger first is of ['bob', 'carol', 'dave'] with total",
        "dave round 0 again": "already decrypted that round's sum once",
        "bob round 1 again": "already decrypted that round's sum once",
    }
    assert sorted(answers) == sorted(refused)
    for label, reason in refused.items():
        assert answers[label].startswith("participant reported: PomError: "), (label, answers[label])
        assert reason in answers[label], (label, answers[label])


# -- what the checks keep from leaking ---------------------------------------------------------

def test_crafted_ciphertexts_would_give_away_the_key_and_flooding_drowns_what_reaches_a_decryption():
    key, other = he.new_secret_context(), he.new_secret_context()
    probe = crafted(key, 0, 1, he.SLOTS)
    exact = he.decrypt(key, [probe], he.SLOTS)  # c0 + c1 * s = s: the secret key, encoded
    assert np.any(exact != 0) and np.array_equal(exact, he.decrypt(key, [probe], he.SLOTS))
    under_other = he.decrypt(other, [crafted(other, 0, 1, he.SLOTS)], he.SLOTS)
    assert np.max(np.abs(exact - under_other)) > 0.5 * np.max(np.abs(exact))  # a function of the key
    assert 1.6e-8 < he.flooding_sigma(10, 100 * 10) < 1.8e-8  # 10 participants, 100 rounds (the README's figure)
    sigma = he.flooding_sigma(1, 1000)
    assert np.max(np.abs(exact)) < 1e-9 * sigma  # what the key contributes is far below the noise
    released = [he.decrypt_sum(key, [[probe]], he.SLOTS, decryptions=1000) for _ in range(2)]
    for values in released:
        assert 0.9 * sigma < np.std(values) < 1.1 * sigma
    assert not np.array_equal(released[0], released[1])  # fresh noise on every decryption


def test_a_decryption_that_is_larger_than_honest_updates_can_sum_to_is_not_released():
    key = he.new_secret_context()
    with pytest.raises(PomError, match="more than honest updates can add up to"):
        he.decrypt_sum(key, [[crafted(key, 2 ** 115, 0, 10)]], 10, decryptions=1)


def test_a_refused_update_leaves_the_encrypted_sum_untouched():
    key = he.new_secret_context()
    length = he.SLOTS + 100  # two chunks
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=length), rng.normal(size=length)
    total = he.add_into(None, he.read_ciphertexts(key, he.encrypt(key, first, 3), length))
    before = np.concatenate([ct.decrypt() for ct in total])
    good = he.encrypt(key, second, 3)
    wrong_scale = [good[0], ts.ckks_vector(key, second[he.SLOTS:], scale=2.0 ** 80).serialize()]
    with pytest.raises(PomError, match="ciphertext 1 is not a fresh POM 3 encryption"):
        he.read_ciphertexts(key, wrong_scale, length)
    chunks = [ts.ckks_vector_from(key, blob) for blob in wrong_scale]  # past the reader: add_into checks too
    with pytest.raises(PomError, match="chunk 1 cannot be added"):
        he.add_into(total, chunks)
    assert np.array_equal(np.concatenate([ct.decrypt() for ct in total]), before)  # chunk 0 was not added
    summed = he.add_into(total, he.read_ciphertexts(key, good, length))
    assert np.max(np.abs(np.concatenate([ct.decrypt() for ct in summed]) - (first + second))) < 1e-6


def test_every_task_gets_its_own_key():
    one, two = he.new_secret_context(), he.new_secret_context()
    message = np.linspace(-3, 3, 50)
    blobs = he.encrypt(one, message, 2)
    assert 250_000 < len(blobs[0]) < 270_000  # one ciphertext: two 60-bit data primes, 8192 coefficients, 2 polynomials
    assert np.max(np.abs(he.decrypt(one, blobs, 50) - message)) < 1e-6
    assert np.max(np.abs(he.decrypt(two, blobs, 50) - message)) > 1.0  # another task's key reads garbage
    assert he.secret_context_bytes(one) != he.secret_context_bytes(two)


def test_the_aggregator_context_cannot_decrypt_and_has_pom3_parameters():
    key = he.new_secret_context()
    public = he.load_context(he.public_context_bytes(key), secret=False)
    cts = he.read_ciphertexts(public, he.encrypt(key, np.ones(5), 2), 5)
    with pytest.raises(ValueError, match="secret"):
        cts[0].decrypt()
    with pytest.raises(PomError, match="secret key"):
        he.load_context(he.secret_context_bytes(key), secret=False)
    small = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 60],
                       encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    with pytest.raises(PomError, match="POM 3's parameters"):
        he.load_context(small.serialize(save_secret_key=False), secret=False)


def test_after_decrypting_a_round_a_participant_sends_no_update_for_it_again():
    part = SimpleNamespace(channel=SimpleNamespace(task="t", name="bob"), definition={"pom": 3})
    encoding = HomomorphicParticipant(part)
    encoding.context, encoding._decrypted = he.new_secret_context(), {3}
    for number in (3, 2, 0):
        with pytest.raises(PomError, match="already decrypted the sum of round 3"):
            encoding.encode({"round": number}, [np.zeros(2)], {"n_samples": 5})


def test_only_the_task_creator_may_commit_to_a_sum_on_the_ledger():
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform,
                     identity=Ed25519PrivateKey.generate())
    alice.create_task("t", {"pom": 3, "quorum": 2})
    bob = register("bob", "bob-password", "beta", platform="inproc", inproc=platform,
                   identity=Ed25519PrivateKey.generate())
    bob.join_task("t", site_data(0, 10).schema())
    commit = {"round": 0, "contributors": ["bob", "carol"], "n_samples": 20}
    with pytest.raises(PermissionDenied, match="a participant may not author sum_committed entries"):
        publish(bob.transport, "t", "bob", bob.identity, COMMIT, commit)
    assert publish(alice.transport, "t", "alice", alice.identity, COMMIT, commit)["entry"]["type"] == COMMIT
