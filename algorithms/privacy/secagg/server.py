"""The aggregator's side of a POM 2 round: routes messages and unmasks only the sum.

Stage methods, in order (each ``receive_*`` may be called once per participant message; each
closing method ends its stage, and participants whose message has not arrived by then count as
dropped):

1. ``receive_announcement(msg)`` ...  ``key_broadcast()``     -> one message for everyone in U1
2. ``receive_shares(msg)`` ...        ``share_deliveries()``  -> {participant: message} for U2
3. ``receive_masked_input(msg)`` ...  ``consistency_request()`` -> one message for the survivors U3
4. ``receive_consistency(msg)`` ...   ``unmask_request()``    -> U3, U2 - U3 and the signatures
5. ``receive_unmask(msg)`` ...        ``finalize()``          -> ``SecAggResult``

Stage 4 is the consistency check of Bonawitz et al. (2017): every survivor signs its view of the
round, and a participant releases shares only against ``threshold`` signatures on its own view.

Every closing method raises ``SecAggError`` when fewer than ``threshold`` participants are left.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from werkbund.algorithms.privacy.secagg.config import SecAggConfig
from werkbund.algorithms.privacy.secagg.crypto import (
    agree, commit_seed, load_x25519_private, pair_info, prg, reconstruct_checked, x25519_public_bytes,
)
from werkbund.algorithms.privacy.secagg.errors import SecAggError
from werkbund.algorithms.privacy.secagg.messages import (
    CONSISTENCY, CONSISTENCY_REQUEST, KEY_BROADCAST, MASKED_INPUT, SHARE_DELIVERY, SHARE_KEYS, UNMASK,
    UNMASK_REQUEST, check_stage, field, share_list, vector, verify_announcement, view_payload,
)
from werkbund.algorithms.privacy.secagg.participant import MASK_INFO


@dataclass(frozen=True)
class SecAggResult:
    """The unmasked outcome: ``weighted_sum = sum_{u in survivors} weight_u * clip(update_u)``."""

    weighted_sum: np.ndarray       # float64
    total_weight: float
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]       # shared keys but sent no masked input (their input is excluded)

    def mean(self) -> np.ndarray:
        """The FedAvg of the survivors' updates."""
        if self.total_weight <= 0:
            raise SecAggError("the survivors' total weight is zero; there is no mean")
        return self.weighted_sum / self.total_weight


class SecAggServer:
    """Aggregator state machine for one round; it never holds a secret key of a participant
    except the mask keys of participants that dropped out before sending their masked input."""

    def __init__(self, config: SecAggConfig, identity_keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not isinstance(config, SecAggConfig):
            raise SecAggError("the server needs a SecAggConfig")
        self.config = config
        self._identity_keys = dict(identity_keys)
        self._stage = 1
        self._keys: dict[str, dict] = {}
        self._shares: dict[str, dict[str, bytes]] = {}      # sender -> recipient -> ciphertext
        self._masked: dict[str, np.ndarray] = {}
        self._weights: dict[str, float] = {}
        self._survivors: list[str] = []
        self._dropped: list[str] = []
        self._signatures: dict[str, bytes] = {}             # consistency signatures by survivor
        self._b_shares: dict[str, dict[str, bytes]] = {}    # responder -> owner -> share
        self._s_shares: dict[str, dict[str, bytes]] = {}
        self._unmasked: np.ndarray | None = None            # the stripped sum, once t shares are in

    @property
    def advertised(self) -> list[str]:
        """The participants whose key announcement was accepted (U1)."""
        return sorted(self._keys)

    @property
    def shared(self) -> list[str]:
        """The participants whose encrypted shares were accepted (U2)."""
        return sorted(self._shares)

    def setup_message(self) -> dict:
        """The round's parameters for every participant (``SecAggConfig.to_message``)."""
        return self.config.to_message()

    def _in_stage(self, stage: int, name: str) -> None:
        if self._stage != stage:
            raise SecAggError(f"{name} is not allowed at stage {self._stage} of the round")

    def _sender(self, msg: dict, allowed: Mapping | list, seen: Mapping) -> str:
        sender = field(msg, "sender", str)
        if sender not in allowed:
            raise SecAggError(f"{sender!r} may not take part in stage {msg['stage']!r}")
        if sender in seen:
            raise SecAggError(f"{sender!r} already sent its {msg['stage']!r} message")
        return sender

    # -- stage 1: advertise keys -----------------------------------------------------------------
    def receive_announcement(self, msg: dict) -> None:
        """Accept a key announcement after checking its Ed25519 signature (refused if forged)."""
        self._in_stage(1, "receive_announcement")
        ann = verify_announcement(msg, self.config.round_id, self.config.participants, self._identity_keys)
        if ann["sender"] in self._keys:
            raise SecAggError(f"{ann['sender']!r} already sent its key announcement")
        self._keys[ann["sender"]] = ann

    def key_broadcast(self) -> dict:
        """``{"stage": "key_broadcast", "round_id", "announcements": [signed announcements]}``."""
        self._in_stage(1, "key_broadcast")
        self.config.require(len(self._keys), "advertised keys")
        self._stage = 2
        return {"stage": KEY_BROADCAST, "round_id": self.config.round_id,
                "announcements": [dict(self._keys[p]) for p in sorted(self._keys)]}

    # -- stage 2: share keys -----------------------------------------------------------------
    def receive_shares(self, msg: dict) -> None:
        self._in_stage(2, "receive_shares")
        msg = check_stage(msg, SHARE_KEYS, self.config.round_id)
        sender = self._sender(msg, self._keys, self._shares)
        routed: dict[str, bytes] = {}
        for item in field(msg, "ciphertexts", list):
            if not isinstance(item, dict):
                raise SecAggError("ciphertexts must be a list of dicts")
            to = field(item, "recipient", str)
            if to not in self._keys or to == sender or to in routed:
                raise SecAggError(f"{sender!r} sent a share to an unexpected recipient {to!r}")
            routed[to] = field(item, "ciphertext", bytes)
        if set(routed) != set(self._keys) - {sender}:
            raise SecAggError(f"{sender!r} did not send shares to every participant that advertised keys")
        self._shares[sender] = routed

    def share_deliveries(self) -> dict[str, dict]:
        """Per participant v in U2: ``{"stage": "share_delivery", "round_id", "recipient": v,
        "senders": U2, "ciphertexts": [{"sender": u, "ciphertext": bytes}, ...]}``."""
        self._in_stage(2, "share_deliveries")
        self.config.require(len(self._shares), "shared keys")
        self._stage = 3
        u2 = sorted(self._shares)
        return {v: {"stage": SHARE_DELIVERY, "round_id": self.config.round_id, "recipient": v,
                    "senders": list(u2),
                    "ciphertexts": [{"sender": u, "ciphertext": self._shares[u][v]} for u in u2 if u != v]}
                for v in u2}

    # -- stage 3: masked input collection -----------------------------------------------------
    def commitment(self, sender: str) -> bytes | None:
        """The self-mask commitment ``sender`` announced for this round (None: it announced none)."""
        return (self._keys.get(sender) or {}).get("b_commitment")

    def receive_masked_input(self, msg: dict) -> None:
        self._in_stage(3, "receive_masked_input")
        cfg = self.config
        msg = check_stage(msg, MASKED_INPUT, cfg.round_id)
        sender = self._sender(msg, self._shares, self._masked)
        weight = field(msg, "weight", (int, float))
        if not 0 <= weight <= cfg.max_weight:
            raise SecAggError(f"{sender!r} declared weight {weight!r}, outside [0, {cfg.max_weight:g}]")
        self._masked[sender] = vector(msg, "masked", cfg.encoder().dtype, cfg.vector_length).copy()
        self._weights[sender] = weight

    def consistency_request(self) -> dict:
        """``{"stage": "consistency_request", "round_id", "survivors": U3}``."""
        self._in_stage(3, "consistency_request")
        self.config.require(len(self._masked), "survived")
        self._stage = 4
        self._survivors = sorted(self._masked)
        self._dropped = sorted(set(self._shares) - set(self._masked))
        return {"stage": CONSISTENCY_REQUEST, "round_id": self.config.round_id, "survivors": list(self._survivors)}

    # -- stage 4: consistency check ---------------------------------------------------------
    def receive_consistency(self, msg: dict) -> None:
        """Accept a survivor's signature on the view this server showed everyone (refused if it
        does not verify: that participant was shown something else, or the message is forged)."""
        self._in_stage(4, "receive_consistency")
        msg = check_stage(msg, CONSISTENCY, self.config.round_id)
        sender = self._sender(msg, self._survivors, self._signatures)
        sig = field(msg, "signature", bytes, 64)
        view = view_payload(self.config.to_message(), [self._keys[v] for v in self._shares], self._survivors)
        try:
            self._identity_keys[sender].verify(sig, view)
        except InvalidSignature:
            raise SecAggError(f"{sender!r} signed another view of the round than the one it was sent") from None
        self._signatures[sender] = sig

    def unmask_request(self) -> dict:
        """``{"stage": "unmask_request", "round_id", "survivors": U3, "dropped": U2 - U3,
        "signatures": [{"sender", "signature"}]}`` for the survivors that signed."""
        self._in_stage(4, "unmask_request")
        self.config.require(len(self._signatures), "signed the consistency check")
        self._stage = 5
        return {"stage": UNMASK_REQUEST, "round_id": self.config.round_id,
                "survivors": list(self._survivors), "dropped": list(self._dropped),
                "signatures": [{"sender": u, "signature": self._signatures[u]} for u in sorted(self._signatures)]}

    # -- stage 5: unmasking -------------------------------------------------------------------
    def receive_unmask(self, msg: dict) -> None:
        self._in_stage(5, "receive_unmask")
        msg = check_stage(msg, UNMASK, self.config.round_id)
        sender = self._sender(msg, self._signatures, self._b_shares)
        b, s = share_list(msg, "b_shares"), share_list(msg, "s_shares")
        if set(b) != set(self._survivors) or set(s) != set(self._dropped):
            raise SecAggError(f"{sender!r} answered the unmask request with the wrong set of shares")
        self._b_shares[sender], self._s_shares[sender] = b, s
        if len(self._b_shares) == self.config.threshold:
            # enough shares to strip every mask: do it now, while the other responders are still
            # answering; a failed check is left for finalize to report
            try:
                self._unmasked = self._strip_masks(list(self._b_shares))
            except SecAggError:
                self._unmasked = None

    def finalize(self) -> SecAggResult:
        """Reconstruct (and check) the seeds, strip the masks and decode the weighted sum."""
        self._in_stage(5, "finalize")
        cfg = self.config
        cfg.require(len(self._b_shares), "answered the unmask request")
        self._stage = 6
        total = self._unmasked
        if total is None:
            # any t responders determine every secret; interpolating through more costs O(n^2)
            # GF(2^128) products in pure Python for nothing (a wrong share is caught by the check)
            total = self._strip_masks(sorted(self._b_shares, key=cfg.index)[:cfg.threshold])
        weighted = cfg.encoder().decode(total)
        return SecAggResult(weighted, float(sum(self._weights[u] for u in self._survivors)),
                            tuple(self._survivors), tuple(self._dropped))

    def _strip_masks(self, responders: list[str]) -> np.ndarray:
        """The survivors' masked inputs summed, with every self-mask and dropped peer's mask removed,
        from the shares of ``responders`` (t of them)."""
        cfg = self.config
        n, dt, rid = cfg.vector_length, cfg.encoder().dtype, cfg.round_id
        total = np.zeros(n, dtype=dt)
        for u in self._survivors:
            total += self._masked[u]
        for u in self._survivors:
            shares = [(cfg.index(r), self._b_shares[r][u]) for r in responders]
            commitment = self._keys[u]["b_commitment"]
            b = reconstruct_checked(shares, cfg.threshold,
                                    lambda x, u=u, c=commitment: commit_seed(x, rid, u) == c,
                                    f"the self-mask seed of {u!r}")
            total -= prg(b, n, dt)
        for v in self._dropped:
            shares = [(cfg.index(r), self._s_shares[r][v]) for r in responders]
            s_pk = self._keys[v]["s_pk"]
            raw = reconstruct_checked(shares, cfg.threshold,
                                      lambda x, pk=s_pk: x25519_public_bytes(load_x25519_private(x)) == pk,
                                      f"the mask key of {v!r}")
            s_sk = load_x25519_private(raw)
            for u in self._survivors:
                seed = agree(s_sk, self._keys[u]["s_pk"], pair_info(MASK_INFO, rid, u, v))
                mask = prg(seed, n, dt)
                if cfg.index(v) > cfg.index(u):   # u added +PRG(s_uv) for v > u
                    total -= mask
                else:
                    total += mask
        return total
