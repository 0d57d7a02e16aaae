"""Weights on the wire: safetensors bytes, checked before anyone uses them.

Nothing here unpickles: safetensors holds raw tensors and a JSON header only.
"""
from __future__ import annotations

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save


class UpdateRejected(ValueError):
    """An update that must not be aggregated (wrong shape, dtype, NaN, unreadable)."""


def _key(i: int) -> str:
    return f"w{i:05d}"


def encode_weights(weights: list[np.ndarray]) -> bytes:
    return st_save({_key(i): np.ascontiguousarray(w) for i, w in enumerate(weights)})


def decode_weights(data: bytes, expected: list[tuple[tuple[int, ...], str]] | None = None) -> list[np.ndarray]:
    """Read weights; with ``expected`` (shape, dtype) per tensor, reject anything else."""
    try:
        tensors = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise UpdateRejected(f"weights are not readable safetensors: {exc}") from None
    keys = [_key(i) for i in range(len(tensors))]
    if sorted(tensors) != keys:
        raise UpdateRejected("weights are not numbered w00000, w00001, ... without gaps")
    weights = [tensors[k] for k in keys]
    if expected is not None:
        check_weights(weights, expected)
    return weights


def check_weights(weights: list[np.ndarray], expected: list[tuple[tuple[int, ...], str]]) -> None:
    if len(weights) != len(expected):
        raise UpdateRejected(f"expected {len(expected)} weight tensors, got {len(weights)}")
    for i, (w, (shape, dtype)) in enumerate(zip(weights, expected)):
        if tuple(w.shape) != tuple(shape):
            raise UpdateRejected(f"tensor {i} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        if str(w.dtype) != str(dtype):
            raise UpdateRejected(f"tensor {i} has dtype {w.dtype}, expected {dtype}")
        if np.issubdtype(w.dtype, np.floating) and not np.isfinite(w).all():
            raise UpdateRejected(f"tensor {i} holds NaN or infinite values")


def signature(weights: list[np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    """The (shape, dtype) of every tensor, as ``decode_weights`` expects them."""
    return [(tuple(w.shape), str(w.dtype)) for w in weights]


def sample_count(message) -> int:
    """The positive integer sample count an update declares in its header, or UpdateRejected."""
    n_samples = message.get("n_samples")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise UpdateRejected(f"the update's sample count {n_samples!r} is not a positive integer")
    return n_samples
