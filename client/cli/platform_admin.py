"""`werkbund platform upgrade`, `backup` and `restore`: looking after the platform's data (docs/operations.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from werkbund.client.cli.common import environment, handle_errors

DB_HELP = ("The platform's database, a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/werkbund "
           "(default: the local platform's SQLite under WERKBUND_HOME).")
KEY_HELP = ("The platform's ledger signing key file (default: $WERKBUND_LEDGER_KEY, else beside a SQLite database, "
            "else WERKBUND_HOME/platform/ledger-key-*.pem, where `serve` keeps it).")
BLOB_HELP = ("The cloud platform's blob store folder (default: <WERKBUND_HOME>/platform-blobs, where `serve` keeps "
             "it; skipped when it does not exist).")
ENVIRONMENT = (("WERKBUND_HOME", "Home of the default database, --blob-dir and ledger key (default: ~/.werkbund)."),
               "WERKBUND_LEDGER_KEY")


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _engine(url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError

    from werkbund.platform.errors import InvalidInput

    try:
        return create_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise InvalidInput(f"{url!r} is not a database URL this werkbund can open ({exc}); use sqlite:///PATH "
                           "or postgresql+psycopg://USER@HOST/DATABASE") from None


def _db(db):
    from werkbund.client import home_files
    from werkbund.local_platform.server import default_db_url

    return db or default_db_url(home_files.home())


def _blob_dir(blob_dir):
    from werkbund.client import home_files

    return Path(blob_dir) if blob_dir else home_files.home() / "platform-blobs"


@click.command()
@environment(("WERKBUND_HOME", "Where the default database is (default: ~/.werkbund)."))
@click.option("--db", envvar="WERKBUND_DB", show_envvar=True, help=DB_HELP)
@click.option("--check", is_flag=True,
              help="Only tell the database's schema revision and this werkbund's; change nothing, exit 1 when an "
                   "upgrade is due (default: upgrade).")
@handle_errors
def upgrade(db, check):
    """Bring the platform's database to this werkbund's schema (back it up first: `werkbund platform backup`).

    Run it with the platform stopped; `serve --upgrade` and `local-platform --upgrade` do the same at start."""
    from werkbund.platform import schema

    db = _db(db)
    engine = _engine(db)
    try:
        if check:
            state = schema.describe(engine)
            current = state["current"] or "none (an empty database)"
            due = _upgrade_due(state)
            click.echo(f"the database {_shown(db)} has schema revision {current}; this werkbund's is {state['head']}"
                       + ("; run `werkbund platform upgrade`" if due else ""))
            sys.exit(1 if due else 0)
        before, after = schema.upgrade(engine)
    finally:
        engine.dispose()
    if before is None:
        click.echo(f"made the platform's tables in {_shown(db)} at schema revision {after}")
    elif before == after:
        click.echo(f"the database {_shown(db)} is at schema revision {after} already; nothing to do")
    else:
        click.echo(f"upgraded the database {_shown(db)} from schema revision {before} to {after}")


@click.command()
@environment(*ENVIRONMENT)
@click.option("--db", envvar="WERKBUND_DB", show_envvar=True, help=DB_HELP)
@click.option("--to", "target", required=True, type=click.Path(file_okay=False),
              help="A new (or empty) folder to write the backup to; it will hold the ledger's private key.")
@click.option("--ledger-key", type=click.Path(dir_okay=False), help=KEY_HELP)
@click.option("--blob-dir", type=click.Path(file_okay=False), envvar="WERKBUND_BLOB_DIR", show_envvar=True,
              help=BLOB_HELP)
@handle_errors
def backup(db, target, ledger_key, blob_dir):
    """Copy the database, the ledger signing key and the blob store into a folder with a manifest of
    sha256 sums. Safe while the platform runs (a consistent snapshot of the database)."""
    from werkbund.platform import backup as backups

    db = _db(db)
    manifest = backups.backup(db, Path(target), Path(ledger_key) if ledger_key else None, _blob_dir(blob_dir))
    rows = sum(manifest["database"]["tables"].values())
    click.echo(f"backed up {_shown(db)} (schema revision {manifest['schema_revision']}, {rows} rows in "
               f"{len(manifest['database']['tables'])} tables), the ledger key and {manifest['blobs']['files']} "
               f"blob files to {target}")


@click.command()
@environment(*ENVIRONMENT)
@click.option("--from", "source", required=True, type=click.Path(file_okay=False, exists=True),
              help="The folder `werkbund platform backup` wrote.")
@click.option("--db", envvar="WERKBUND_DB", show_envvar=True,
              help="The database to restore to (SQLAlchemy URL); it must be empty unless --force (default: the "
                   "local platform's SQLite under WERKBUND_HOME).")
@click.option("--ledger-key", type=click.Path(dir_okay=False), help=KEY_HELP)
@click.option("--blob-dir", type=click.Path(file_okay=False), envvar="WERKBUND_BLOB_DIR", show_envvar=True,
              help=BLOB_HELP)
@click.option("--force", is_flag=True,
              help="Replace a database, ledger key and blob store that hold data (default: refuse to).")
@handle_errors
def restore(source, db, ledger_key, blob_dir, force):
    """Check a backup against its manifest, then restore it onto a (fresh) platform: database, ledger key,
    blob store. Start the platform afterwards; a backup from an older werkbund needs `upgrade` first."""
    from werkbund.platform import backup as backups
    from werkbund.platform import schema

    db = _db(db)
    manifest = backups.restore(Path(source), db, Path(ledger_key) if ledger_key else None, _blob_dir(blob_dir),
                               force=force)
    revision = manifest["schema_revision"]
    click.echo(f"restored {source} (made {manifest['created_at']} from {manifest['database']['url']}, schema "
               f"revision {revision}) to {_shown(db)}; ledger key {manifest['ledger_key']['public_key']}")
    if revision != schema.head():
        click.echo(f"the backup is at schema revision {revision}, this werkbund needs {schema.head()}: run "
                   f"`werkbund platform upgrade --db {_shown(db)}`")


def upgrade_before_start(db: str) -> None:
    """`serve --upgrade`, `local-platform --upgrade`: upgrade an older database and say so, before the service opens it."""
    from werkbund.platform import schema
    from werkbund.platform.db import SCHEMA_LOCK, advisory_lock

    engine = _engine(db)
    try:
        if _upgrade_due(schema.describe(engine)):  # an unreachable database is reported here
            with advisory_lock(engine, SCHEMA_LOCK):  # replicas started with --upgrade: one upgrades
                if _upgrade_due(schema.describe(engine)):
                    before, after = schema.upgrade(engine)
                    click.echo(f"upgraded the database {_shown(db)} from schema revision {before} to {after}")
    finally:
        engine.dispose()


def _upgrade_due(state: dict) -> bool:
    return state["current"] is not None and state["current"] != state["head"]
