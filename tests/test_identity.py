"""Identity keys: made locally, stored 0600, optionally encrypted, refused when exposed."""
from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from werkbund.client.identity import (IdentityError, generate_identity, load_identity,
                                      public_key_b64, public_key_from_b64)
from werkbund.platform.ledger import (GENESIS_PREV, decode_public_key, make_entry, sign_entry,
                                      verify_entry_signature)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask():
    old = os.umask(0)
    yield
    os.umask(old)


@posix_only
def test_generated_key_is_private_even_under_a_permissive_umask(tmp_path, permissive_umask):
    path = tmp_path / "keys" / "identity.pem"
    key = generate_identity(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_identity(path)
    assert public_key_b64(loaded) == public_key_b64(key)
    assert [p.name for p in path.parent.iterdir()] == ["identity.pem"]


def test_public_key_encoding_is_base64_of_the_raw_32_bytes(tmp_path):
    key = generate_identity(tmp_path / "id.pem")
    text = public_key_b64(key)
    assert len(text) == 44
    raw = base64.b64decode(text, validate=True)
    assert raw == key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    assert public_key_b64(key.public_key()) == text
    assert public_key_from_b64(text).public_bytes_raw() == raw
    assert decode_public_key(text).public_bytes_raw() == raw
    # What the user signs, the ledger verifies with the registered text.
    entry = make_entry("t", "joined", "alice", 0, GENESIS_PREV, {}, "2025-01-01T00:00:00Z")
    assert verify_entry_signature(entry, sign_entry(entry, load_identity(tmp_path / "id.pem")), text)


def test_passphrase_encrypts_the_key(tmp_path):
    path = tmp_path / "id.pem"
    key = generate_identity(path, passphrase="correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert public_key_b64(load_identity(path, "correct horse")) == public_key_b64(key)
    assert public_key_b64(load_identity(path, b"correct horse")) == public_key_b64(key)
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(path, "battery staple")
    with pytest.raises(IdentityError, match="passphrase is needed"):
        load_identity(path)
    with pytest.raises(IdentityError, match="empty"):
        generate_identity(tmp_path / "other.pem", passphrase="")


def test_unencrypted_key_with_a_passphrase_is_a_clear_error(tmp_path):
    path = tmp_path / "id.pem"
    generate_identity(path)
    with pytest.raises(IdentityError, match="not encrypted"):
        load_identity(path, "something")


@posix_only
@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620])
def test_key_exposed_to_group_or_others_is_refused(tmp_path, bad_mode):
    path = tmp_path / "id.pem"
    generate_identity(path)
    os.chmod(path, bad_mode)
    with pytest.raises(IdentityError) as info:
        load_identity(path)
    assert f"mode {bad_mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)
    os.chmod(path, 0o400)
    load_identity(path)


def test_existing_key_is_not_overwritten_unless_asked(tmp_path):
    path = tmp_path / "id.pem"
    first = generate_identity(path)
    with pytest.raises(IdentityError, match="already exists"):
        generate_identity(path)
    assert public_key_b64(load_identity(path)) == public_key_b64(first)
    second = generate_identity(path, overwrite=True)
    assert public_key_b64(load_identity(path)) == public_key_b64(second) != public_key_b64(first)
    if os.name == "posix":
        assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.pem"]


def test_missing_garbage_and_foreign_key_files(tmp_path):
    with pytest.raises(IdentityError, match="no identity key"):
        load_identity(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    os.chmod(junk, 0o600)
    with pytest.raises(IdentityError, match="not a PEM private key"):
        load_identity(junk)
    ec = tmp_path / "ec.pem"
    ec.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(ec, 0o600)
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        load_identity(ec)
