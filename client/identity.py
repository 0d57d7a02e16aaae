"""Per-user Ed25519 identity keys, made and kept on the user's own machine.

The private key is stored as PKCS#8 PEM with file mode 0600, encrypted with
the best available scheme when a passphrase is given (``werkbund register``
gives one by default: WERKBUND_KEY_PASSPHRASE, else the account password), and
never leaves the machine; only the public key goes to the platform, as the standard base64 of
its raw 32 bytes (44 characters), the encoding the ledger uses.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from werkbund.platform.errors import WerkbundError
from werkbund.ledger.entries import decode_public_key, encode_public_key


class IdentityError(WerkbundError):
    """The identity key cannot be made or used; the message says why and what to do."""

    code = "identity_error"


def _passphrase_bytes(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    if not data:
        raise IdentityError("the passphrase is empty; give none to store the key unencrypted")
    return data


def generate_identity(path: str | os.PathLike, passphrase: str | bytes | None = None, *,
                      overwrite: bool = False) -> Ed25519PrivateKey:
    """Make a new key pair and write the private key to ``path`` (mode 0600).

    Refuses to replace an existing file unless ``overwrite``. The parent folder
    is created with mode 0700 when missing.
    """
    path = Path(path)
    secret = _passphrase_bytes(passphrase)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} already exists; refusing to replace an identity key")
    key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(secret) if secret
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written with O_EXCL so that no other file is followed or clobbered; a
    # replacement goes through a temporary file and an atomic rename.
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if overwrite else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{target} already exists; refusing to replace an identity key") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), 0o600)
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return key


def check_permissions(path: str | os.PathLike) -> None:
    """Raise :class:`IdentityError` when group or others have any access to ``path``."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{path} is accessible by group or others (mode {mode:04o}); an identity key must "
            f"be private to its owner. Run: chmod 600 {path}")


def is_encrypted(path: str | os.PathLike) -> bool:
    """True when the key file at ``path`` is an encrypted PKCS#8 PEM."""
    try:
        with open(path, "rb") as fh:
            return b"ENCRYPTED" in fh.readline()
    except FileNotFoundError:
        raise IdentityError(f"no identity key at {path}; make one first") from None


def load_identity(path: str | os.PathLike, passphrase: str | bytes | None = None
                  ) -> Ed25519PrivateKey:
    """Read the private key written by :func:`generate_identity`."""
    path = Path(path)
    try:
        check_permissions(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no identity key at {path}; make one first") from None
    secret = _passphrase_bytes(passphrase)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and secret is None:
        raise IdentityError(f"{path} is encrypted; a passphrase is needed (WERKBUND_KEY_PASSPHRASE, "
                            "by default the password you registered with)")
    if not encrypted and secret is not None:
        raise IdentityError(f"{path} is not encrypted; give no passphrase")
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except ValueError:
        if encrypted:
            raise IdentityError(f"wrong passphrase for {path}") from None
        raise IdentityError(f"{path} is not a PEM private key") from None
    except TypeError as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as standard base64 of its raw 32 bytes (44 characters)."""
    return encode_public_key(key)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """The inverse of :func:`public_key_b64`."""
    return decode_public_key(text)
