"""One participant's side of a POM 2 round (Bonawitz et al. 2017, staged as in Flower's SecAgg+).

The object lives for exactly one round: its two X25519 key pairs (``c`` to encrypt shares,
``s`` for the pairwise masks) and its self-mask seed ``b_u`` are generated afresh in the
constructor, and every stage method may be called once, in order:

1. ``advertise_keys()``            -> signed key announcement
2. ``share_keys(key_broadcast)``   -> Shamir shares of ``b_u`` and ``s_u``, encrypted per peer
3. ``masked_input(share_delivery, update, weight)`` -> ``y_u`` (the only vector that leaves)
4. ``check_consistency(consistency_request)`` -> an Ed25519 signature on this participant's view
   of the round (parameters, who shared keys with which keys, who survived)
5. ``unmask(unmask_request)``      -> b-shares of survivors, s-shares of dropped peers, only after
   checking that at least ``threshold`` survivors signed exactly the same view

Stage 4 is the consistency check of Bonawitz et al.: without it an aggregator can tell the victim
that only it and t-1 peers shared keys and tell the others that those peers dropped, and so
collect both the victim's self-mask and its peers' mask keys (tests/unit/test_secagg_consistency.py).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from werkbund.algorithms.privacy.secagg.config import SecAggConfig
from werkbund.algorithms.privacy.secagg.crypto import (
    SEED_BYTES, aead_decrypt, aead_encrypt, agree, commit_seed, new_x25519, pair_info, prg,
    shamir_split, x25519_private_bytes, x25519_public_bytes,
)
from werkbund.algorithms.privacy.secagg.errors import SecAggConsistencyError, SecAggError
from werkbund.algorithms.privacy.secagg.messages import (
    CONSISTENCY, CONSISTENCY_REQUEST, KEY_BROADCAST, MASKED_INPUT, SHARE_DELIVERY, SHARE_KEYS, UNMASK,
    UNMASK_REQUEST, check_stage, check_view_signatures, field, id_list, pack_shares, share_aad,
    sign_announcement, unpack_shares, verify_announcement, view_payload,
)

ENC_INFO = b"share-encryption"
MASK_INFO = b"pairwise-mask"


def pairwise_mask(seed: bytes, length: int, dtype: np.dtype, sign: int) -> np.ndarray:
    """``+PRG(seed)`` or ``-PRG(seed)`` modulo ``2**k``."""
    mask = prg(seed, length, dtype)
    return mask if sign > 0 else (np.zeros_like(mask) - mask)


class SecAggParticipant:
    """Participant ``participant_id`` in one secure-aggregation round."""

    def __init__(self, setup: dict | SecAggConfig, participant_id: str,
                 identity_key: Ed25519PrivateKey, identity_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.config = setup if isinstance(setup, SecAggConfig) else SecAggConfig.from_message(setup)
        self.id = participant_id
        self.index = self.config.index(participant_id)
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise SecAggError("the identity key must be a cryptography Ed25519PrivateKey")
        self._identity = identity_key
        self._identity_keys = dict(identity_keys)
        self._c_sk = new_x25519()
        self._s_sk = new_x25519()
        self._b = os.urandom(SEED_BYTES)
        self._commitment = commit_seed(self._b, self.config.round_id, self.id)
        self._stage = 0
        self._keys: dict[str, dict] = {}           # U1: verified announcements by sender
        self._u2: list[str] = []
        self._u3: list[str] = []
        self._view: bytes | None = None            # what this participant signed in stage 4
        self._held_b: dict[str, bytes] = {}        # shares this participant holds, by owner
        self._held_s: dict[str, bytes] = {}

    @property
    def commitment(self) -> bytes:
        """The commitment to this round's self-mask seed that ``advertise_keys`` announces."""
        return self._commitment

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected:
            raise SecAggError(f"{self.id}: {name} called out of order or twice")
        self._stage = expected + 1

    # -- stage 1 ----------------------------------------------------------------------------
    def advertise_keys(self) -> dict:
        """``{"stage": "advertise_keys", "round_id", "sender", "c_pk", "s_pk", "b_commitment",
        "signature"}``: fresh public keys and a commitment to ``b_u``, signed with Ed25519."""
        self._advance(0, "advertise_keys")
        return sign_announcement(self._identity, self.config.round_id, self.id,
                                   x25519_public_bytes(self._c_sk), x25519_public_bytes(self._s_sk),
                                   self._commitment)

    # -- stage 2 ----------------------------------------------------------------------------
    def share_keys(self, broadcast: dict) -> dict:
        """Verify every announcement, then send each peer its shares of ``b_u`` and ``s_u``.

        Returns ``{"stage": "share_keys", "round_id", "sender",
        "ciphertexts": [{"recipient": v, "ciphertext": bytes}, ...]}``.
        """
        self._advance(1, "share_keys")
        cfg = self.config
        msg = check_stage(broadcast, KEY_BROADCAST, cfg.round_id)
        anns = field(msg, "announcements", list)
        for raw in anns:
            ann = verify_announcement(raw, cfg.round_id, cfg.participants, self._identity_keys)
            if ann["sender"] in self._keys:
                raise SecAggError(f"the key broadcast lists {ann['sender']!r} twice")
            self._keys[ann["sender"]] = ann
        mine = self._keys.get(self.id)
        if mine is None or mine["c_pk"] != x25519_public_bytes(self._c_sk) \
                or mine["s_pk"] != x25519_public_bytes(self._s_sk):
            raise SecAggError(f"{self.id}: the key broadcast does not carry this participant's own keys")
        pks = [a["c_pk"] for a in self._keys.values()] + [a["s_pk"] for a in self._keys.values()]
        if len(set(pks)) != len(pks):
            raise SecAggError("the key broadcast repeats a public key")
        cfg.require(len(self._keys), "advertised keys")

        b_shares = dict(shamir_split(self._b, cfg.threshold, cfg.n))
        s_shares = dict(shamir_split(x25519_private_bytes(self._s_sk), cfg.threshold, cfg.n))
        self._held_b[self.id] = b_shares[self.index]
        self._held_s[self.id] = s_shares[self.index]
        out = []
        for peer in sorted(self._keys):
            if peer == self.id:
                continue
            key = agree(self._c_sk, self._keys[peer]["c_pk"],
                        pair_info(ENC_INFO, cfg.round_id, self.id, peer))
            j = cfg.index(peer)
            plain = pack_shares(self.id, peer, b_shares[j], s_shares[j])
            out.append({"recipient": peer,
                        "ciphertext": aead_encrypt(key, plain, share_aad(cfg.round_id, self.id, peer))})
        return {"stage": SHARE_KEYS, "round_id": cfg.round_id, "sender": self.id, "ciphertexts": out}

    # -- stage 3 ----------------------------------------------------------------------------
    def masked_input(self, delivery: dict, update: np.ndarray, weight: float) -> dict:
        """Store the shares addressed to this participant and send the masked, weighted update.

        ``delivery`` is ``{"stage": "share_delivery", "round_id", "recipient", "senders": U2,
        "ciphertexts": [{"sender": v, "ciphertext": bytes}, ...]}``.  Returns ``{"stage":
        "masked_input", "round_id", "sender", "weight", "masked": uint array}`` with
        ``masked = enc(weight * update) + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)``.
        """
        self._advance(2, "masked_input")
        cfg = self.config
        msg = check_stage(delivery, SHARE_DELIVERY, cfg.round_id)
        if field(msg, "recipient", str) != self.id:
            raise SecAggError(f"{self.id}: the share delivery is addressed to someone else")
        u2 = id_list(msg, "senders")
        if self.id not in u2 or any(v not in self._keys for v in u2):
            raise SecAggError(f"{self.id}: the share delivery names senders outside the key broadcast")
        cfg.require(len(u2), "shared keys")
        got: dict[str, bytes] = {}
        for item in field(msg, "ciphertexts", list):
            if not isinstance(item, dict):
                raise SecAggError("ciphertexts must be a list of dicts")
            sender = field(item, "sender", str)
            if sender not in u2 or sender == self.id or sender in got:
                raise SecAggError(f"{self.id}: unexpected or repeated ciphertext from {sender!r}")
            got[sender] = field(item, "ciphertext", bytes)
        if set(got) != set(u2) - {self.id}:
            raise SecAggError(f"{self.id}: the share delivery lacks the shares of some senders")
        for sender, blob in got.items():
            key = agree(self._c_sk, self._keys[sender]["c_pk"],
                        pair_info(ENC_INFO, cfg.round_id, sender, self.id))
            plain = aead_decrypt(key, blob, share_aad(cfg.round_id, sender, self.id))
            self._held_b[sender], self._held_s[sender] = unpack_shares(plain, sender, self.id)
        self._u2 = sorted(u2)

        enc = cfg.encoder()
        if np.asarray(update).shape != (cfg.vector_length,):
            raise SecAggError(f"the update must have shape ({cfg.vector_length},)")
        y = enc.encode(update, weight)
        y += prg(self._b, cfg.vector_length, enc.dtype)
        for peer in self._u2:
            if peer == self.id:
                continue
            seed = agree(self._s_sk, self._keys[peer]["s_pk"],
                         pair_info(MASK_INFO, cfg.round_id, self.id, peer))
            y += pairwise_mask(seed, cfg.vector_length, enc.dtype, +1 if cfg.index(peer) > self.index else -1)
        w = int(weight) if float(weight).is_integer() else float(weight)
        return {"stage": MASKED_INPUT, "round_id": cfg.round_id, "sender": self.id,
                "weight": w, "masked": y}

    # -- stage 4 ----------------------------------------------------------------------------
    def check_consistency(self, request: dict) -> dict:
        """Sign this participant's view of the round: the parameters, U2 with its keys, and U3.

        ``request`` is ``{"stage": "consistency_request", "round_id", "survivors": U3}``; U3 must lie
        in this participant's U2, include it and have at least ``threshold`` members.  Returns
        ``{"stage": "consistency", "round_id", "sender", "signature": 64 bytes}``.  Signs once per
        round, so it cannot vouch for two stories.
        """
        self._advance(3, "check_consistency")
        cfg = self.config
        msg = check_stage(request, CONSISTENCY_REQUEST, cfg.round_id)
        survivors = id_list(msg, "survivors")
        if self.id not in survivors:
            raise SecAggConsistencyError(f"{self.id}: the consistency request lists this participant as dropped")
        outside = sorted(set(survivors) - set(self._u2))
        if outside:
            raise SecAggConsistencyError(f"{self.id}: the consistency request names survivors that did not share "
                                         f"keys with this participant ({', '.join(outside)})")
        cfg.require(len(survivors), "survived")
        self._u3 = sorted(survivors)
        self._view = view_payload(cfg.to_message(), [self._keys[v] for v in self._u2], self._u3)
        return {"stage": CONSISTENCY, "round_id": cfg.round_id, "sender": self.id,
                "signature": self._identity.sign(self._view)}

    # -- stage 5 ----------------------------------------------------------------------------
    def unmask(self, request: dict) -> dict:
        """Release b-shares of the survivors and s-shares of the dropped, never both for one peer.

        ``request`` is ``{"stage": "unmask_request", "round_id", "survivors": [...], "dropped":
        [...], "signatures": [{"sender", "signature"}]}``: the survivors must be the U3 this
        participant signed, the dropped the rest of its U2, and at least ``threshold`` survivors
        must have signed the same view (``check_consistency``); otherwise ``SecAggConsistencyError``
        and nothing is released.  Returns ``{"stage": "unmask", "round_id", "sender", "b_shares":
        [{"owner", "share"}], "s_shares": [{"owner", "share"}]}``.  May be called once per round.
        """
        self._advance(4, "unmask")
        cfg = self.config
        msg = check_stage(request, UNMASK_REQUEST, cfg.round_id)
        survivors, dropped = id_list(msg, "survivors"), id_list(msg, "dropped")
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise SecAggError(f"{self.id}: refusing an unmask request that asks for both the self-mask "
                              f"share and the mask-key share of {both[0]!r}; that would reveal its input")
        if set(survivors) | set(dropped) != set(self._u2):
            raise SecAggError(f"{self.id}: the unmask request does not split the {len(self._u2)} "
                              f"participants that shared keys into survivors and dropped")
        if self.id not in survivors:
            raise SecAggError(f"{self.id}: the unmask request lists this participant as dropped")
        if sorted(survivors) != self._u3:
            raise SecAggConsistencyError(f"{self.id}: the unmask request names other survivors than the "
                                         "consistency request this participant signed")
        check_view_signatures(msg.get("signatures"), self._view, self._u3, cfg.threshold,
                              self._identity_keys, self.id)
        out = {"stage": UNMASK, "round_id": cfg.round_id, "sender": self.id,
               "b_shares": [{"owner": v, "share": self._held_b[v]} for v in sorted(survivors)],
               "s_shares": [{"owner": v, "share": self._held_s[v]} for v in sorted(dropped)]}
        self._held_b.clear()
        self._held_s.clear()
        self._b = self._s_sk = self._c_sk = self._view = None  # the round is over for this participant
        return out
