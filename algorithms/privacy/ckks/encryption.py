"""CKKS for POM 3 (homomorphic encryption) on TenSEAL, the key hand-over between participants, and
the checked, noise-flooded decryption of a sum.

Parameters: polynomial degree 8192 (4096 slots per ciphertext), three 60-bit coefficient moduli
(180 bits in all, inside the 218 bits that the homomorphic encryption standard allows at 128-bit
security for this degree): two hold the data (120 bits), the third is SEAL's special prime. Scale
2^90. Aggregation needs additions only: participants encrypt their update already multiplied by
their sample count, so no rescaling is needed; the 120-bit data modulus holds sums up to
``MAX_ABS`` (2^23) in absolute value with a factor 2^6 to spare. The scale is that large so that
the noise flooding below costs no accuracy that matters (the flooding noise shrinks as 2^-scale).
Every participant holds the secret key, so encryption is symmetric (faster than with the public
key; the context carries no public key at all). A flat vector longer than 4096 values is split
into chunks, one ciphertext each.

Noise flooding (``flooding_sigma``, ``decrypt_sum``). A CKKS decryption returns the message plus
the encryption error, and the error together with the ciphertext gives away the secret key (Li
and Micciancio, EUROCRYPT 2021). So every decryption that leaves a participant carries fresh
Gaussian noise from the operating system's CSPRNG, large enough that what is released is within
statistical distance 2^-40 (``FLOOD_BITS``) of a release without any error, over all the
decryptions of a task's key. The bound: a fresh SEAL encryption's error is at most 21 per
coefficient (its centred binomial noise), so a sum of ``k`` ciphertexts errs by at most ``21 k``
per coefficient; the real parts of the released slots then differ, in l2 norm, by at most
``sqrt(N/2) * sqrt(N) * 21 k / scale``; with ``t`` decryptions, Gaussian noise of standard
deviation ``sigma`` per slot gives a KL divergence of at most ``t N^2 (21 k)^2 / (4 sigma^2
scale^2)`` and, by Pinsker's inequality, a statistical distance of at most
``sqrt(t / 8) N 21 k / (sigma scale)``; ``sigma`` is set so that this is ``2^-40``. With 10
participants and 100 rounds that is about 2e-8 on the decrypted sum of ``n_samples * change``.
Adding the noise to the decoded slots is the same as adding it to the plaintext's coefficients
(the canonical embedding, scaled, is orthogonal), as the CKKS literature prescribes
(``test_crafted_ciphertexts_would_give_away_the_key_and_flooding_drowns_what_reaches_a_decryption``
in tests/unit/test_pom3_attacks.py). A decrypted sum larger than any sum of honest updates can be
(``MAX_ABS``) is refused, not released
(``test_a_decryption_that_is_larger_than_honest_updates_can_sum_to_is_not_released``). ``add_into``
checks every chunk before it adds any (``test_a_refused_update_leaves_the_encrypted_sum_untouched``).

Key hand-over. The key holder (the lowest participant name) makes the secret context, fresh for
each task (``test_every_task_gets_its_own_key``). Every participant announces a fresh X25519 key,
signed with its Ed25519 identity key. The holder encrypts the serialized secret context to each
other participant with AES-256-GCM, under a key from HKDF-SHA256 over X25519(holder, participant);
the task, the holder and the recipient are bound in the HKDF info and in the associated data. The
aggregator routes these blobs, but it holds no X25519 secret, so it cannot open them. It gets only
a context without any key (``public_context_bytes``): enough to read and check ciphertexts, not to
decrypt them (``test_the_aggregator_context_cannot_decrypt_and_has_pom3_parameters``).
"""
from __future__ import annotations

import os
import sys

if "tensorflow" in sys.modules and "tenseal" not in sys.modules:  # see algorithms/keras_models.py
    raise ImportError("TenSEAL must be imported before TensorFlow (both carry protobuf; the other order crashes): "
                      "import werkbund.algorithms.keras_models or tenseal first")

import numpy as np  # noqa: E402
import tenseal as ts  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey  # noqa: E402

from werkbund.algorithms.privacy.wire import PomError  # noqa: E402
from werkbund.algorithms.privacy.secagg.crypto import (  # noqa: E402
    aead_decrypt, aead_encrypt, agree, load_x25519_public, pair_info,
)
from werkbund.algorithms.privacy.secagg.messages import pack  # noqa: E402

POLY_DEGREE = 8192
COEFF_BITS = (60, 60, 60)
SCALE_BITS = 90
MAX_ABS = 2.0 ** 23   # |sum| must stay below 2^(120 - 90 - 1); this leaves a factor 2^6 of headroom
SLOTS = POLY_DEGREE // 2
FLOOD_BITS = 40       # statistical distance 2^-40 between a flooded decryption and one without any error
ERROR_BOUND = 21      # a fresh SEAL encryption's error per coefficient (centred binomial, sigma 3.2)
_DOMAIN = b"werkbund-pom3-v1"
WRAP_INFO = b"ckks-secret-context"


def new_secret_context() -> ts.Context:
    """A fresh CKKS key (made anew for every task, never stored)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_DEGREE, coeff_mod_bit_sizes=list(COEFF_BITS),
                     encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.global_scale = 2.0 ** SCALE_BITS
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """The context with its secret key (for participants only), without relinearization/Galois keys."""
    return ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                         save_relin_keys=False)


def public_context_bytes(ctx: ts.Context) -> bytes:
    """The parameters only, no key at all: what the aggregator needs to deserialize and check ciphertexts."""
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
    chain = ctx.seal_context().data
    if (chain.key_context_data().total_coeff_modulus_bit_count() != sum(COEFF_BITS)
            or chain.first_context_data().total_coeff_modulus_bit_count() != sum(COEFF_BITS[:-1])
            or chain.first_context_data().parms().poly_modulus_degree() != POLY_DEGREE):
        raise PomError("the CKKS context does not have POM 3's parameters")
    ctx.global_scale = 2.0 ** SCALE_BITS
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
    """Deserialize ciphertexts for a ``length``-long vector, checking the count, the chunk sizes and that
    each is a fresh encryption under the task's parameters (one ciphertext of two polynomials, at the
    first level, at POM 3's scale): anything else could not be added to the others."""
    if len(blobs) != n_chunks(length):
        raise PomError(f"expected {n_chunks(length)} ciphertexts for {length} values, got {len(blobs)}")
    first = ctx.seal_context().data.first_parms_id()
    out = []
    for i, blob in enumerate(blobs):
        try:
            ct = ts.ckks_vector_from(ctx, blob)
            inner = ct.ciphertext()
        except Exception as exc:
            raise PomError(f"ciphertext {i} is not readable: {exc}") from None
        want = min(SLOTS, length - i * SLOTS)
        if ct.size() != want:
            raise PomError(f"ciphertext {i} holds {ct.size()} values, expected {want}")
        if (len(inner) != 1 or inner[0].size() != 2 or inner[0].parms_id() != first
                or inner[0].scale != 2.0 ** SCALE_BITS):
            raise PomError(f"ciphertext {i} is not a fresh POM 3 encryption (its scale is "
                           f"2^{np.log2(inner[0].scale) if inner else float('nan'):.1f}, expected 2^{SCALE_BITS}, "
                           "or its level or size differ)")
        out.append(ct)
    return out


def add_into(total: list | None, cts: list) -> list:
    """The chunk-by-chunk sum of a running sum (``None`` starts one) and ``cts``, as a new list.

    All or nothing: every pair of chunks is checked (count, size, scale, level) before any is added,
    and the additions make new ciphertexts, so ``total`` is never changed: a refused update leaves
    the sum as it was."""
    if total is None:
        return list(cts)
    if len(total) != len(cts):
        raise PomError("ciphertext lists of different lengths cannot be added")
    for i, (a, b) in enumerate(zip(total, cts)):
        x, y = a.ciphertext()[0], b.ciphertext()[0]
        if a.size() != b.size() or x.scale != y.scale or x.parms_id() != y.parms_id() or x.size() != y.size():
            raise PomError(f"chunk {i} cannot be added to the sum: its size, scale or level differ "
                           f"(scale 2^{np.log2(y.scale):.1f} against 2^{np.log2(x.scale):.1f})")
    try:
        return [a + b for a, b in zip(total, cts)]
    except Exception as exc:  # TenSEAL raises ValueError on a mismatch the checks above missed
        raise PomError(f"the ciphertexts cannot be added: {exc}") from None


def flooding_sigma(n_summands: int, decryptions: int) -> float:
    """The standard deviation of the noise added to each decrypted value of a sum of ``n_summands``
    fresh ciphertexts, for ``decryptions`` decryptions under one key (module docstring)."""
    bound = ERROR_BOUND * max(1, int(n_summands)) * POLY_DEGREE / 2.0 ** SCALE_BITS
    return 2.0 ** FLOOD_BITS * float(np.sqrt(max(1, int(decryptions)) / 8.0)) * bound


def secure_gaussian(size: int, sigma: float) -> np.ndarray:
    """``size`` independent N(0, sigma^2) values from the operating system's CSPRNG (Box-Muller)."""
    raw = np.frombuffer(os.urandom(16 * int(size)), dtype="<u8").reshape(2, int(size))
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53   # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53           # [0, 1)
    return sigma * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def decrypt_sum(ctx: ts.Context, updates: list[list[bytes]], length: int, decryptions: int) -> np.ndarray:
    """Read every update's ciphertexts, add them (all checked first), decrypt the sum and flood it.

    Refuses a sum larger than honest updates can add up to (a ciphertext that was not an honest
    encryption decrypts to garbage), and adds ``flooding_sigma(len(updates), decryptions)`` Gaussian
    noise to every value it returns."""
    total = None
    for blobs in updates:
        total = add_into(total, read_ciphertexts(ctx, blobs, length))
    if total is None:
        raise PomError("there is nothing to decrypt")
    plain = np.concatenate([np.asarray(ct.decrypt(), dtype=np.float64) for ct in total])
    largest = float(np.max(np.abs(plain), initial=0.0))
    if not np.isfinite(largest) or largest > MAX_ABS + 1.0:
        raise PomError(f"the decrypted sum holds a value of {largest:.3g}, more than honest updates can add up to "
                       f"({MAX_ABS:.3g}): a ciphertext was not an honest encryption; refusing to release it")
    return plain + secure_gaussian(plain.size, flooding_sigma(len(updates), decryptions))


def decrypt(ctx: ts.Context, blobs: list[bytes], length: int) -> np.ndarray:
    """Decrypt serialized ciphertexts exactly, without noise (needs the secret key). Only for tests and
    a participant's own data: whatever leaves a participant goes through ``decrypt_sum``."""
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
