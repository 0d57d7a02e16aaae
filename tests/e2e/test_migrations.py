"""The platform's schema is versioned: a database written before (tests/fixtures/platform-before-issue16.sql,
a real finished task) is refused at start with one line, upgraded by `werkbund platform upgrade` or
`--upgrade`, and afterwards users log in, the task, its rounds and model are there and the ledger verifies;
on SQLite and on PostgreSQL. The migrations and the models describe the same schema."""
import sqlite3
import subprocess

import pytest
from sqlalchemy import create_engine, inspect

from conftest import WERKBUND, quiet_env
from support.cloud_support import postgres_database
from support.platform_data_support import PASSWORDS, check_platform, old_postgres_platform, old_sqlite_platform
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.platform import schema
from werkbund.platform.db import Database
from werkbund.platform.errors import InvalidState

NEW_INDEXES = {"ix_memberships_user_id", "ix_tasks_creator_id", "ix_session_tokens_user_id",
               "ix_session_tokens_expires_at"}


def werkbund(tmp_path, *args, timeout=120):
    return subprocess.run([WERKBUND, *args], env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=tmp_path)


def one_line_error(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def model_files(folder) -> list:
    from pathlib import Path

    return sorted(p.name for p in Path(folder).iterdir())


def indexes(url: str) -> set:
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {i["name"] for table in found.get_table_names() for i in found.get_indexes(table)}
    finally:
        engine.dispose()


def models_match_migrations(url: str) -> list:
    """The differences between the schema the revisions make on an empty database and the models'."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(url)
    try:
        assert schema.upgrade(engine, schema.head()) == (None, schema.head())  # every revision, from nothing
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), schema.metadata())
    finally:
        engine.dispose()


def test_the_revisions_make_the_schema_the_models_describe(tmp_path):
    assert schema.revisions()[:4] == [schema.BASELINE, "0002", "0003", "0004"]  # later revisions follow
    assert models_match_migrations(f"sqlite:///{tmp_path / 'fresh.db'}") == []
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")  # a new database is made at the head and stamped
    assert db.schema_action == "created"
    assert schema.describe(db.engine) == {"current": schema.head(), "head": schema.head(), "versioned": True}
    db.dispose()
    assert Database(f"sqlite:///{tmp_path / 'new.db'}").schema_action == "current"


@pytest.mark.postgres
def test_the_revisions_make_the_schema_the_models_describe_on_postgresql():
    with postgres_database() as url:
        assert models_match_migrations(url) == []


@pytest.mark.slow
def test_an_old_sqlite_database_is_refused_then_upgraded_at_start_with_everything_kept(tmp_path):
    url = old_sqlite_platform(tmp_path / "platform")
    with pytest.raises(InvalidState, match="werkbund platform upgrade"):
        Database(url)
    refused = one_line_error(werkbund(tmp_path, "local-platform", "--db", url, "--port", "0"),
                             "schema revision 0001", f"needs {schema.head()}", f"werkbund platform upgrade --db {url}")
    assert "--upgrade" in refused
    check = werkbund(tmp_path, "platform", "upgrade", "--db", url, "--check")
    assert check.returncode == 1 and f"schema revision 0001; this werkbund's is {schema.head()}" in check.stdout

    proc = subprocess.Popen([WERKBUND, "local-platform", "--db", url, "--port", "0", "--upgrade"],
                            env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        said = proc.stdout.readline()
        assert said.startswith(f"upgraded the database {url} from schema revision 0001 to {schema.head()}"), \
            said + proc.stderr.read() if proc.poll() is not None else said
        listening = proc.stdout.readline()
        assert "listening on" in listening
        found = check_platform("local", url=listening.split("listening on ")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert NEW_INDEXES <= indexes(url) and "request_replies" in inspect(create_engine(url)).get_table_names()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(schema.head(),)]
        # the upgrade removed the fixture's long-expired sessions; the logins above added one each
        assert conn.execute("SELECT COUNT(*) FROM session_tokens WHERE expires_at < datetime('now')").fetchone() == (0,)
        # revision 0004: the platform moved the model's bytes out of the database into a file named by its sha256
        assert conn.execute("SELECT sha256, data IS NULL FROM stored_models").fetchall() == [(found["model_sha256"], 1)]
    assert model_files(url.removeprefix("sqlite:///") + ".models") == [found["model_sha256"]]
    assert found["platform_key"] == "CkNOII58bG7V8iYaYjVTuB5PEMSWclNBG3YuSrxUdYY="  # the fixture's key signed
    assert werkbund(tmp_path, "platform", "upgrade", "--db", url).stdout.strip().endswith(
        f"is at schema revision {schema.head()} already; nothing to do")


@pytest.mark.slow
@pytest.mark.postgres
def test_an_old_postgresql_database_is_upgraded_by_werkbund_platform_upgrade(tmp_path, monkeypatch):
    with postgres_database() as url:
        key = old_postgres_platform(url, tmp_path)
        monkeypatch.setenv("WERKBUND_LEDGER_KEY", str(key))
        monkeypatch.setenv("WERKBUND_MODEL_DIR", str(tmp_path / "models"))
        with pytest.raises(InvalidState, match=f"schema revision 0001, this werkbund needs {schema.head()}"):
            Database(url)
        done = werkbund(tmp_path, "platform", "upgrade", "--db", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"upgraded the database {url} from schema revision 0001 to {schema.head()}"
        assert NEW_INDEXES <= indexes(url)
        platform = InProcPlatform(url)
        try:
            found = check_platform("inproc", inproc=platform)
            assert model_files(tmp_path / "models") == [found["model_sha256"]]  # moved out of the database
            # new rows get new ids after the copied ones (a login adds a session token)
            assert platform.service.login("bob", PASSWORDS["bob"])["token"]
        finally:
            platform.service.db.dispose()


@pytest.mark.slow
def test_a_database_from_a_newer_werkbund_or_not_a_platform_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Database(url).dispose()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    one_line_error(werkbund(tmp_path, "platform", "upgrade", "--db", url), "0099", "newer werkbund")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    one_line_error(werkbund(tmp_path, "platform", "upgrade", "--db", f"sqlite:///{tmp_path / 'other.db'}"),
                   "not a werkbund platform database")
    one_line_error(werkbund(tmp_path, "platform", "upgrade", "--db", "not-a-url"), "not a database URL")


def test_a_login_deletes_the_expired_session_tokens_that_revision_0002_indexes():
    from datetime import timedelta

    from werkbund.platform.tables import SessionToken, utcnow
    from werkbund.platform.service import PlatformService

    service = PlatformService("sqlite://")
    service.register("alice", PASSWORDS["alice"], "acme")
    kept = service.login("alice", PASSWORDS["alice"])
    with service.db.session() as s:
        user_id = s.query(SessionToken).one().user_id
        s.add(SessionToken(token_sha256="0" * 64, user_id=user_id, expires_at=utcnow() - timedelta(minutes=1)))
    service.login("alice", PASSWORDS["alice"])
    with service.db.session() as s:
        assert s.query(SessionToken).count() == 2  # the two live sessions, not the expired one
        assert s.query(SessionToken).filter(SessionToken.token_sha256 == "0" * 64).count() == 0
    assert service.authenticate(kept["token"]) == "alice"
