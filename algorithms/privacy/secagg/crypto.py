"""Cryptographic primitives for POM 2 secure aggregation.

Everything here is a thin wrapper around well-kept libraries:

* ``cryptography``: X25519 key agreement, HKDF-SHA256, AES-256-GCM (shares sent from one
  participant to another through the server) and AES-256-CTR as the mask generator (PRG);
* ``pycryptodome``: Shamir secret sharing over GF(2^128).

pycryptodome's Shamir works on 16-byte secrets, so a 32-byte secret is split as two independent
16-byte halves with the same share indices; a share is the 32-byte concatenation of the two half
shares.  Combining too few (or wrong) shares silently yields garbage, so every reconstruction
must be checked by the caller against a public value (``reconstruct_checked``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, PublicFormat,
)

from werkbund.algorithms.privacy.secagg.errors import SecAggError

SEED_BYTES = 32
SHARE_BYTES = 32
_HALF = 16
_NONCE = 12
_DOMAIN = b"werkbund-secagg-v1"


# -- X25519 -----------------------------------------------------------------------------------

def new_x25519() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def x25519_public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def load_x25519_public(raw: bytes) -> X25519PublicKey:
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise SecAggError("an X25519 public key must be 32 raw bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def load_x25519_private(raw: bytes) -> X25519PrivateKey:
    if len(raw) != 32:
        raise SecAggError("an X25519 private key must be 32 raw bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with a fixed protocol salt and a caller-chosen ``info`` for domain separation."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_DOMAIN, info=info).derive(secret)


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared by the two ends: HKDF-SHA256(X25519(private, peer_public), info)."""
    try:
        shared = private.exchange(load_x25519_public(peer_public))
    except ValueError as exc:  # cryptography refuses low-order points
        raise SecAggError(f"X25519 agreement failed: {exc}") from None
    if shared == bytes(32):  # low-order point: refuse rather than derive a public key
        raise SecAggError("X25519 agreement produced the all-zero secret (low-order public key)")
    return hkdf(shared, info)


def pair_info(purpose: bytes, round_id: str, a: str, b: str) -> bytes:
    """HKDF info binding a pairwise key to its purpose, the round and the (unordered) pair."""
    lo, hi = sorted((a, b))
    parts = [purpose, round_id.encode(), lo.encode(), hi.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


# -- AES-GCM for the shares -------------------------------------------------------------------

def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random 96-bit nonce; returns nonce || ciphertext || tag."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < _NONCE + 16:
        raise SecAggError("an encrypted share is too short")
    try:
        return AESGCM(key).decrypt(bytes(blob[:_NONCE]), bytes(blob[_NONCE:]), aad)
    except InvalidTag as exc:
        raise SecAggError("an encrypted share failed authentication (tampered or misaddressed)") from exc


# -- AES-CTR mask generator -------------------------------------------------------------------

def prg(seed: bytes, length: int, dtype: np.dtype | type) -> np.ndarray:
    """Expand a 32-byte seed into ``length`` uniform unsigned integers of ``dtype``.

    AES-256-CTR keyed by the full seed, zero IV, encrypting zeros (the keystream).  Every seed is
    used for exactly one stream (seeds are per round and per purpose), so the fixed IV is safe.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise SecAggError("a mask seed must be 32 bytes")
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.kind != "u":
        raise SecAggError("the mask generator produces unsigned integers only")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(length * dt.itemsize)) + enc.finalize()
    return np.frombuffer(stream, dtype=dt).astype(np.dtype(dtype), copy=True)


def uniform01(length: int) -> np.ndarray:
    """``length`` uniform floats in [0, 1) with 53 random bits each, from a fresh os.urandom seed."""
    words = prg(os.urandom(SEED_BYTES), length, np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# -- Shamir secret sharing --------------------------------------------------------------------

def shamir_split(secret: bytes, threshold: int, n_shares: int) -> list[tuple[int, bytes]]:
    """Split a 32-byte secret into ``n_shares`` shares (indices 1..n), any ``threshold`` of which
    reconstruct it."""
    if len(secret) != SEED_BYTES:
        raise SecAggError("only 32-byte secrets are shared")
    if not 1 <= threshold <= n_shares:
        raise SecAggError(f"a Shamir threshold of {threshold} with {n_shares} shares is impossible")
    lo = Shamir.split(threshold, n_shares, secret[:_HALF])
    hi = Shamir.split(threshold, n_shares, secret[_HALF:])
    return [(i, a + b) for (i, a), (j, b) in zip(lo, hi) if i == j]


def shamir_combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Interpolate the 32-byte secret from shares.  UNCHECKED: see ``reconstruct_checked``."""
    idx = [int(i) for i, _ in shares]
    if len(set(idx)) != len(idx) or any(i < 1 for i in idx):
        raise SecAggError("Shamir shares must have distinct positive indices")
    if any(len(s) != SHARE_BYTES for _, s in shares):
        raise SecAggError("a Shamir share must be 32 bytes")
    lo = Shamir.combine([(i, bytes(s[:_HALF])) for i, s in shares])
    hi = Shamir.combine([(i, bytes(s[_HALF:])) for i, s in shares])
    return lo + hi


def reconstruct_checked(shares: Sequence[tuple[int, bytes]], threshold: int,
                        check: Callable[[bytes], bool], what: str) -> bytes:
    """Combine shares and verify the result with ``check``; raise ``SecAggError`` otherwise.

    Fewer than ``threshold`` shares are refused outright; a result that fails ``check`` (wrong
    or corrupted shares) is refused too, since interpolation never fails by itself.
    """
    if len(shares) < threshold:
        raise SecAggError(f"cannot reconstruct {what}: {len(shares)} shares, the threshold is {threshold}")
    secret = shamir_combine(shares)
    if not check(secret):
        raise SecAggError(f"reconstruction of {what} failed its check (wrong or too few shares)")
    return secret


# -- commitments ------------------------------------------------------------------------------

def commit_seed(seed: bytes, round_id: str, participant: str) -> bytes:
    """SHA-256 commitment to a 32-byte uniformly random self-mask seed, published in the signed
    announcement so that the reconstructed seed can be checked."""
    parts = [_DOMAIN, b"self-mask-commitment", round_id.encode(), participant.encode(), seed]
    return hashlib.sha256(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()
