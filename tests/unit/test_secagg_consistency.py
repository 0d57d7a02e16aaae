"""POM 2 against an aggregator that tells participants different stories (state-machine level).

The crafted aggregator of the issue: the victim is told that only it and t-1 peers (P) shared
keys, so its masked input carries pairwise masks with P alone; every other participant is told
that some of P dropped, so it releases mask-key shares of those peers, while everyone releases
self-mask shares of the victim. Each participant answers once, never releases both shares of
one peer and always sees at least t survivors; still, without a check that the views agree, the
aggregator collects t self-mask shares of the victim and t mask-key shares of each peer in P and
strips the victim's masks: its update comes out exactly.

Before the consistency check (stage 4) was added, this test failed for every n from 3 to 12: the
victim's update came out with an error below 1e-11 for n = 5 and 7..12, and for n = 3, 4, 6 (where
the shares do not add up) every participant still answered. With it, every participant refuses
with SecAggConsistencyError before releasing a share, whichever signatures the aggregator forwards.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.secagg_rounds import exchange_keys

from werkbund.algorithms.privacy import SecAggConfig, SecAggError, SecAggParticipant, SecAggServer
from werkbund.algorithms.privacy.secagg import crypto as sc
from werkbund.algorithms.privacy.secagg.errors import SecAggConsistencyError, SecAggRosterError
from werkbund.algorithms.privacy.secagg.participant import MASK_INFO
from werkbund.algorithms.privacy.secagg.aggregation import SecureAggregationParticipant
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform

D = 200


def crafted_round(n: int):
    names = [f"p{i:02d}" for i in range(n)]
    t = n // 2 + 1
    cfg = SecAggConfig(round_id="task-1/0", participants=tuple(names), threshold=t, vector_length=D,
                       clip_range=1.0, max_weight=1000)
    sk = {p: Ed25519PrivateKey.generate() for p in names}
    pk = {p: k.public_key() for p, k in sk.items()}
    server = SecAggServer(cfg, pk)
    parts = {p: SecAggParticipant(cfg.to_message(), p, sk[p], pk) for p in names}
    return cfg, server, parts


def dropped_sets(names, victim, peers, n, t):
    """Which peers of P each other participant is told dropped: every peer in P by t of them,
    nobody told of more than n - t dropouts (so each still sees t survivors); the best the
    aggregator can do (it falls short for some n, where the attack cannot work at all)."""
    others = [p for p in names if p != victim]
    told = {r: set() for r in others}
    for p in peers:
        able = sorted((r for r in others if r != p and len(told[r]) < n - t), key=lambda r: (len(told[r]), r))
        for r in able[:t]:
            told[r].add(p)
    return told


def recover(cfg, server_keys, masked, victim, peers, b_shares, s_shares):
    """The aggregator strips the victim's masks with the shares it collected; None if it cannot."""
    t, rid, dt = cfg.threshold, cfg.round_id, np.uint64
    if len(b_shares) < t or any(len(s_shares.get(p, [])) < t for p in peers):
        return None
    try:
        b = sc.reconstruct_checked(b_shares[:t], t, lambda x: sc.commit_seed(x, rid, victim)
                                   == server_keys[victim]["b_commitment"], "b")
        y = masked.copy() - sc.prg(b, cfg.vector_length, dt)
        for p in peers:
            raw = sc.reconstruct_checked(s_shares[p][:t], t, lambda x, p=p: sc.x25519_public_bytes(
                sc.load_x25519_private(x)) == server_keys[p]["s_pk"], "s")
            seed = sc.agree(sc.load_x25519_private(raw), server_keys[victim]["s_pk"],
                            sc.pair_info(MASK_INFO, rid, victim, p))
            mask = sc.prg(seed, cfg.vector_length, dt)
            y = y - mask if cfg.index(p) > cfg.index(victim) else y + mask
    except SecAggError:
        return None
    return cfg.encoder().decode(y)


@pytest.mark.parametrize("forward", ["alike", "all"])
@pytest.mark.parametrize("n", range(3, 13))
def test_an_aggregator_that_tells_different_stories_learns_nothing_and_is_refused(n, forward):
    cfg, server, parts = crafted_round(n)
    names, t = list(cfg.participants), cfg.threshold
    victim, peers = names[0], names[1:t]
    rng = np.random.default_rng(n)
    xs = {p: rng.uniform(-1, 1, D) for p in names}
    weight = 7

    broadcast, deliveries = exchange_keys(server, parts)
    keys = {a["sender"]: a for a in broadcast["announcements"]}
    # the victim's story: only it and P shared keys
    own = deliveries[victim]
    deliveries[victim] = dict(own, senders=[victim] + peers,
                              ciphertexts=[c for c in own["ciphertexts"] if c["sender"] in peers])
    masked = {p: parts[p].masked_input(deliveries[p], xs[p], weight)["masked"] for p in names}

    told = dropped_sets(names, victim, peers, n, t)
    stories = {victim: ([victim] + peers, [])}
    for r, gone in told.items():
        stories[r] = (sorted(set(names) - gone), sorted(gone))
    # the consistency check: each participant signs the story it was told ...
    signed = {}
    for r in names:
        request = {"stage": "consistency_request", "round_id": cfg.round_id, "survivors": stories[r][0]}
        signed[r] = parts[r].check_consistency(request)["signature"]
    # ... and the aggregator passes on the signatures of those told the same story (its best try:
    # any other signature fails to verify), or all of them
    shared = {r: deliveries[r]["senders"] for r in names}
    b_shares, s_shares, refusals = [], {}, {}
    for r in names:
        survivors, dropped = stories[r]
        alike = [u for u in survivors if forward == "all" or (stories[u], shared[u]) == (stories[r], shared[r])]
        request = {"stage": "unmask_request", "round_id": cfg.round_id, "survivors": survivors, "dropped": dropped,
                   "signatures": [{"sender": u, "signature": signed[u]} for u in alike]}
        try:
            reply = parts[r].unmask(request)
        except SecAggConsistencyError as exc:
            refusals[r] = exc
            continue
        index = cfg.index(r)
        b_shares += [(index, s["share"]) for s in reply["b_shares"] if s["owner"] == victim]
        for s in reply["s_shares"]:
            s_shares.setdefault(s["owner"], []).append((index, s["share"]))

    recovered = recover(cfg, keys, masked[victim], victim, peers, b_shares, s_shares)
    leaked = recovered is not None and np.max(np.abs(recovered / weight - xs[victim])) < 1e-11
    assert not leaked, f"the victim's update came out (n={n}, t={t})"
    assert recovered is None
    # every participant refuses, with a typed error, before it releases a share
    assert sorted(refusals) == names, f"answered: {sorted(set(names) - set(refusals))}"
    assert all("refusing to release any share" in str(exc) for exc in refusals.values())


def test_the_aggregator_side_refuses_a_signature_on_another_view_and_needs_t_of_them():
    cfg, server, parts = crafted_round(4)  # t = 3
    _, deliveries = exchange_keys(server, parts)
    for name, p in parts.items():
        server.receive_masked_input(p.masked_input(deliveries[name], np.zeros(D), 1))
    check = server.consistency_request()
    assert check["survivors"] == sorted(parts)
    # p00 was shown another survivor set than the one this server holds: its signature does not count
    other = parts["p00"].check_consistency(dict(check, survivors=["p00", "p01", "p02"]))
    with pytest.raises(SecAggError, match="'p00' signed another view of the round"):
        server.receive_consistency(other)
    for name in ("p01", "p02"):
        server.receive_consistency(parts[name].check_consistency(check))
    with pytest.raises(SecAggError, match="only 2 of 4 participants signed the consistency check; the threshold is 3"):
        server.unmask_request()


# -- the roster and threshold each participant checks against the task ---------------------------

def started_task(pom_options=None, joiners=("bob", "carol", "dave", "erin")):
    """A started POM 2 task on the in-process platform (the real core and ledger); returns the
    creator's channel and each participant's POM 2 encoding over its own channel."""
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform,
                     identity=Ed25519PrivateKey.generate())
    definition = {"algorithm": "neural_network", "quorum": len(joiners), "rounds": 2, "pom": 2}
    if pom_options:
        definition["pom_options"] = pom_options
    alice.create_task("t", definition)
    register("mallory", "mallory-password", "evil", platform="inproc", inproc=platform,
             identity=Ed25519PrivateKey.generate())  # registered, never joined
    encodings = {}
    for name in joiners:
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                        identity=Ed25519PrivateKey.generate())
        user.join_task("t")
        encodings[name] = user
    creator = alice.aggregator("t")
    creator.start()
    for name, user in encodings.items():
        handle = user.participant("t")
        encodings[name] = SecureAggregationParticipant(SimpleNamespace(channel=handle, definition=handle.definition))
    return creator, encodings


def setup_for(roster, threshold, number=0):
    return SecAggConfig(round_id=f"t/{number}", participants=tuple(roster), threshold=threshold, vector_length=10,
                        clip_range=64.0, max_weight=float(1 << 20)).to_message()


def delivered(encoding, creator, setup):
    """The set-up as the aggregator sends it, handled by the participant's encoding; the reply."""
    creator.send(encoding.channel.name, "secagg_setup", round=0, setup=setup)
    message = encoding.channel.receive(timeout=5)
    encoding.handle(message)
    return creator.receive(timeout=5)


def test_a_participant_refuses_a_roster_or_threshold_that_does_not_match_the_task():
    creator, parts = started_task()  # 4 joined, no pom_options.threshold: the task's threshold is 3
    everyone = sorted(parts)
    # a stranger on the roster (registered, but it never joined this task)
    with pytest.raises(SecAggRosterError, match=r"'mallory', who did not join the task"):
        delivered(parts["bob"], creator, setup_for(everyone + ["mallory"], 3))
    # {victim, one colluder}: consistent in itself (t = 2 of 2), but below the task's threshold
    with pytest.raises(SecAggRosterError, match=r"threshold 2 is below the task's 3 .* majority of the 4 that joined"):
        delivered(parts["bob"], creator, setup_for(["bob", "carol"], 2))
    # the full roster with the smallest threshold that SecAggConfig would allow for fewer people
    with pytest.raises(SecAggRosterError, match="below the task's 3"):
        delivered(parts["carol"], creator, setup_for(["bob", "carol", "dave"], 2))
    # the task's threshold with three of the four (one dropped) is accepted: the signed keys go out
    reply = delivered(parts["dave"], creator, setup_for(["bob", "carol", "dave"], 3))
    assert reply.kind == "secagg_keys" and reply.sender == "dave"


def test_a_participant_refuses_a_threshold_below_the_tasks_pom_options_threshold():
    creator, parts = started_task(pom_options={"threshold": 4})
    with pytest.raises(SecAggRosterError, match=r"threshold 3 is below the task's 4 \(pom_options.threshold 4"):
        delivered(parts["erin"], creator, setup_for(sorted(parts), 3))
    reply = delivered(parts["erin"], creator, setup_for(sorted(parts), 4))
    assert reply.kind == "secagg_keys"
