"""CKKS for POM 3 (homomorphic encryption) on TenSEAL, and the key hand-over between participants.

Parameters: polynomial degree 8192 (4096 slots per ciphertext), two 60-bit coefficient moduli
(120 bits in all, inside the 218 bits that the homomorphic encryption standard allows at 128-bit
security for this degree), scale 2^35. Aggregation needs additions only: participants encrypt
their update already multiplied by their sample count, so no rescaling level is needed and one
data modulus suffices; it holds sums up to ``MAX_ABS`` (2^23) in absolute value, with an error
around 1e-7. Every participant holds the secret key, so encryption is symmetric (faster than
with the public key; the context carries no public key at all). A flat vector longer than 4096
values is split into chunks, one ciphertext each.

Key hand-over. The key holder (the lowest participant name) makes the secret context. Every
participant announces a fresh X25519 key, signed with its Ed25519 identity key. The holder
encrypts the serialized secret context to each other participant with AES-256-GCM, under a key
from HKDF-SHA256 over X25519(holder, participant); the task, the holder and the recipient are
bound in the HKDF info and in the associated data. The aggregator routes these blobs, but it
holds no X25519 secret, so it cannot open them. It gets only a context without any key
(``public_context_bytes``): enough to read and add ciphertexts, not to decrypt them.
"""
from __future__ import annotations

import sys

if "tensorflow" in sys.modules and "tenseal" not in sys.modules:  # see algorithms/keras_models.py
    raise ImportError("TenSEAL must be imported before TensorFlow (both carry protobuf; the other order crashes): "
                      "import werkbund.algorithms.keras_models or tenseal first")

import numpy as np  # noqa: E402
import tenseal as ts  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey  # noqa: E402

from werkbund.algorithms.privacy.pom_wire import PomError  # noqa: E402
from werkbund.algorithms.privacy.secagg_crypto import (  # noqa: E402
    aead_decrypt, aead_encrypt, agree, load_x25519_public, pair_info,
)
from werkbund.algorithms.privacy.secagg_messages import pack  # noqa: E402

POLY_DEGREE = 8192
COEFF_BITS = (60, 60)
SCALE_BITS = 35
MAX_ABS = 2.0 ** 23   # |sum| must stay below 2^(60 - 35 - 1); this leaves a factor 2 of headroom
SLOTS = POLY_DEGREE // 2
_DOMAIN = b"werkbund-pom3-v1"
WRAP_INFO = b"ckks-secret-context"


def new_secret_context() -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_DEGREE, coeff_mod_bit_sizes=list(COEFF_BITS),
                     encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.global_scale = 2.0 ** SCALE_BITS
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """The context with its secret key (for participants only), without relinearization/Galois keys."""
    return ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                         save_relin_keys=False)


def public_context_bytes(ctx: ts.Context) -> bytes:
    """The parameters only, no key at all: what the aggregator needs to deserialize and add."""
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                         save_relin_keys=False)


def load_context(data: bytes, *, secret: bool) -> ts.Context:
    """Read a context; a participant needs the secret key, the aggregator must not have one."""
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError on bad bytes
        raise PomError(f"the CKKS context is not readable: {exc}") from None
    if secret and not ctx.is_private():
        raise PomError("the CKKS context holds no secret key, so it cannot decrypt")
    if not secret and ctx.is_private():
        raise PomError("refusing a CKKS context with a secret key: the aggregator must not be able to decrypt")
    return ctx


def n_chunks(length: int) -> int:
    return -(-int(length) // SLOTS)


def encrypt(ctx: ts.Context, vector: np.ndarray, n_summands: int = 1) -> list[bytes]:
    """Encrypt a flat vector as ``n_chunks(len)`` serialized CKKS ciphertexts.

    Refuses values so large that a sum of ``n_summands`` such vectors could exceed ``MAX_ABS``
    (it would wrap around the modulus and decrypt to garbage)."""
    v = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise PomError("the update contains NaN or infinite values")
    largest = float(np.max(np.abs(v), initial=0.0))
    if largest * max(1, int(n_summands)) > MAX_ABS:
        raise PomError(f"an update value of {largest:.3g} (times the sample count) is too large for POM 3's CKKS "
                       f"parameters: a sum of {n_summands} such values could exceed {MAX_ABS:.3g}")
    return [ts.ckks_vector(ctx, v[i:i + SLOTS]).serialize() for i in range(0, v.size, SLOTS)]


def read_ciphertexts(ctx: ts.Context, blobs: list[bytes], length: int) -> list[ts.CKKSVector]:
    """Deserialize ciphertexts for a ``length``-long vector, checking the count and chunk sizes."""
    if len(blobs) != n_chunks(length):
        raise PomError(f"expected {n_chunks(length)} ciphertexts for {length} values, got {len(blobs)}")
    out = []
    for i, blob in enumerate(blobs):
        try:
            ct = ts.ckks_vector_from(ctx, blob)
        except Exception as exc:
            raise PomError(f"ciphertext {i} is not readable: {exc}") from None
        want = min(SLOTS, length - i * SLOTS)
        if ct.size() != want:
            raise PomError(f"ciphertext {i} holds {ct.size()} values, expected {want}")
        out.append(ct)
    return out


def add_into(total: list | None, cts: list) -> list:
    """Add ciphertexts chunk by chunk into a running sum (``None`` starts one)."""
    if total is None:
        return list(cts)
    if len(total) != len(cts):
        raise PomError("ciphertext lists of different lengths cannot be added")
    for a, b in zip(total, cts):
        a.add_(b)
    return total


def decrypt(ctx: ts.Context, blobs: list[bytes], length: int) -> np.ndarray:
    """Decrypt serialized ciphertexts back into one flat float64 vector (needs the secret key)."""
    cts = read_ciphertexts(ctx, blobs, length)
    return np.concatenate([np.asarray(ct.decrypt(), dtype=np.float64) for ct in cts])


# -- signed X25519 announcements and the wrapped secret context ------------------------------

def _announcement_bytes(task: str, sender: str, x_pk: bytes) -> bytes:
    return pack(_DOMAIN, b"key-announcement", task.encode(), sender.encode(), x_pk)


def sign_key(identity: Ed25519PrivateKey, task: str, sender: str, x_pk: bytes) -> dict:
    return {"sender": sender, "x_pk": x_pk, "signature": identity.sign(_announcement_bytes(task, sender, x_pk))}


def verify_key(msg: object, task: str, roster, identity_keys: dict[str, Ed25519PublicKey]) -> dict:
    """Check one announcement against the sender's registered identity key; return it normalised."""
    if not isinstance(msg, dict):
        raise PomError("a key announcement must be a JSON object")
    sender, x_pk, sig = msg.get("sender"), msg.get("x_pk"), msg.get("signature")
    if sender not in roster:
        raise PomError(f"{sender!r} is not among the task's participants")
    if not isinstance(x_pk, bytes) or len(x_pk) != 32 or not isinstance(sig, bytes) or len(sig) != 64:
        raise PomError(f"the key announcement of {sender!r} is malformed or unsigned")
    try:
        identity_keys[sender].verify(sig, _announcement_bytes(task, sender, x_pk))
    except (InvalidSignature, KeyError):
        raise PomError(f"the key announcement of {sender!r} has a forged or invalid signature") from None
    load_x25519_public(x_pk)
    return {"sender": sender, "x_pk": x_pk, "signature": sig}


def _wrap_key(x_sk, peer_pk: bytes, task: str, holder: str, recipient: str) -> tuple[bytes, bytes]:
    key = agree(x_sk, peer_pk, pair_info(WRAP_INFO, task, holder, recipient))
    return key, pack(_DOMAIN, WRAP_INFO, task.encode(), holder.encode(), recipient.encode())


def wrap_secret(secret: bytes, holder_sk, recipient_pk: bytes, task: str, holder: str, recipient: str) -> bytes:
    key, aad = _wrap_key(holder_sk, recipient_pk, task, holder, recipient)
    return aead_encrypt(key, secret, aad)


def unwrap_secret(blob: bytes, own_sk, holder_pk: bytes, task: str, holder: str, recipient: str) -> bytes:
    key, aad = _wrap_key(own_sk, holder_pk, task, holder, recipient)
    return aead_decrypt(key, blob, aad)
