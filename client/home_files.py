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


PASSPHRASE_ENV = "WERKBUND_KEY_PASSPHRASE"


def key_passphrase(password: str | None = None) -> str | None:
    """The passphrase a new identity key is encrypted with: WERKBUND_KEY_PASSPHRASE if set, else
    the account password the user just gave (None only when neither is there)."""
    return os.environ.get(PASSPHRASE_ENV) or password or None


def load_identity(url: str | None, user: str, password=None):
    """The user's identity key, or None when they have none here. An encrypted key is unlocked
    with WERKBUND_KEY_PASSPHRASE, else with ``password`` (the account password given to the
    session or command; a callable is asked only when needed); with neither, an IdentityError
    says how to give one."""
    from werkbund.client.identity import IdentityError, is_encrypted
    from werkbund.client.identity import load_identity as load
    from werkbund.platform.errors import WerkbundError

    path = identity_path(url, user)
    if not path.exists():
        return None
    if not is_encrypted(path):
        return load(path)
    tried = []
    if os.environ.get(PASSPHRASE_ENV):
        try:
            return load(path, os.environ[PASSPHRASE_ENV])
        except IdentityError:
            tried.append(PASSPHRASE_ENV)
    if callable(password):  # asked only now: the variable did not unlock the key
        try:
            password = password()
        except WerkbundError:  # e.g. no password and no terminal to ask at
            password = None
    if password:
        try:
            return load(path, password)
        except IdentityError:
            tried.append("your password")
    if tried:
        raise IdentityError(f"wrong passphrase for your identity key {path}: {' and '.join(tried)} did not "
                            f"unlock it; set {PASSPHRASE_ENV} to the passphrase it was made with")
    raise IdentityError(f"your identity key {path} is encrypted: set {PASSPHRASE_ENV} to its passphrase "
                        "(by default the password you registered with), or give your password "
                        "(WERKBUND_PASSWORD, the credentials file, or password=)")


class IdentityFile:
    """A user's key file under WERKBUND_HOME, read and unlocked on first use (by
    ``werkbund.client.api.User.identity``) with :func:`load_identity`."""

    def __init__(self, url: str | None, user: str, password=None):
        self.url, self.user, self.password = url, user, password

    def load(self):
        return load_identity(self.url, self.user, self.password)


def identity_file(url: str | None, user: str, password=None) -> IdentityFile | None:
    """The user's key file to be unlocked when first used, or None when they have none here."""
    return IdentityFile(url, user, password) if identity_path(url, user).exists() else None


def ledger_path(url: str | None, user: str, task: str) -> Path:
    """What this member last saw of a task's ledger (checkpoint, leaf hashes, platform key)."""
    return home() / "ledger" / _platform_key(url) / user / f"{task}.json"


def save_ledger_view(url: str | None, user: str, task: str, view: dict) -> None:
    _write_private(ledger_path(url, user, task), view)


def load_ledger_view(url: str | None, user: str, task: str) -> dict | None:
    return _read(ledger_path(url, user, task))


def participant_dir(url: str | None, user: str, task: str, created_at: str | None) -> Path:
    """What a participant keeps of one task across restarts (its DP account): per platform, user and
    task, the task's creation time telling a task from a later one of the same name."""
    tag = hashlib.sha256(f"{task}\0{created_at}".encode()).hexdigest()[:12]
    return home() / "participant" / _platform_key(url) / user / f"{task}-{tag}"


def maintenance_dir(url: str | None, user: str, task: str) -> Path:
    """The maintenance tuples this user recorded (the ledger holds only their hashes)."""
    return home() / "maintenance" / _platform_key(url) / user / task
