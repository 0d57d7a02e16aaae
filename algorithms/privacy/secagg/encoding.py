"""Fixed-point encoding of weighted float vectors into Z_{2^k} (k = 32 or 64).

A participant with weight ``n_k`` (its sample count) encodes ``n_k * clip(w_k)``: the server then
obtains ``sum_k n_k * w_k`` and the caller divides by ``sum_k n_k`` for FedAvg.  Values are clipped
to ``[-clip_range, clip_range]``, scaled by ``2**frac_bits`` and rounded *stochastically*
(``floor(x) + [u < x - floor(x)]``), so the rounding is unbiased and the error of each entry of
each participant is below ``2**-frac_bits``.  Negative numbers are stored in two's complement
modulo ``2**k``; the decoded sum is read as a signed integer.

Overflow bound, checked when the encoder is built: with ``N`` participants and weights of at
most ``W``, ``|sum| <= N * W * (clip_range * 2**frac_bits + 1) <= 2**(k-1) - 1`` must hold, or
the sum would wrap around and decode to garbage; ``SecAggOverflowError`` is raised otherwise.

Rounding randomness: the uniforms come from AES-256-CTR keyed by a fresh ``os.urandom`` seed
(``secagg.crypto.uniform01``), not from numpy's RNG.  They need to be unbiased, not secret (the
encoded vector is masked anyway), but a cryptographic source costs nothing here.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from werkbund.algorithms.privacy.secagg.crypto import uniform01
from werkbund.algorithms.privacy.secagg.errors import SecAggError, SecAggOverflowError

MAX_FRAC_BITS = 40     # finer steps than 2**-40 buy nothing for float32 weights
MIN_FRAC_BITS = 8      # below this the quantization error would swamp typical updates
_EXACT = 2.0 ** 52     # |weight * value * scale| must stay exactly representable in float64
_DTYPES = {32: np.uint32, 64: np.uint64}


def _fits(n_participants: int, max_weight: float, clip_range: float, frac_bits: int, bits: int) -> bool:
    """Whether the largest possible |sum| stays inside the signed half of the modulus."""
    bound = n_participants * max_weight * (clip_range * 2.0 ** frac_bits + 1.0)
    return bound <= 2.0 ** (bits - 1) - 1


def choose_frac_bits(n_participants: int, max_weight: float, clip_range: float,
                     modulus_bits: int = 64) -> int:
    """The largest number of fractional bits (at most ``MAX_FRAC_BITS``) that cannot overflow."""
    for f in range(MAX_FRAC_BITS, MIN_FRAC_BITS - 1, -1):
        if (_fits(n_participants, max_weight, clip_range, f, modulus_bits)
                and clip_range * max_weight * 2.0 ** f <= _EXACT):
            return f
    raise SecAggOverflowError(
        f"{n_participants} participants x max_weight {max_weight:g} x clip_range {clip_range:g} "
        f"overflows the 2^{modulus_bits} modulus even with {MIN_FRAC_BITS} fractional bits "
        f"(needs {n_participants * max_weight * (clip_range * 2.0 ** MIN_FRAC_BITS + 1):.3g} "
        f"< 2^{modulus_bits - 1}); lower max_weight or clip_range"
        + (" or use modulus_bits=64" if modulus_bits == 32 else ""))


class FixedPointEncoder:
    """Encode ``weight * clip(vector)`` as unsigned integers mod ``2**modulus_bits`` and decode sums."""

    def __init__(self, clip_range: float, max_weight: float, n_participants: int,
                 modulus_bits: int = 64, frac_bits: int | None = None) -> None:
        if modulus_bits not in _DTYPES:
            raise SecAggError("modulus_bits must be 32 or 64")
        if not (isinstance(clip_range, numbers.Real) and math.isfinite(clip_range) and clip_range > 0):
            raise SecAggError("clip_range must be a positive finite number")
        if not (isinstance(max_weight, numbers.Real) and math.isfinite(max_weight) and max_weight > 0):
            raise SecAggError("max_weight must be a positive finite number")
        if not (isinstance(n_participants, numbers.Integral) and n_participants >= 1):
            raise SecAggError("n_participants must be a positive integer")
        if frac_bits is None:
            frac_bits = choose_frac_bits(n_participants, max_weight, clip_range, modulus_bits)
        elif not (isinstance(frac_bits, numbers.Integral) and 0 <= frac_bits <= 62):
            raise SecAggError("frac_bits must be an integer in [0, 62]")
        elif not _fits(n_participants, max_weight, clip_range, int(frac_bits), modulus_bits):
            raise SecAggOverflowError(
                f"{n_participants} participants x max_weight {max_weight:g} x clip_range {clip_range:g} "
                f"x 2^{frac_bits} (fractional bits) = "
                f"{n_participants * max_weight * clip_range * 2.0 ** frac_bits:.3g} overflows the signed "
                f"range 2^{modulus_bits - 1} of the 2^{modulus_bits} modulus; lower max_weight, "
                f"clip_range or frac_bits" + (", or use modulus_bits=64" if modulus_bits == 32 else ""))
        self.clip_range = float(clip_range)
        self.max_weight = float(max_weight)
        self.n_participants = int(n_participants)
        self.modulus_bits = int(modulus_bits)
        self.frac_bits = int(frac_bits)
        self.dtype = np.dtype(_DTYPES[self.modulus_bits])
        self.scale = float(2 ** self.frac_bits)

    @property
    def quantization_step(self) -> float:
        """Upper bound of the rounding error per entry per participant."""
        return 1.0 / self.scale

    def encode(self, vector: np.ndarray, weight: float) -> np.ndarray:
        """Clip, multiply by ``weight``, scale, round stochastically and reduce mod ``2**k``."""
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise SecAggError("the weight must be a finite number")
        if not 0 <= weight <= self.max_weight:
            raise SecAggError(f"weight {weight:g} is outside [0, max_weight={self.max_weight:g}]")
        x = np.asarray(vector)
        if x.ndim != 1 or x.dtype.kind != "f":
            raise SecAggError("the update must be a 1-D float array (flatten the model's tensors)")
        if not np.all(np.isfinite(x)):
            raise SecAggError("the update contains NaN or infinite values")
        x = np.clip(x.astype(np.float64), -self.clip_range, self.clip_range) * (float(weight) * self.scale)
        low = np.floor(x)
        q = low.astype(np.int64) + (uniform01(x.size) < (x - low)).astype(np.int64)
        if self.modulus_bits == 64:
            return q.view(np.uint64).copy()
        return (q & np.int64(0xFFFFFFFF)).astype(np.uint32)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Read a sum of encodings as signed integers and unscale it to float64."""
        s = np.asarray(total)
        if s.dtype != self.dtype:
            raise SecAggError(f"expected a {self.dtype} vector to decode, got {s.dtype}")
        signed = s.view(np.int64) if self.modulus_bits == 64 else s.view(np.int32)
        return signed.astype(np.float64) / self.scale
