"""The client's own state under WERKBUND_HOME (default ~/.werkbund).

Session tokens (so a password is checked once, not per command), the dataset a
participant chose when joining, and results. Files that hold secrets are 0600.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def home() -> Path:
    path = Path(os.environ.get("WERKBUND_HOME", "~/.werkbund")).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _platform_key(url: str | None) -> str:
    return hashlib.sha256((url or "").encode()).hexdigest()[:16]


def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def session_path(url: str | None, user: str) -> Path:
    return home() / "sessions" / f"{_platform_key(url)}-{user}.json"


def load_token(url: str | None, user: str) -> str | None:
    data = _read(session_path(url, user))
    return data.get("token") if data else None


def save_token(url: str | None, user: str, token: str) -> None:
    _write_private(session_path(url, user), {"url": url, "user": user, "token": token})


def forget_token(url: str | None, user: str) -> None:
    session_path(url, user).unlink(missing_ok=True)


def join_path(url: str | None, user: str, task: str) -> Path:
    return home() / "joined" / _platform_key(url) / user / f"{task}.json"


def save_join(url: str | None, user: str, task: str, choice: dict) -> None:
    _write_private(join_path(url, user, task), choice)


def load_join(url: str | None, user: str, task: str) -> dict | None:
    return _read(join_path(url, user, task))


def results_dir(task: str) -> Path:
    path = home() / "results" / task
    path.mkdir(parents=True, exist_ok=True)
    return path


def identity_path(url: str | None, user: str) -> Path:
    """The user's Ed25519 identity key for this platform (PKCS#8 PEM, 0600)."""
    return home() / "identity" / f"{_platform_key(url)}-{user}.pem"


def load_identity(url: str | None, user: str):
    """The user's identity key, or None when they have none here (a passphrase from
    WERKBUND_KEY_PASSPHRASE when the key is encrypted)."""
    from werkbund.client.identity import load_identity as load

    path = identity_path(url, user)
    if not path.exists():
        return None
    return load(path, os.environ.get("WERKBUND_KEY_PASSPHRASE") or None)


def ledger_path(url: str | None, user: str, task: str) -> Path:
    """What this member last saw of a task's ledger (checkpoint, leaf hashes, platform key)."""
    return home() / "ledger" / _platform_key(url) / user / f"{task}.json"


def save_ledger_view(url: str | None, user: str, task: str, view: dict) -> None:
    _write_private(ledger_path(url, user, task), view)


def load_ledger_view(url: str | None, user: str, task: str) -> dict | None:
    return _read(ledger_path(url, user, task))


def maintenance_dir(url: str | None, user: str, task: str) -> Path:
    """The maintenance tuples this user recorded (the ledger holds only their hashes)."""
    return home() / "maintenance" / _platform_key(url) / user / task
