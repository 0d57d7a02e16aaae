"""Plain-message helpers: field checks, signed key announcements, share plaintexts.

Messages are dicts whose values are str, int, float, bytes, lists (of str or of such dicts) or
NumPy arrays; nothing is pickled, so any transport that can carry those (JSON with base64 for
bytes and arrays, msgpack, AMQP bodies) can carry a round.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from werkbund.algorithms.privacy.secagg.crypto import SHARE_BYTES
from werkbund.algorithms.privacy.secagg.errors import SecAggConsistencyError, SecAggError, SecAggSignatureError

ADVERTISE = "advertise_keys"
KEY_BROADCAST = "key_broadcast"
SHARE_KEYS = "share_keys"
SHARE_DELIVERY = "share_delivery"
MASKED_INPUT = "masked_input"
CONSISTENCY_REQUEST = "consistency_request"
CONSISTENCY = "consistency"
UNMASK_REQUEST = "unmask_request"
UNMASK = "unmask"


def pack(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part prefixed by its 4-byte length."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def unpack(blob: bytes, count: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(blob):
            raise SecAggError("a packed message is truncated")
        size = int.from_bytes(blob[pos:pos + 4], "big")
        pos += 4
        if pos + size > len(blob):
            raise SecAggError("a packed message is truncated")
        out.append(bytes(blob[pos:pos + size]))
        pos += size
    if pos != len(blob):
        raise SecAggError("a packed message has trailing bytes")
    return out


def check_stage(msg: object, stage: str, round_id: str) -> dict:
    if not isinstance(msg, dict):
        raise SecAggError(f"a {stage} message must be a dict, got {type(msg).__name__}")
    if msg.get("stage") != stage:
        raise SecAggError(f"expected a {stage!r} message, got stage {msg.get('stage')!r}")
    if msg.get("round_id") != round_id:
        raise SecAggError(f"a {stage} message belongs to round {msg.get('round_id')!r}, not {round_id!r}")
    return msg


def field(msg: dict, key: str, kind: type | tuple[type, ...], size: int | None = None):
    """``msg[key]``, checked to be of ``kind`` (and ``size`` bytes long for bytes)."""
    if key not in msg:
        raise SecAggError(f"a {msg.get('stage')} message lacks {key!r}")
    value = msg[key]
    if isinstance(value, bytearray):
        value = bytes(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SecAggError(f"{key!r} of a {msg.get('stage')} message has the wrong type")
    if size is not None and len(value) != size:
        raise SecAggError(f"{key!r} of a {msg.get('stage')} message must be {size} bytes")
    return value


def id_list(msg: dict, key: str) -> list[str]:
    ids = field(msg, key, list)
    if any(not isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise SecAggError(f"{key!r} must be a list of distinct participant ids")
    return list(ids)


def share_list(msg: dict, key: str) -> dict[str, bytes]:
    """A list of ``{"owner": id, "share": 32 bytes}`` as a mapping owner -> share."""
    out: dict[str, bytes] = {}
    for item in field(msg, key, list):
        if not isinstance(item, dict):
            raise SecAggError(f"{key!r} must be a list of dicts")
        owner = field(item, "owner", str)
        if owner in out:
            raise SecAggError(f"{key!r} names {owner!r} twice")
        out[owner] = field(item, "share", bytes, SHARE_BYTES)
    return out


def vector(msg: dict, key: str, dtype: np.dtype, length: int) -> np.ndarray:
    arr = msg.get(key)
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (length,):
        raise SecAggError(f"{key!r} must be a {dtype} vector of length {length}")
    return arr


# -- signed key announcements -----------------------------------------------------------------

def _announcement_payload(round_id: str, sender: str, c_pk: bytes, s_pk: bytes, commitment: bytes) -> bytes:
    return pack(b"werkbund-secagg-v1", ADVERTISE.encode(), round_id.encode(), sender.encode(),
                c_pk, s_pk, commitment)


def sign_announcement(identity_key: Ed25519PrivateKey, round_id: str, sender: str,
                      c_pk: bytes, s_pk: bytes, commitment: bytes) -> dict:
    if not isinstance(identity_key, Ed25519PrivateKey):
        raise SecAggError("the identity key must be a cryptography Ed25519PrivateKey")
    sig = identity_key.sign(_announcement_payload(round_id, sender, c_pk, s_pk, commitment))
    return {"stage": ADVERTISE, "round_id": round_id, "sender": sender, "c_pk": c_pk,
            "s_pk": s_pk, "b_commitment": commitment, "signature": sig}


def verify_announcement(msg: object, round_id: str, roster: tuple[str, ...],
                        identity_keys: Mapping[str, Ed25519PublicKey]) -> dict:
    """Check a key announcement and its Ed25519 signature; return it normalised.

    Raises ``SecAggSignatureError`` if the announcement is unsigned, signed by someone else, or
    altered after signing, and ``SecAggError`` if it is malformed or off the roster.
    """
    msg = check_stage(msg, ADVERTISE, round_id)
    sender = field(msg, "sender", str)
    if sender not in roster:
        raise SecAggError(f"{sender!r} is not on the roster of round {round_id!r}")
    c_pk = field(msg, "c_pk", bytes, 32)
    s_pk = field(msg, "s_pk", bytes, 32)
    commitment = field(msg, "b_commitment", bytes, 32)
    sig = msg.get("signature")
    if not isinstance(sig, (bytes, bytearray)) or len(sig) != 64:
        raise SecAggSignatureError(f"the key announcement of {sender!r} is not signed")
    key = identity_keys.get(sender)
    if not isinstance(key, Ed25519PublicKey):
        raise SecAggSignatureError(f"no Ed25519 identity key is registered for {sender!r}")
    try:
        key.verify(bytes(sig), _announcement_payload(round_id, sender, c_pk, s_pk, commitment))
    except InvalidSignature:
        raise SecAggSignatureError(
            f"the key announcement of {sender!r} has a forged or invalid signature") from None
    return {"stage": ADVERTISE, "round_id": round_id, "sender": sender, "c_pk": c_pk,
            "s_pk": s_pk, "b_commitment": commitment, "signature": bytes(sig)}


# -- the consistency check: every participant signs its view of the round ------------------------

def view_payload(config: dict, announcements: list[dict], survivors: list[str]) -> bytes:
    """What a participant signs in the consistency check (Bonawitz et al. 2017, round 4): the
    round's parameters (``SecAggConfig.to_message``), the participants that shared keys with it
    (U2) with the keys and commitment each announced, and the survivors (U3) it was told of.
    Two participants sign the same bytes only if the aggregator told them the same story."""
    params = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    u2 = [pack(a["sender"].encode(), a["c_pk"], a["s_pk"], a["b_commitment"])
          for a in sorted(announcements, key=lambda a: a["sender"])]
    return pack(b"werkbund-secagg-v1", CONSISTENCY.encode(), str(config.get("round_id")).encode(), params,
                pack(*u2), pack(*(s.encode() for s in sorted(survivors))))


def check_view_signatures(signatures: object, payload: bytes, survivors: list[str], threshold: int,
                          identity_keys: Mapping[str, Ed25519PublicKey], who: str) -> list[str]:
    """The signers, after checking that at least ``threshold`` survivors signed ``payload``.

    Raises ``SecAggConsistencyError`` for a signature that does not verify (its signer saw another
    view, or it is forged), a signer who is not a survivor, or too few signatures."""
    if not isinstance(signatures, list):
        raise SecAggConsistencyError(f"{who}: the unmask request carries no list of consistency signatures")
    signers: list[str] = []
    for item in signatures:
        if not isinstance(item, dict):
            raise SecAggConsistencyError(f"{who}: a consistency signature must be a dict")
        signer, sig = item.get("sender"), item.get("signature")
        if not isinstance(signer, str) or signer not in survivors or signer in signers:
            raise SecAggConsistencyError(f"{who}: a consistency signature names {signer!r}, who is not a "
                                         "survivor or signed twice")
        key = identity_keys.get(signer)
        if isinstance(sig, bytearray):
            sig = bytes(sig)
        try:
            if not isinstance(sig, bytes) or not isinstance(key, Ed25519PublicKey):
                raise InvalidSignature
            key.verify(sig, payload)
        except InvalidSignature:
            raise SecAggConsistencyError(
                f"{who}: {signer!r} did not sign this participant's view of the round: the aggregator told "
                "participants different stories (who shared keys, who survived, or the round's parameters); "
                "refusing to release any share") from None
        signers.append(signer)
    if len(signers) < threshold:
        raise SecAggConsistencyError(f"{who}: only {len(signers)} survivors signed this participant's view of "
                                     f"the round; the threshold is {threshold}; refusing to release any share")
    return signers


# -- share plaintexts (encrypted u -> v with AES-GCM) -----------------------------------------

def share_aad(round_id: str, sender: str, recipient: str) -> bytes:
    return pack(b"werkbund-secagg-v1", SHARE_KEYS.encode(), round_id.encode(), sender.encode(),
                recipient.encode())


def pack_shares(sender: str, recipient: str, b_share: bytes, s_share: bytes) -> bytes:
    return pack(sender.encode(), recipient.encode(), b_share, s_share)


def unpack_shares(plain: bytes, sender: str, recipient: str) -> tuple[bytes, bytes]:
    who, whom, b_share, s_share = unpack(plain, 4)
    if who != sender.encode() or whom != recipient.encode():
        raise SecAggError(f"a share from {sender!r} names the wrong sender or recipient")
    if len(b_share) != SHARE_BYTES or len(s_share) != SHARE_BYTES:
        raise SecAggError(f"a share from {sender!r} has the wrong length")
    return b_share, s_share
