"""`werkbund platform backup` / `restore`: a platform with a finished task is backed up, restored onto a fresh
machine folder (or another database), started there, and every task's ledger verifies with the same platform
key while the model downloads with the same hash. A changed backup file or a target with data is refused."""
import os
import subprocess

import pytest

from conftest import WERKBUND, quiet_env, start_local_platform
from support.cloud_support import postgres_database
from support.platform_data_support import TASK, check_platform, manifest, old_postgres_platform, old_sqlite_platform
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.platform.storage.blobs import BlobStore
from werkbund.platform import schema
from werkbund.platform.db import Database
from werkbund.platform.service import PlatformService

MODEL_SHA256 = "df9c44a7a4ddebf3e31717eea4b8b52df20ab0e24af6825a6e231dd1f67d0489"  # the fixture's model
PLATFORM_KEY = "CkNOII58bG7V8iYaYjVTuB5PEMSWclNBG3YuSrxUdYY="  # the fixture's ledger key


def werkbund(home, *args, **env):
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([WERKBUND, *args], env=quiet_env(WERKBUND_HOME=str(home), **env), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=home.parent)


def refused(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "Traceback" not in line, result.stderr
    for word in words:
        assert word in line, line


@pytest.mark.slow
def test_a_backup_restores_onto_a_fresh_machine_where_every_ledger_verifies(tmp_path):
    # the machine that is backed up: a platform with a finished task, at this werkbund's schema, and a blob
    old = tmp_path / "old"
    url = old_sqlite_platform(old)
    Database(url, upgrade=True).dispose()
    PlatformService(url).db.dispose()  # its first start moves the model from the database to a file
    blobs = BlobStore(old / "home" / "platform-blobs")
    blobs.put_bytes(TASK, "ab" * 16, b"an update in flight " * 1000, "bob")

    made = werkbund(old / "home", "platform", "backup", "--db", url, "--to", str(tmp_path / "backup"))
    assert made.returncode == 0, made.stderr
    assert f"(schema revision {schema.head()}, " in made.stdout and "2 blob files" in made.stdout
    backup = tmp_path / "backup"
    listed = manifest(backup)
    assert listed["schema_revision"] == schema.head() and listed["ledger_key"]["public_key"] == PLATFORM_KEY
    assert set(listed["files"]) == {"database.sqlite", "ledger-key.pem", f"blobs/{TASK}/{'ab' * 16}",
                                    f"blobs/{TASK}/{'ab' * 16}.json", f"models/{MODEL_SHA256}"}
    assert listed["models"] == {"folder": "models", "files": 1}
    assert listed["files"][f"models/{MODEL_SHA256}"]["sha256"] == MODEL_SHA256  # the model file, by its hash
    assert listed["database"]["tables"]["stored_models"] == 1 and listed["database"]["tables"]["ledger_entries"] == 12
    assert os.stat(backup / "ledger-key.pem").st_mode & 0o077 == 0

    # a fresh machine: nothing under its home; the restore puts the database, key and blobs where `serve` looks
    fresh = tmp_path / "fresh"
    fresh_url = f"sqlite:///{fresh / 'platform.sqlite'}"
    done = werkbund(fresh / "home", "platform", "restore", "--from", str(backup), "--db", fresh_url)
    assert done.returncode == 0, done.stderr
    assert f"ledger key {PLATFORM_KEY}" in done.stdout and "upgrade" not in done.stdout
    assert (fresh / "home" / "platform-blobs" / TASK / ("ab" * 16)).read_bytes() == b"an update in flight " * 1000
    assert os.stat(fresh / "platform.sqlite.ledger-key.pem").st_mode & 0o077 == 0
    assert os.listdir(fresh / "platform.sqlite.models") == [MODEL_SHA256]  # beside the database, as `serve` keeps it
    proc, platform_url = start_local_platform(fresh, fresh_url)
    try:
        found = check_platform("local", expect_model_sha256=MODEL_SHA256, url=platform_url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert found["platform_key"] == PLATFORM_KEY

    # a second restore onto the platform that holds data now is refused, unless forced
    refused(werkbund(fresh / "home", "platform", "restore", "--from", str(backup), "--db", fresh_url),
            "hold data already", "--force")
    forced = werkbund(fresh / "home", "platform", "restore", "--from", str(backup), "--db", fresh_url, "--force")
    assert forced.returncode == 0, forced.stderr

    # a backup changed after it was made is refused before anything is written
    data = bytearray((backup / "database.sqlite").read_bytes())
    data[-100] ^= 1
    (backup / "database.sqlite").write_bytes(bytes(data))
    other = tmp_path / "other"
    refused(werkbund(other / "home", "platform", "restore", "--from", str(backup), "--db",
                     f"sqlite:///{other / 'platform.sqlite'}"), "database.sqlite", "sha256")
    assert not (other / "platform.sqlite").exists() and not (other / "platform.sqlite.ledger-key.pem").exists()
    refused(werkbund(old / "home", "platform", "backup", "--db", url, "--to", str(backup)), "not an empty folder")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_postgresql_platform_backs_up_as_json_lines_and_restores_onto_sqlite_and_postgresql(tmp_path, monkeypatch):
    with postgres_database() as source_url, postgres_database() as target_url:
        key = old_postgres_platform(source_url, tmp_path)
        home = tmp_path / "home"
        monkeypatch.setenv("WERKBUND_HOME", str(home))  # where a PostgreSQL platform keeps its model files
        made = werkbund(home, "platform", "backup", "--db", source_url, "--to", str(tmp_path / "backup"),
                        "--ledger-key", str(key))
        assert made.returncode == 0, made.stderr
        listed = manifest(tmp_path / "backup")
        assert listed["database"]["file"] == "database.jsonl" and listed["schema_revision"] == "0001"

        # onto SQLite: an old backup is restored as it was, then upgraded
        sqlite_url = f"sqlite:///{tmp_path / 'restored.sqlite'}"
        done = werkbund(home, "platform", "restore", "--from", str(tmp_path / "backup"), "--db", sqlite_url)
        assert done.returncode == 0, done.stderr
        assert f"run `werkbund platform upgrade --db {sqlite_url}`" in done.stdout
        Database(sqlite_url, upgrade=True).dispose()
        assert check_platform("inproc", expect_model_sha256=MODEL_SHA256,
                              inproc=InProcPlatform(sqlite_url))["platform_key"] == PLATFORM_KEY

        # onto another PostgreSQL database, its key where WERKBUND_LEDGER_KEY says
        target_key = tmp_path / "target-key.pem"
        done = werkbund(home, "platform", "restore", "--from", str(tmp_path / "backup"), "--db", target_url,
                        WERKBUND_LEDGER_KEY=str(target_key))
        assert done.returncode == 0, done.stderr
        monkeypatch.setenv("WERKBUND_LEDGER_KEY", str(target_key))
        Database(target_url, upgrade=True).dispose()
        platform = InProcPlatform(target_url)
        try:
            assert check_platform("inproc", expect_model_sha256=MODEL_SHA256,
                                  inproc=platform)["platform_key"] == PLATFORM_KEY
        finally:
            platform.service.db.dispose()
