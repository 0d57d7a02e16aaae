"""Files a participant keeps of a task across restarts, in its ``state_dir``: owner-only, replaced atomically.

A crash at any moment leaves the old file or the new one whole, never half of one (written under a
temporary name, flushed to disk, then renamed over the old one). JSON and raw bytes only; nothing is
pickled. What is kept, and by whom: the engine's last update sent (``participant.py``), POM 3's key and
its record of what it encrypted and decrypted (``privacy/ckks/aggregation.py``), POM 2's record
of the views it signed (``privacy/secagg/aggregation.py``), the DP account (``privacy/dp/budget.py``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class StateFileError(ValueError):
    """A state file exists but cannot be read: the participant refuses rather than start afresh."""


def write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path``, 0600, replacing the old file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash: made anew, 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def json_bytes(value: dict) -> bytes:
    """What ``write_json`` writes of ``value`` (TypeError or ValueError where it cannot be JSON)."""
    return json.dumps(value, sort_keys=True).encode("utf-8")


def write_json(path: Path, value: dict) -> None:
    write_private(path, json_bytes(value))


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``; None if there is none; StateFileError if it is unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"the state file {path} cannot be read ({exc})") from None
    if not isinstance(value, dict):
        raise StateFileError(f"the state file {path} holds no JSON object")
    return value
