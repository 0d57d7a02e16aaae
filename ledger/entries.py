"""Ledger entries and checkpoints: canonical JSON (RFC 8785) signed with Ed25519.

An entry is a JSON object with exactly the fields of :data:`ENTRY_FIELDS` (and, in format v2
below, ``"v": 2``)::

    {"task": "turbines", "type": "joined", "author": "alice", "seq": 3,
     "prev": "<64 hex: sha256 of entry 2's canonical bytes, 64 zeros for entry 0>",
     "timestamp": "2025-01-31T12:00:00.000000Z", "payload": {...}}

Its canonical bytes are its RFC 8785 serialisation; ``entry_hash`` is the hex
SHA-256 of them (what the next entry's ``prev`` holds) and the Merkle leaf is
``merkle.leaf_hash(canonical_bytes(entry))``. The author signs
``ENTRY_PREFIX + canonical bytes``.

Entry format v2 (``"v": 2``, issue 15): the log, not the author, sequences an entry. The
author signs a *statement*, the entry without ``seq`` and ``prev`` (fields
:data:`STATEMENT_FIELDS`), as ``ENTRY_V2_PREFIX + canonical bytes``; the platform appends it
at the head, fills in ``seq`` and ``prev`` and answers with a *promise*
``{"log", "seq", "leaf_hash", "timestamp"}`` signed ``PROMISE_PREFIX + canonical bytes`` with
its key. The Merkle leaf and ``prev`` stay those of the full sequenced entry, so sequence, chain
and tree checks are the same for both formats; an entry without ``v`` is v1 (signed whole,
``seq`` and ``prev`` included: platform entries, key changes and logs written before v2).

A checkpoint (signed tree head) is ``{"log", "size", "root", "timestamp"}`` with
the root in lowercase hex; the platform signs ``CHECKPOINT_PREFIX + canonical
bytes`` and members cosign ``COSIGN_PREFIX + canonical bytes``. The prefixes
keep a signature made for one purpose from being valid for another.

Encodings: public keys travel as the raw 32-byte Ed25519 key in standard base64
(RFC 4648 section 4, with padding: 44 characters); signatures as the raw
64 bytes, in standard base64 (88 characters) where text is needed; hashes as
lowercase hex.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from werkbund.ledger import merkle
from werkbund.ledger.canonical import CanonicalizationError, canonical_json

ENTRY_PREFIX = b"werkbund-ledger-entry-v1\x00"
ENTRY_V2_PREFIX = b"werkbund-ledger-entry-v2\x00"
PROMISE_PREFIX = b"werkbund-ledger-promise-v1\x00"
CHECKPOINT_PREFIX = b"werkbund-ledger-checkpoint-v1\x00"
COSIGN_PREFIX = b"werkbund-ledger-cosign-v1\x00"
KEY_STATEMENT_PREFIX = b"werkbund-key-statement-v1\x00"

ENTRY_TYPES = frozenset({
    "task_created", "joined", "left", "round_started", "update_submitted",
    "aggregate_published", "sum_committed", "task_finished", "task_failed", "maintenance",
    "key_rotated", "key_revoked", "key_registered", "key_reset",
})
ENTRY_FIELDS = ("task", "type", "author", "seq", "prev", "timestamp", "payload")
VERSION_FIELD = "v"  # present (and 2) only in a v2 entry and its statement
STATEMENT_FIELDS = (VERSION_FIELD, "task", "type", "author", "timestamp", "payload")
PROMISE_FIELDS = ("log", "seq", "leaf_hash", "timestamp")
CHECKPOINT_FIELDS = ("log", "size", "root", "timestamp")
GENESIS_PREV = "0" * 64
PLATFORM_AUTHOR = "platform"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


class EntryError(ValueError):
    """A malformed entry, checkpoint, key or signature encoding."""


# -- time -----------------------------------------------------------------


def utc_timestamp(when: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``: ``2025-01-31T12:00:00.000000Z``."""
    when = datetime.now(timezone.utc) if when is None else when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_timestamp(value, where: str) -> None:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise EntryError(f"{where}: timestamp must be ISO-8601 UTC ending in Z, got {value!r}")
    try:
        datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError as exc:
        raise EntryError(f"{where}: timestamp {value!r} is not a valid date: {exc}") from None


def _check_int(value, name: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EntryError(f"{where}: {name} must be a non-negative integer, got {value!r}")


def _check_name(value, name: str, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise EntryError(f"{where}: {name} must be a non-empty string, got {value!r}")


def _canonical(obj: dict, where: str) -> bytes:
    try:
        return canonical_json(obj)
    except CanonicalizationError as exc:
        raise EntryError(f"{where}: not canonicalisable JSON: {exc}") from None


# -- entries ----------------------------------------------------------------


def validate_entry(entry: dict) -> None:
    """Raise :class:`EntryError` unless ``entry`` is a well-formed ledger entry."""
    if not isinstance(entry, dict):
        raise EntryError(f"an entry must be a JSON object, got {type(entry).__name__}")
    seq = entry.get("seq")
    where = f"entry {seq}" if isinstance(seq, int) and not isinstance(seq, bool) else "entry"
    missing = [f for f in ENTRY_FIELDS if f not in entry]
    extra = sorted(set(entry) - set(ENTRY_FIELDS) - {VERSION_FIELD})
    if missing or extra:
        raise EntryError(f"{where}: missing fields {missing}, unexpected fields {extra}")
    _check_common(entry, where)
    _check_int(seq, "seq", where)
    prev = entry["prev"]
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise EntryError(f"{where}: prev must be 64 lowercase hex digits, got {prev!r}")
    if seq == 0 and prev != GENESIS_PREV:
        raise EntryError(f"{where}: the first entry's prev must be 64 zeros")


def _check_common(entry: dict, where: str) -> None:
    """The fields an entry and its statement share (version, names, type, timestamp, payload)."""
    if VERSION_FIELD in entry and (isinstance(entry[VERSION_FIELD], bool) or entry[VERSION_FIELD] != 2):
        raise EntryError(f"{where}: the only entry version with a {VERSION_FIELD!r} field is 2, "
                         f"got {entry[VERSION_FIELD]!r}")
    _check_name(entry["task"], "task", where)
    _check_name(entry["author"], "author", where)
    if entry["type"] not in ENTRY_TYPES:
        raise EntryError(f"{where}: unknown entry type {entry['type']!r}")
    _check_timestamp(entry["timestamp"], where)
    if not isinstance(entry["payload"], dict):
        raise EntryError(f"{where}: payload must be a JSON object")


def make_entry(task: str, type: str, author: str, seq: int, prev: str, payload: dict,
               timestamp: str | None = None) -> dict:
    """Build and validate an entry; ``timestamp`` defaults to now."""
    entry = {"task": task, "type": type, "author": author, "seq": seq, "prev": prev,
             "timestamp": timestamp or utc_timestamp(), "payload": payload}
    canonical_bytes(entry)
    return entry


def canonical_bytes(entry: dict) -> bytes:
    """The RFC 8785 bytes of a validated entry."""
    validate_entry(entry)
    return _canonical(entry, f"entry {entry['seq']}")


def entry_hash(entry: dict) -> str:
    """Lowercase hex SHA-256 of the entry's canonical bytes (the next entry's ``prev``)."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def entry_leaf_hash(entry: dict) -> bytes:
    """The entry's Merkle leaf hash: SHA-256(0x00 || canonical bytes)."""
    return merkle.leaf_hash(canonical_bytes(entry))


def sign_entry(entry: dict, private_key: Ed25519PrivateKey) -> bytes:
    """The author's 64-byte Ed25519 signature: over ENTRY_PREFIX + the canonical bytes of a v1
    entry, over ENTRY_V2_PREFIX + those of its statement for a v2 entry."""
    return private_key.sign(_signed_bytes(entry))


def _signed_bytes(entry: dict) -> bytes:
    """What the author of ``entry`` signs; the version field (or its absence) says which."""
    if is_v2(entry):
        validate_entry(entry)
        return ENTRY_V2_PREFIX + statement_bytes(statement_of(entry))
    return ENTRY_PREFIX + canonical_bytes(entry)


# -- v2: statements the log sequences, and the platform's promise -----------------


def is_v2(entry) -> bool:
    return isinstance(entry, dict) and VERSION_FIELD in entry


def validate_statement(statement: dict) -> None:
    """Raise :class:`EntryError` unless ``statement`` is a well-formed v2 statement."""
    if not isinstance(statement, dict):
        raise EntryError(f"a statement must be a JSON object, got {type(statement).__name__}")
    missing = [f for f in STATEMENT_FIELDS if f not in statement]
    extra = sorted(set(statement) - set(STATEMENT_FIELDS))
    if missing or extra:
        raise EntryError(f"statement: missing fields {missing}, unexpected fields {extra}")
    _check_common(statement, "statement")


def make_statement(task: str, type: str, author: str, payload: dict, timestamp: str | None = None) -> dict:
    """A v2 statement (an entry before the log gives it ``seq`` and ``prev``); ``timestamp``
    defaults to now (it also keeps two equal payloads of one author apart)."""
    statement = {VERSION_FIELD: 2, "task": task, "type": type, "author": author,
                 "timestamp": timestamp or utc_timestamp(), "payload": payload}
    statement_bytes(statement)
    return statement


def statement_bytes(statement: dict) -> bytes:
    validate_statement(statement)
    return _canonical(statement, "statement")


def statement_of(entry: dict) -> dict:
    """A v2 entry's statement: the entry without what the log filled in."""
    return {k: v for k, v in entry.items() if k not in ("seq", "prev")}


def statement_hash(entry: dict) -> str:
    """Hex SHA-256 of a v2 entry's statement: the same for a statement appended twice."""
    return hashlib.sha256(statement_bytes(statement_of(entry))).hexdigest()


def sequence(statement: dict, seq: int, prev: str) -> dict:
    """The v2 entry the log makes of ``statement`` at ``seq`` after the entry hashed ``prev``."""
    return sequenced(statement, seq, prev)[0]


def sequenced(statement: dict, seq: int, prev: str) -> tuple[dict, bytes]:
    """That entry and its canonical bytes (made once: the log stores and hashes them)."""
    entry = {**statement, "seq": seq, "prev": prev}
    return entry, canonical_bytes(entry)


def sign_statement(statement: dict, private_key: Ed25519PrivateKey) -> bytes:
    """The author's signature over ENTRY_V2_PREFIX + the statement's canonical bytes (valid for
    the entry the log makes of it at whatever seq)."""
    return private_key.sign(ENTRY_V2_PREFIX + statement_bytes(statement))


def verify_statement_signature(statement: dict, signature, public_key) -> bool:
    return verify_statement_bytes(statement_bytes(statement), signature, public_key)


def verify_statement_bytes(data: bytes, signature, public_key) -> bool:
    """:func:`verify_statement_signature` for a statement's canonical bytes, where the caller has them."""
    return _verify(ENTRY_V2_PREFIX, data, signature, public_key)


def make_promise(log: str, seq: int, leaf_hash: str, timestamp: str | None = None) -> dict:
    """What the platform promises on an append: ``leaf_hash`` is entry ``seq`` of ``log`` in every
    tree head it signs from now on."""
    return {"log": log, "seq": seq, "leaf_hash": leaf_hash, "timestamp": timestamp or utc_timestamp()}


def promise_bytes(promise: dict) -> bytes:
    if not isinstance(promise, dict) or set(promise) != set(PROMISE_FIELDS):
        raise EntryError(f"promise fields must be {list(PROMISE_FIELDS)}")
    _check_name(promise["log"], "log", "promise")
    _check_int(promise["seq"], "seq", "promise")
    if not isinstance(promise["leaf_hash"], str) or not _HEX64.fullmatch(promise["leaf_hash"]):
        raise EntryError("promise: leaf_hash must be 64 lowercase hex digits")
    _check_timestamp(promise["timestamp"], "promise")
    return _canonical(promise, "promise")


def sign_promise(promise: dict, private_key: Ed25519PrivateKey) -> bytes:
    return private_key.sign(PROMISE_PREFIX + promise_bytes(promise))


def verify_promise_signature(promise: dict, signature, public_key) -> bool:
    return _verify(PROMISE_PREFIX, promise_bytes(promise), signature, public_key)


def _verify(prefix: bytes, message: bytes, signature, public_key) -> bool:
    try:
        sig = decode_signature(signature)
        key = decode_public_key(public_key)
    except EntryError:
        return False
    try:
        key.verify(sig, prefix + message)
    except InvalidSignature:
        return False
    return True


def verify_entry_signature(entry: dict, signature, public_key) -> bool:
    """True when ``signature`` is the key holder's signature over this entry.

    ``signature`` may be raw bytes or base64; ``public_key`` an
    ``Ed25519PublicKey``, raw 32 bytes or base64. A malformed entry raises
    :class:`EntryError`; a bad key or signature encoding gives False.
    """
    return _verify(b"", _signed_bytes(entry), signature, public_key)


# -- checkpoints ---------------------------------------------------------


def validate_checkpoint(checkpoint: dict) -> None:
    """Raise :class:`EntryError` unless ``checkpoint`` is a well-formed tree head."""
    if not isinstance(checkpoint, dict):
        raise EntryError("a checkpoint must be a JSON object")
    if set(checkpoint) != set(CHECKPOINT_FIELDS):
        raise EntryError(f"checkpoint fields must be {list(CHECKPOINT_FIELDS)}, "
                         f"got {sorted(checkpoint)}")
    _check_name(checkpoint["log"], "log", "checkpoint")
    _check_int(checkpoint["size"], "size", "checkpoint")
    root = checkpoint["root"]
    if not isinstance(root, str) or not _HEX64.fullmatch(root):
        raise EntryError(f"checkpoint: root must be 64 lowercase hex digits, got {root!r}")
    _check_timestamp(checkpoint["timestamp"], "checkpoint")


def make_checkpoint(log: str, size: int, root: bytes | str, timestamp: str | None = None) -> dict:
    """A tree head for ``log``; ``root`` as 32 raw bytes or hex."""
    if isinstance(root, (bytes, bytearray)):
        root = bytes(root).hex()
    checkpoint = {"log": log, "size": size, "root": root,
                  "timestamp": timestamp or utc_timestamp()}
    validate_checkpoint(checkpoint)
    return checkpoint


def checkpoint_bytes(checkpoint: dict) -> bytes:
    """The RFC 8785 bytes of a validated checkpoint."""
    validate_checkpoint(checkpoint)
    return _canonical(checkpoint, "checkpoint")


def sign_checkpoint(checkpoint: dict, private_key: Ed25519PrivateKey) -> bytes:
    """The platform's signature over CHECKPOINT_PREFIX + canonical bytes."""
    return private_key.sign(CHECKPOINT_PREFIX + checkpoint_bytes(checkpoint))


def verify_checkpoint_signature(checkpoint: dict, signature, public_key) -> bool:
    return _verify(CHECKPOINT_PREFIX, checkpoint_bytes(checkpoint), signature, public_key)


def cosign_checkpoint(checkpoint: dict, private_key: Ed25519PrivateKey) -> bytes:
    """A member's cosignature over COSIGN_PREFIX + the checkpoint's canonical bytes."""
    return private_key.sign(COSIGN_PREFIX + checkpoint_bytes(checkpoint))


def verify_cosignature(checkpoint: dict, signature, public_key) -> bool:
    return _verify(COSIGN_PREFIX, checkpoint_bytes(checkpoint), signature, public_key)


# -- key statements ------------------------------------------------------------


def key_statement(kind: str, subject: str, previous_key: str, public_key: str | None,
                  reason: str = "") -> bytes:
    """What the holder of ``previous_key`` signs to rotate it (to ``public_key``) or revoke it
    (``public_key`` None), on no task's log: the proof the platform asks for when the user is in
    no task (the per-task ``key_rotated``/``key_revoked`` entries prove it otherwise). A key once
    used never comes back, so a statement cannot be replayed."""
    if kind not in ("key_rotated", "key_revoked"):
        raise EntryError(f"a key statement is key_rotated or key_revoked, not {kind!r}")
    body = {"kind": kind, "subject": subject, "previous_key": previous_key,
            "public_key": public_key, "reason": reason}
    return KEY_STATEMENT_PREFIX + canonical_json(body)


def verify_key_statement(statement: bytes, signature, public_key) -> bool:
    return _verify(b"", statement, signature, public_key)


# -- key and signature encodings -----------------------------------------------


def _b64decode(text, what: str) -> bytes:
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EntryError(f"{what} is not valid base64: {exc}") from None


def encode_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Standard base64 of the raw 32-byte public key (of a private key's pair, too)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(value: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from itself, its raw 32 bytes or their base64."""
    if isinstance(value, Ed25519PublicKey):
        return value
    raw = _b64decode(value, "public key") if isinstance(value, str) else value
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise EntryError("an Ed25519 public key is 32 raw bytes (44 base64 characters)")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


def encode_signature(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def decode_signature(value: bytes | str) -> bytes:
    """A 64-byte signature from raw bytes or base64."""
    raw = _b64decode(value, "signature") if isinstance(value, str) else value
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 64:
        raise EntryError("an Ed25519 signature is 64 raw bytes (88 base64 characters)")
    return bytes(raw)
