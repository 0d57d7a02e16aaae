"""What POM 2 and POM 3 need on the wire: JSON-safe headers, flat vectors, identity keys.

Task messages are a JSON header plus a binary payload (``client/messages.py``). Protocol dicts
that hold bytes (keys, signatures, encrypted shares) travel in the header with every bytes value
written as ``{"$b": base64}``; vectors travel as raw little-endian payloads whose length is
checked. Nothing is pickled. The participants' Ed25519 identity keys come from the task's
ledger as this member verifies it (the key history, signed and hash-linked), never from a
message, and never from the platform's word alone.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from werkbund.algorithms.privacy.secagg.errors import SecAggError
from werkbund.algorithms.privacy.secagg.messages import pack, unpack

_BYTES = "$b"
MAX_BLOBS = 100_000


class PomError(SecAggError):
    """A privacy-mode message or setting that cannot be used; the message says why."""


# -- headers -----------------------------------------------------------------------------------

def to_header(value):
    """A copy of ``value`` in which every bytes value is ``{"$b": base64}`` (JSON-safe)."""
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_header(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_header(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise PomError(f"a {type(value).__name__} cannot go in a message header")


def from_header(value):
    """Undo ``to_header``; a malformed ``{"$b": ...}`` raises ``PomError``."""
    if isinstance(value, dict):
        if set(value) == {_BYTES}:
            try:
                return base64.b64decode(value[_BYTES], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise PomError("a bytes field of the message is not valid base64") from None
        return {k: from_header(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_header(v) for v in value]
    return value


# -- vectors and blobs -------------------------------------------------------------------------

def vector_bytes(vector: np.ndarray, dtype) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def vector_from(payload: bytes, dtype, length: int) -> np.ndarray:
    """A ``length``-long vector of ``dtype`` read from raw little-endian bytes (length checked)."""
    dt = np.dtype(dtype).newbyteorder("<")
    if len(payload) != length * dt.itemsize:
        raise PomError(f"expected {length} values of {np.dtype(dtype).name} ({length * dt.itemsize} bytes), "
                       f"got {len(payload)} bytes")
    return np.frombuffer(payload, dtype=dt).astype(np.dtype(dtype), copy=True)


def pack_blobs(blobs: list[bytes]) -> bytes:
    """A count, then each blob prefixed by its 4-byte length (``secagg.messages.pack``)."""
    return len(blobs).to_bytes(4, "big") + pack(*(bytes(b) for b in blobs))


def unpack_blobs(data: bytes) -> list[bytes]:
    if len(data) < 4:
        raise PomError("a packed message is truncated")
    count = int.from_bytes(data[:4], "big")
    if count > MAX_BLOBS:
        raise PomError(f"a packed message claims {count} parts")
    try:
        return unpack(memoryview(data)[4:], count)
    except PomError:
        raise
    except SecAggError as exc:
        raise PomError(str(exc)) from None


# -- model weights as one flat vector ----------------------------------------------------------

def flatten(weights: list[np.ndarray]) -> np.ndarray:
    """All tensors, in order, as one float64 vector."""
    if not weights:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.ravel(w).astype(np.float64) for w in weights])


def unflatten(vector: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """Split a flat vector into tensors of the shapes and dtypes of ``like``."""
    total = sum(int(np.size(w)) for w in like)
    if np.shape(vector) != (total,):
        raise PomError(f"a flat vector of {np.size(vector)} values cannot fill tensors of {total} values")
    out, pos = [], 0
    for w in like:
        size = int(np.size(w))
        out.append(np.asarray(vector[pos:pos + size]).reshape(np.shape(w)).astype(np.asarray(w).dtype))
        pos += size
    return out


# -- identity keys -----------------------------------------------------------------------------

def own_identity(channel) -> Ed25519PrivateKey:
    """The Ed25519 identity key of the channel's user (made at `werkbund register`)."""
    key = getattr(getattr(channel, "user", None), "identity", None)
    if not isinstance(key, Ed25519PrivateKey):
        raise PomError("this privacy mode signs key announcements with your identity key, and this session "
                       "has none: register with `werkbund register` (it makes one) or pass identity= to the API")
    return key


def registered_identity_keys(channel, users, cache: dict | None = None) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 key each user has in force by the task's ledger, verified here.

    The key history (task_created/joined naming each member's key, key_rotated signed by the old
    key, operator key_reset, ...) is read from the channel's task log and checked with the
    ledger's own verification (``channel.ledger_identity_keys``); the platform's ``identity_key``
    answer must agree with it, else the platform substituted a key and this refuses."""
    cache = {} if cache is None else cache
    missing = [u for u in users if u not in cache]
    if missing:
        verify = getattr(channel, "ledger_identity_keys", None)
        if verify is None:
            raise PomError("this privacy mode checks key announcements against the task's ledger, and this "
                           "channel has no ledger")
        try:
            logged = verify()
        except Exception as exc:  # the client's LedgerError (or a platform error): it has a code
            if not hasattr(exc, "code"):
                raise
            raise PomError(f"the identity keys cannot be taken from the task's ledger: {exc}") from None
        for user in missing:
            encoded = logged.get(user)
            if not encoded:
                raise PomError(f"{user!r} has no identity key on the task's ledger, so its key announcements "
                               "cannot be checked; it must register one to take part")
            claimed = (channel.transport.call("identity_key", user=user) or {}).get("public_key")
            if claimed != encoded:
                raise PomError(f"the platform says {user}'s identity key is {claimed}, but the task's verified "
                               f"ledger says {encoded}: the platform's key is not the one on the ledger's key "
                               "history; refusing to trust it")
            try:
                cache[user] = Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded, validate=True))
            except (binascii.Error, TypeError, ValueError):
                raise PomError(f"the identity key on the ledger for {user!r} is not an Ed25519 key") from None
    return {u: cache[u] for u in users}
