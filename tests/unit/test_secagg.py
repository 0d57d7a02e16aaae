"""POM 2 secure aggregation: the transport-independent state machines in werkbund.algorithms.privacy."""
from __future__ import annotations

import os

import numpy as np
import pytest
from Crypto.Cipher import AES
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from support.secagg_rounds import exchange_keys

from werkbund.algorithms.privacy import (
    FixedPointEncoder, SecAggConfig, SecAggError, SecAggOverflowError, SecAggParticipant, SecAggServer,
    SecAggSignatureError,
)
from werkbund.algorithms.privacy.secagg import crypto as sc
from werkbund.algorithms.strategies.fedavg import FedAvg

D = 1000
ALPHA = 1e-4  # fixed significance level of the uniformity tests


def ids(n):
    return [f"p{i:02d}" for i in range(n)]


def identities(names):
    sk = {p: Ed25519PrivateKey.generate() for p in names}
    return sk, {p: k.public_key() for p, k in sk.items()}


def make_round(n=10, t=None, clip=1.0, max_weight=1000, bits=64, round_id="task-1/round-3"):
    names = ids(n)
    cfg = SecAggConfig(round_id=round_id, participants=tuple(names), threshold=t or n // 2 + 1,
                       vector_length=D, clip_range=clip, max_weight=max_weight, modulus_bits=bits)
    sk, pk = identities(names)
    server = SecAggServer(cfg, pk)
    setup = server.setup_message()
    parts = {p: SecAggParticipant(setup, p, sk[p], pk) for p in names}
    return cfg, server, parts


def updates_for(names, seed=0, max_weight=1000):
    rng = np.random.default_rng(seed)
    xs = {p: rng.uniform(-1, 1, D).astype(np.float32) for p in names}
    ws = {p: int(rng.integers(1, max_weight + 1)) for p in names}
    return xs, ws


def run(server, parts, xs, ws, no_masked=(), no_unmask=(), record=None, log=None):
    """Drive one round; participants in ``no_masked`` drop before sending their masked input,
    those in ``no_unmask`` send it and then drop before the unmasking stage.  ``log`` collects
    every message in both directions."""
    log = [] if log is None else log

    def note(msg):
        log.append(msg)
        return msg

    note(server.setup_message())
    for p in parts.values():
        server.receive_announcement(note(p.advertise_keys()))
    broadcast = note(server.key_broadcast())
    for p in parts.values():
        server.receive_shares(note(p.share_keys(broadcast)))
    deliveries = server.share_deliveries()
    log.extend(deliveries.values())
    for name, p in parts.items():
        if name in no_masked:
            continue
        msg = note(p.masked_input(deliveries[name], xs[name], ws[name]))
        if record is not None:
            record[name] = msg
        server.receive_masked_input(msg)
    check = note(server.consistency_request())
    for name, p in parts.items():
        if name in no_masked:
            continue
        server.receive_consistency(note(p.check_consistency(check)))
    request = note(server.unmask_request())
    for name, p in parts.items():
        if name in no_masked or name in no_unmask:
            continue
        server.receive_unmask(note(p.unmask(request)))
    return server.finalize()


def plain_sum(xs, ws, names):
    return sum(ws[p] * xs[p].astype(np.float64) for p in names)


@pytest.mark.parametrize("bits", [64, 32])
def test_aggregate_equals_plain_weighted_sum(bits):
    max_weight = 1000 if bits == 64 else 20
    cfg, server, parts = make_round(n=6, max_weight=max_weight, bits=bits)
    xs, ws = updates_for(parts, max_weight=max_weight)
    res = run(server, parts, xs, ws)
    step = cfg.encoder().quantization_step
    assert res.total_weight == sum(ws.values())
    assert res.weighted_sum.dtype == np.float64
    assert np.max(np.abs(res.weighted_sum - plain_sum(xs, ws, parts))) <= len(parts) * step
    # the same as POM 1 (plain FedAvg of the same updates)
    fedavg = FedAvg()
    fedavg.begin_round([np.zeros(D, np.float32)])
    for p in parts:
        fedavg.add([xs[p]], ws[p], p)
    assert np.allclose(res.mean(), fedavg.result()[0], atol=1e-6)
    assert res.survivors == tuple(sorted(parts)) and res.dropped == ()


def test_masked_input_differs_from_update_and_looks_uniform(monkeypatch):
    encoded = {}
    orig = FixedPointEncoder.encode

    def recording(self, vector, weight):
        out = orig(self, vector, weight)
        encoded[id(vector)] = out.copy()
        return out

    monkeypatch.setattr(FixedPointEncoder, "encode", recording)
    cfg, server, parts = make_round(n=10)
    xs, ws = updates_for(parts)
    sent = {}
    res = run(server, parts, xs, ws, record=sent)
    assert np.max(np.abs(res.weighted_sum - plain_sum(xs, ws, parts))) <= 10 * cfg.encoder().quantization_step

    masked = np.concatenate([sent[p]["masked"] for p in parts])
    plain = np.concatenate([encoded[id(xs[p])] for p in parts])
    assert masked.dtype == np.uint64 and masked.shape == plain.shape == (10 * D,)
    assert np.mean(masked == plain) < 0.01

    def chi2_top_byte(v):  # 256 bins, about 39 expected per bin
        counts = np.bincount((v >> np.uint64(56)).astype(np.int64), minlength=256)
        return stats.chisquare(counts).pvalue

    def ks_uniform(v):
        return stats.kstest(v.astype(np.float64) / 2.0 ** 64, "uniform").pvalue

    # what the server receives passes both tests at the fixed level ...
    assert chi2_top_byte(masked) > ALPHA
    assert ks_uniform(masked) > ALPHA
    # ... and the same tests do reject the unmasked encodings, so they cannot pass by construction
    assert chi2_top_byte(plain) < ALPHA
    assert ks_uniform(plain) < ALPHA
    # each single masked vector decodes to nothing like the update
    dec = cfg.encoder().decode(sent["p03"]["masked"]) / ws["p03"]
    assert np.mean(np.abs(dec - xs["p03"]) < 1.0) < 0.01


def test_two_of_ten_drop_before_masked_input():
    cfg, server, parts = make_round(n=10, t=6)
    xs, ws = updates_for(parts, seed=1)
    gone = ("p02", "p07")
    res = run(server, parts, xs, ws, no_masked=gone)
    alive = [p for p in parts if p not in gone]
    assert res.survivors == tuple(alive) and res.dropped == gone
    assert res.total_weight == sum(ws[p] for p in alive)
    assert np.max(np.abs(res.weighted_sum - plain_sum(xs, ws, alive))) <= 8 * cfg.encoder().quantization_step


def test_two_of_ten_drop_after_sending_masked_input():
    cfg, server, parts = make_round(n=10, t=6)
    xs, ws = updates_for(parts, seed=2)
    res = run(server, parts, xs, ws, no_unmask=("p00", "p09"))
    # their masked inputs arrived, so they are in the sum; the other 8 hold enough shares
    assert res.survivors == tuple(parts)
    assert np.max(np.abs(res.weighted_sum - plain_sum(xs, ws, parts))) <= 10 * cfg.encoder().quantization_step


def test_fewer_survivors_than_threshold_fails_clearly():
    cfg, server, parts = make_round(n=10, t=6)
    xs, ws = updates_for(parts)
    with pytest.raises(SecAggError, match=r"only 5 of 10 participants survived; the threshold is 6"):
        run(server, parts, xs, ws, no_masked=("p01", "p03", "p05", "p07", "p09"))

    cfg, server, parts = make_round(n=10, t=6)
    with pytest.raises(SecAggError, match=r"only 5 of 10 participants answered the unmask request; "
                                          r"the threshold is 6"):
        run(server, parts, xs, ws, no_masked=("p01", "p03"), no_unmask=("p05", "p07", "p09"))


def test_forged_or_unsigned_announcement_is_refused():
    cfg, server, parts = make_round(n=4, t=3)
    mallory = Ed25519PrivateKey.generate()
    honest = parts["p01"].advertise_keys()
    forged = dict(honest)
    forged["signature"] = mallory.sign(b"anything")
    with pytest.raises(SecAggSignatureError, match="forged or invalid signature"):
        server.receive_announcement(forged)
    unsigned = {k: v for k, v in honest.items() if k != "signature"}
    with pytest.raises(SecAggSignatureError, match="not signed"):
        server.receive_announcement(unsigned)
    swapped = dict(honest, s_pk=sc.x25519_public_bytes(sc.new_x25519()))
    with pytest.raises(SecAggSignatureError, match="forged"):
        server.receive_announcement(swapped)
    server.receive_announcement(honest)  # the genuine one is accepted

    # a participant refuses a broadcast in which the server replaced someone's keys
    cfg, server, parts = make_round(n=4, t=3)
    for p in parts.values():
        server.receive_announcement(p.advertise_keys())
    broadcast = server.key_broadcast()
    evil = sc.new_x25519()
    broadcast["announcements"][2] = dict(broadcast["announcements"][2], c_pk=sc.x25519_public_bytes(evil))
    with pytest.raises(SecAggSignatureError, match=r"'p02' has a forged"):
        parts["p00"].share_keys(broadcast)


def test_participant_never_releases_both_shares_of_one_peer():
    cfg, server, parts = make_round(n=5, t=3)
    xs, ws = updates_for(parts)
    _, deliveries = exchange_keys(server, parts)
    for name, p in parts.items():
        server.receive_masked_input(p.masked_input(deliveries[name], xs[name], ws[name]))
    check = server.consistency_request()
    for p in parts.values():
        server.receive_consistency(p.check_consistency(check))
    honest = server.unmask_request()
    greedy = dict(honest, dropped=["p03"])  # p03 is also listed as a survivor
    with pytest.raises(SecAggError, match=r"both the self-mask share and the mask-key share of 'p03'"):
        parts["p00"].unmask(greedy)
    # a refused participant does not answer a second request either (no second chance to leak)
    with pytest.raises(SecAggError, match="out of order or twice"):
        parts["p00"].unmask(honest)
    # a partition that leaves a peer out is refused as well
    with pytest.raises(SecAggError, match="does not split"):
        parts["p01"].unmask(dict(honest, survivors=["p01", "p02", "p03"]))
    reply = parts["p02"].unmask(honest)
    assert [s["owner"] for s in reply["b_shares"]] == sorted(parts) and reply["s_shares"] == []


def test_overflow_bound_is_checked():
    with pytest.raises(SecAggOverflowError, match=r"10 participants x max_weight 1e\+06 x clip_range 10"):
        FixedPointEncoder(clip_range=10, max_weight=1e6, n_participants=10, modulus_bits=32)
    with pytest.raises(SecAggOverflowError, match="overflows"):
        FixedPointEncoder(clip_range=1, max_weight=1000, n_participants=10, modulus_bits=64, frac_bits=60)
    with pytest.raises(SecAggOverflowError):
        SecAggConfig("r", tuple(ids(10)), 6, D, clip_range=100.0, max_weight=1e7, modulus_bits=32)
    enc = FixedPointEncoder(clip_range=1, max_weight=1000, n_participants=10)
    with pytest.raises(SecAggError, match="outside"):
        enc.encode(np.zeros(D, np.float32), 1001)
    # at the bound, the worst case (all at +clip or all at -clip with max weight) does not wrap
    for bits in (32, 64):
        enc = FixedPointEncoder(clip_range=2.0, max_weight=50, n_participants=10, modulus_bits=bits)
        for sign in (1, -1):
            total = np.zeros(D, enc.dtype)
            for _ in range(10):
                total += enc.encode(np.full(D, sign * 5.0, np.float32), 50)  # clipped to +-2
            assert np.allclose(enc.decode(total), sign * 10 * 50 * 2.0, atol=10 / enc.scale)


def test_stochastic_rounding_is_unbiased():
    enc = FixedPointEncoder(clip_range=1, max_weight=1, n_participants=2, frac_bits=8)
    x = np.full(20000, 0.3 / 256, np.float64)  # 0.3 of one quantization step
    dec = enc.decode(enc.encode(x, 1))
    assert set(np.unique(dec)) <= {0.0, 1 / 256}
    assert abs(dec.mean() * 256 - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)


def test_shamir_reconstruction_is_checked():
    secret = os.urandom(32)
    shares = sc.shamir_split(secret, 6, 10)
    ok = lambda x: x == secret  # noqa: E731
    assert sc.reconstruct_checked(shares[3:9], 6, ok, "s") == secret
    assert sc.shamir_combine(shares[:5]) != secret  # too few shares silently give garbage ...
    with pytest.raises(SecAggError, match="5 shares, the threshold is 6"):
        sc.reconstruct_checked(shares[:5], 6, ok, "the seed")
    with pytest.raises(SecAggError, match="failed its check"):  # ... which the check catches
        sc.reconstruct_checked(shares[:5], 5, ok, "the seed")
    bad = list(shares[:6])
    bad[2] = (bad[2][0], bytes(32))
    with pytest.raises(SecAggError, match="failed its check"):
        sc.reconstruct_checked(bad, 6, ok, "the seed")


def test_server_detects_a_wrong_share_in_unmasking():
    cfg, server, parts = make_round(n=5, t=3)
    xs, ws = updates_for(parts)
    _, deliveries = exchange_keys(server, parts)
    for name in ("p00", "p01", "p02", "p03"):
        server.receive_masked_input(parts[name].masked_input(deliveries[name], xs[name], ws[name]))
    check = server.consistency_request()
    for name in ("p00", "p01", "p02", "p03"):
        server.receive_consistency(parts[name].check_consistency(check))
    request = server.unmask_request()
    for name in ("p00", "p01", "p02", "p03"):
        reply = parts[name].unmask(request)
        if name == "p01":
            reply["s_shares"][0]["share"] = os.urandom(32)  # p04's mask-key share
        server.receive_unmask(reply)
    with pytest.raises(SecAggError, match=r"mask key of 'p04' failed its check"):
        server.finalize()


def test_threshold_must_exceed_half():
    with pytest.raises(SecAggError, match=r"6 <= t <= 10"):
        SecAggConfig("r", tuple(ids(10)), 5, D, 1.0, 10)
    with pytest.raises(SecAggError):
        SecAggConfig("r", tuple(ids(10)), 11, D, 1.0, 10)
    assert SecAggConfig("r", tuple(ids(10)), 6, D, 1.0, 10).threshold == 6


def test_fresh_keys_each_round_and_stage_order():
    names = ids(3)
    sk, pk = identities(names)
    anns = []
    for r in ("round-1", "round-2"):
        cfg = SecAggConfig(r, tuple(names), 2, D, 1.0, 10)
        p = SecAggParticipant(cfg.to_message(), "p00", sk["p00"], pk)
        anns.append(p.advertise_keys())
        with pytest.raises(SecAggError, match="out of order or twice"):
            p.advertise_keys()
    for key in ("c_pk", "s_pk", "b_commitment"):
        assert anns[0][key] != anns[1][key]
    # an announcement replayed into another round is refused
    server = SecAggServer(SecAggConfig("round-2", tuple(names), 2, D, 1.0, 10), pk)
    with pytest.raises(SecAggError, match="belongs to round 'round-1'"):
        server.receive_announcement(anns[0])


def test_tampered_share_ciphertext_is_refused():
    cfg, server, parts = make_round(n=3, t=2)
    delivery = exchange_keys(server, parts)[1]["p00"]
    ct = bytearray(delivery["ciphertexts"][0]["ciphertext"])
    ct[-1] ^= 1
    delivery["ciphertexts"][0]["ciphertext"] = bytes(ct)
    with pytest.raises(SecAggError, match="failed authentication"):
        parts["p00"].masked_input(delivery, np.zeros(D, np.float32), 1)


def test_mask_generator_is_aes_ctr_over_the_full_seed():
    seed = os.urandom(32)
    ref = AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(8 * 64))
    assert sc.prg(seed, 64, np.uint64).tobytes() == ref
    assert sc.prg(seed, 128, np.uint32).tobytes() == ref
    other = seed[:31] + bytes([seed[31] ^ 1])
    assert not np.array_equal(sc.prg(other, 64, np.uint64), sc.prg(seed, 64, np.uint64))


def test_messages_are_plain_data():
    cfg, server, parts = make_round(n=3, t=2)
    xs, ws = updates_for(parts)
    log = []
    run(server, parts, xs, ws, log=log)

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        if isinstance(v, np.ndarray):
            return v.dtype.kind in "uif"
        return type(v) in (bytes, int, float, str)

    stages = [msg["stage"] for msg in log]
    assert stages.count("advertise_keys") == 3 and stages.count("consistency") == 3
    assert stages.count("unmask") == 3 and len(log) == 22
    assert all(plain(msg) for msg in log)
