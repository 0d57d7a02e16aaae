"""Identity keys: made locally, stored 0600, encrypted at rest by default (`werkbund register`
and `werkbund.register` with WERKBUND_KEY_PASSPHRASE, else the account password), unlocked the
same way later, refused when exposed."""
from __future__ import annotations

import base64
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from werkbund.client.cli import cli
from werkbund.client.identity import (IdentityError, generate_identity, load_identity,
                                      public_key_b64, public_key_from_b64)
from werkbund.ledger.entries import (GENESIS_PREV, decode_public_key, make_entry, sign_entry,
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


# -- encrypted at rest by default ---------------------------------------------------------------

@pytest.fixture
def site(tmp_path, monkeypatch):
    from support.ledger_site import Site

    monkeypatch.delenv("WERKBUND_KEY_PASSPHRASE", raising=False)
    s = Site(tmp_path, monkeypatch)
    yield s
    s.server.stop()


def _key_file(site, user):
    from werkbund.client import home_files

    site.monkeypatch.setenv("WERKBUND_HOME", str(site.tmp / user))
    return home_files.identity_path(site.url, user)


def test_register_encrypts_the_key_with_the_password_and_later_commands_unlock_it(site):
    from support.ledger_site import PASSWORDS

    result = site.cli("alice", "register", "--org", "acme")
    assert result.exit_code == 0 and "(encrypted; public " in result.output, result.output
    path = _key_file(site, "alice")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(IdentityError, match="is encrypted; a passphrase is needed"):
        load_identity(path)
    key = load_identity(path, PASSWORDS["alice"])
    created = site.cli("alice", "create", "--task", "weld", "--quorum", "1")
    assert created.exit_code == 0, created.output
    # a command that signs: the key is unlocked with the command's password (WERKBUND_PASSWORD)
    signed = site.cli("alice", "ledger", "maintenance", "--task", "weld", "--machine", "m", "--event", "e")
    assert signed.exit_code == 0, signed.output
    entry = site.api("alice").transport.call("ledger_entries", task="weld")[-1]
    assert verify_entry_signature(entry["entry"], entry["signature"], public_key_b64(key))
    # a cached session token, but neither a password nor WERKBUND_KEY_PASSPHRASE: one clear line
    site.monkeypatch.delenv("WERKBUND_PASSWORD")
    listed = CliRunner().invoke(cli, ["list"])  # signs nothing: works with the token alone
    assert listed.exit_code == 0 and "weld" in listed.output, listed.output
    refused = CliRunner().invoke(cli, ["ledger", "maintenance", "--task", "weld", "--machine", "m", "--event", "e"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.output.count("\n") == 1 and "is encrypted: set WERKBUND_KEY_PASSPHRASE" in refused.output


def test_the_passphrase_variable_wins_and_the_opt_out_is_explicit(site):
    from support.ledger_site import PASSWORDS

    from werkbund.client import home_files

    site.monkeypatch.setenv("WERKBUND_KEY_PASSPHRASE", "a passphrase of its own")
    assert site.cli("bob", "register", "--org", "beta").exit_code == 0
    path = _key_file(site, "bob")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(path, PASSWORDS["bob"])
    assert load_identity(path, "a passphrase of its own") is not None
    assert home_files.load_identity(site.url, "bob") is not None  # the variable unlocks it
    site.monkeypatch.delenv("WERKBUND_KEY_PASSPHRASE")
    with pytest.raises(IdentityError, match="wrong passphrase for your identity key"):
        home_files.load_identity(site.url, "bob", PASSWORDS["bob"])
    plain = site.cli("carol", "register", "--org", "gamma", "--unencrypted-key")
    assert plain.exit_code == 0 and "(UNENCRYPTED; public " in plain.output, plain.output
    assert _key_file(site, "carol").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_the_python_api_encrypts_with_the_password_and_unlocks_with_it(site):
    import werkbund

    site.monkeypatch.setenv("WERKBUND_HOME", str(site.tmp / "dave"))
    site.monkeypatch.delenv("WERKBUND_PASSWORD", raising=False)
    session = werkbund.register("dave", "dave-secret-4444", "delta", url=site.url)
    path = _key_file(site, "dave")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert session.client.identity is not None
    again = werkbund.connect(url=site.url, user="dave", password="dave-secret-4444")
    assert public_key_b64(again.client.identity) == public_key_b64(session.client.identity)
    cached = werkbund.connect(url=site.url, user="dave")  # the cached token: no password here
    with pytest.raises(IdentityError, match="is encrypted: set WERKBUND_KEY_PASSPHRASE"):
        cached.client.identity  # noqa: B018
    site.monkeypatch.setenv("WERKBUND_KEY_PASSPHRASE", "dave-secret-4444")
    assert werkbund.connect(url=site.url, user="dave").client.identity is not None
    site.monkeypatch.setenv("WERKBUND_HOME", str(site.tmp / "erin"))
    plain = werkbund.register("erin", "erin-secret-55555", "eps", url=site.url, encrypt_key=False)
    assert _key_file(site, "erin").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert plain.client.identity is not None
