"""A final model as a file: safetensors with named tensors (never pickle) and, beside it, its JSON
description.

- ``named_arrays_bytes`` / ``read_named_arrays``: named arrays to safetensors bytes and back;
- ``write_local_result``: a participant's copy of the final model (any bytes: safetensors, Keras,
  a JSON report) at ``path`` and its description at ``path.json``.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save


def named_arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    return st_save({name: np.ascontiguousarray(value) for name, value in arrays.items()})


def read_named_arrays(data: bytes) -> dict[str, np.ndarray]:
    try:
        return st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ValueError(f"not a readable safetensors model: {exc}") from None


def write_local_result(path, data: bytes, meta: dict) -> str:
    """Write the final model bytes to ``path`` and its description to ``path.json``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    with open(f"{path}.json", "w") as handle:
        json.dump(meta, handle, indent=2)
    return str(path)
