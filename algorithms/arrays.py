"""Weights on the wire: safetensors bytes, checked before anyone uses them.

Nothing here unpickles: safetensors holds raw tensors and a JSON header only.

The format is the safetensors library's, and the tests check that the library reads what is written
here and that this reads what the library writes. Both directions are done here because of memory:
the library's ``save`` holds its output twice while it hands it over, its reader for bytes
(``safetensors.numpy.load``) copies every tensor out of them, and its zero-copy reader
(``safe_open``) wants a file; at a GiB each copy is a GiB more at every aggregator and participant.
``encode_weights`` joins the header and the arrays' bytes once; ``decode_weights`` checks the format
as strictly as the library (the header's length, a JSON object, known dtypes, shapes, offsets that
tile the data exactly) and returns read-only NumPy views of the received bytes.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np


class UpdateRejected(ValueError):
    """An update that must not be aggregated (wrong shape, dtype, NaN, unreadable)."""


def _key(i: int) -> str:
    return f"w{i:05d}"


def encode_weights(weights: list[np.ndarray]) -> bytes:
    """The arrays as safetensors bytes, named w00000, w00001, ... in order (a 0-d array as shape [1]).

    Laid out as the library lays them out (the widest dtype first, the header padded to 8 bytes), and
    joined straight from the arrays: the library's ``save`` holds its output twice while it hands it
    over, a GiB more at every aggregator and participant."""
    arrays = {}
    for i, w in enumerate(weights):
        a = np.ascontiguousarray(w)
        code = _CODES.get(a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str)
        if code is None:
            raise ValueError(f"weights of dtype {a.dtype} cannot be sent (safetensors holds numbers and booleans)")
        arrays[_key(i)] = (code, np.ascontiguousarray(a, dtype=_DTYPES[code]))
    order = sorted(arrays, key=lambda k: (-arrays[k][1].dtype.itemsize, k))
    header, offset = {}, 0
    for key in order:
        code, a = arrays[key]
        header[key] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head,
                     *(arrays[key][1].reshape(-1).view(np.uint8) for key in order if arrays[key][1].size)])


def decode_weights(data: bytes, expected: list[tuple[tuple[int, ...], str]] | None = None) -> list[np.ndarray]:
    """Read weights (read-only views of ``data``); with ``expected`` (shape, dtype) per tensor, reject
    anything else."""
    tensors = read_safetensors(data)
    keys = [_key(i) for i in range(len(tensors))]
    if sorted(tensors) != keys:
        raise UpdateRejected("weights are not numbered w00000, w00001, ... without gaps")
    weights = [tensors[k] for k in keys]
    if expected is not None:
        check_weights(weights, expected)
    return weights


# the safetensors dtypes NumPy has, little-endian as the format stores them
_DTYPES = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2", "U32": "<u4",
           "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the library's own bound


def read_safetensors(data) -> dict[str, np.ndarray]:
    """The tensors of safetensors bytes, by name, as read-only views of ``data`` (no copy); anything
    that is not well-formed safetensors raises UpdateRejected."""
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise UpdateRejected("weights are not readable safetensors: not a contiguous byte buffer") from None
    if len(view) < 8:
        raise UpdateRejected("weights are not readable safetensors: shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > min(MAX_HEADER_BYTES, len(view) - 8):
        raise UpdateRejected(f"weights are not readable safetensors: a header of {header_len} bytes does not fit")
    try:
        header = json.loads(bytes(view[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UpdateRejected(f"weights are not readable safetensors: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UpdateRejected("weights are not readable safetensors: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise UpdateRejected("weights are not readable safetensors: __metadata__ is not a map of strings")
    body = view[8 + header_len:]
    spans = sorted((_span(name, spec), name) for name, spec in header.items())
    end = 0
    for (begin, stop, _, _), name in spans:
        if begin != end:
            raise UpdateRejected(f"weights are not readable safetensors: tensor {name!r} does not start where "
                                 "the one before it ends")
        end = stop
    if end != len(body):
        raise UpdateRejected(f"weights are not readable safetensors: the tensors cover {end} of {len(body)} bytes")
    return {name: np.frombuffer(body, dtype, math.prod(shape), begin).reshape(shape)
            for (begin, _, dtype, shape), name in spans}


def _span(name: str, spec) -> tuple[int, int, str, tuple[int, ...]]:
    """(begin, end, NumPy dtype, shape) of one header entry, checked."""
    bad = UpdateRejected(f"weights are not readable safetensors: tensor {name!r} is not described correctly")
    if not isinstance(spec, dict) or spec.get("dtype") not in _DTYPES:
        raise bad
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int and n >= 0 for n in [*shape, *offsets])):
        raise bad
    dtype = _DTYPES[spec["dtype"]]
    begin, end = offsets
    if end - begin != math.prod(shape) * np.dtype(dtype).itemsize:
        raise bad
    return begin, end, dtype, tuple(shape)


def check_weights(weights: list[np.ndarray], expected: list[tuple[tuple[int, ...], str]]) -> None:
    if len(weights) != len(expected):
        raise UpdateRejected(f"expected {len(expected)} weight tensors, got {len(weights)}")
    for i, (w, (shape, dtype)) in enumerate(zip(weights, expected)):
        if tuple(w.shape) != tuple(shape):
            raise UpdateRejected(f"tensor {i} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        if str(w.dtype) != str(dtype):
            raise UpdateRejected(f"tensor {i} has dtype {w.dtype}, expected {dtype}")
        if np.issubdtype(w.dtype, np.floating) and not _all_finite(w):
            raise UpdateRejected(f"tensor {i} holds NaN or infinite values")


def _all_finite(w: np.ndarray, piece: int = 1 << 22) -> bool:
    """Whether every value is finite, checked a few MiB at a time (the check's own temporary stays small)."""
    flat = w.reshape(-1)
    return all(np.isfinite(flat[start:start + piece]).all() for start in range(0, flat.size, piece))


def signature(weights: list[np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    """The (shape, dtype) of every tensor, as ``decode_weights`` expects them."""
    return [(tuple(w.shape), str(w.dtype)) for w in weights]


def sample_count(message) -> int:
    """The positive integer sample count an update declares in its header, or UpdateRejected."""
    n_samples = message.get("n_samples")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise UpdateRejected(f"the update's sample count {n_samples!r} is not a positive integer")
    return n_samples
