"""Password hashing (argon2id) and session tokens (random, stored as SHA-256)."""
from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2id with 64 MiB and 4 lanes: about 0.2 s per check on a 2-core machine, by design.
_HASHER = PasswordHasher(time_cost=4, memory_cost=64 * 1024, parallelism=4)
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    """True when the password matches; costs the same when the user does not exist."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str, scope: str | None = None) -> str:
    """What the database keeps of a token. A scoped token (``blob:<task>``: the blob store's transfer
    token) is stored under a digest that names its scope, so it opens nothing else: not a session."""
    return hashlib.sha256(((f"{scope}\n" if scope else "") + token).encode("utf-8")).hexdigest()
