"""The platform's database schema, versioned with Alembic (migrations in ``platform/migrations/``).

``Database`` calls :func:`prepare` when it opens a database:

- an empty database is made at the newest schema (``create_all``) and stamped with the head revision;
- a database from before the schema was versioned (today's tables, no ``alembic_version``) is
  recognised as the baseline revision and stamped so;
- a database at the head revision is used as it is;
- a database at an older revision is refused with one line that says to run
  ``werkbund platform upgrade`` (or brought to the head first when the operator asked for it:
  ``werkbund platform serve --upgrade``, ``werkbund local-platform --upgrade``);
- a database at a revision this code does not know (written by a newer werkbund) is refused.

Alembic runs programmatically over the caller's connection: no ``alembic.ini`` at run time.
To change the schema: edit ``models.py`` (or ``ledger/store.py``), then add a revision under
``migrations/versions/`` (``alembic -c platform/migrations/alembic.ini revision -m "..."`` writes the
skeleton); ``tests/e2e/test_migrations.py`` fails while the models and the head revision differ.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from werkbund.platform.errors import InvalidState, Unavailable
from werkbund.platform.tables import Base

log = logging.getLogger("werkbund.platform.schema")
logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-step INFO lines; werkbund says what it did

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
BASELINE = "0001"  # the schema as it stood before it was versioned
# the tables of the baseline: a database that has these and no alembic_version is at the baseline
BASELINE_TABLES = frozenset({"users", "session_tokens", "tasks", "memberships", "rounds", "stored_models",
                             "ledger_entries", "ledger_checkpoints", "ledger_cosignatures", "identity_keys",
                             "identity_key_events"})


class SchemaOutdated(InvalidState):
    """The database was written by an older werkbund and needs ``werkbund platform upgrade``."""

    code = "schema_outdated"


def metadata():
    """Every table of the platform: the core's and the ledger's."""
    import werkbund.platform.ledger.store  # noqa: F401  (registers the ledger tables)

    return Base.metadata


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """Every revision this code knows, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


def current(connection: Connection) -> str | None:
    """The database's revision; BASELINE for an unversioned database with the baseline's tables; None when empty."""
    from alembic.migration import MigrationContext

    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is not None:
        return revision
    tables = set(inspect(connection).get_table_names())
    if not tables & BASELINE_TABLES:
        return None
    if not BASELINE_TABLES <= tables:
        raise InvalidState(f"{_where(connection)} has some of werkbund's tables but not all "
                           f"(missing {', '.join(sorted(BASELINE_TABLES - tables))}) and no schema version; "
                           "it is not a werkbund platform database")
    return BASELINE


def describe(engine: Engine) -> dict:
    """{"current": the database's revision or None, "head": this code's, "versioned": stamped already}."""
    from alembic.migration import MigrationContext

    with _connect(engine) as connection:
        stamped = MigrationContext.configure(connection).get_current_revision()
        return {"current": current(connection), "head": head(), "versioned": stamped is not None}


def prepare(engine: Engine, upgrade: bool = False) -> str:
    """Make the database ready for this code (see the module's doc); return what was done."""
    with engine.connect() as connection, connection.begin():  # Database reports an OperationalError
        revision = current(connection)
        if revision is None:
            metadata().create_all(connection)
            _stamp(connection, "head")
            return "created"
        if revision not in revisions():
            raise InvalidState(f"{_where(connection)} has schema revision {revision}, which this werkbund does "
                               f"not know (it knows up to {head()}): it was written by a newer werkbund; "
                               "install that version")
        if revision == head():
            return "current"
        if not upgrade:
            raise SchemaOutdated(f"{_where(connection)} has schema revision {revision}, this werkbund needs "
                                 f"{head()}: back it up, then run `werkbund platform upgrade --db "
                                 f"{_url(connection)}` (or start the platform with --upgrade)")
        _upgrade(connection, "head")
        log.info("upgraded %s from schema revision %s to %s", _url(connection), revision, head())
        return f"upgraded from {revision}"


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the database to ``target`` (stamping an unversioned baseline first); (before, after)."""
    from alembic import command

    with _connect(engine) as connection, connection.begin():
        before = current(connection)
        if before is None:
            if target == "head":
                metadata().create_all(connection)
                _stamp(connection, "head")
            else:  # an empty database at an older revision (restoring an old backup): run the revisions
                command.upgrade(alembic_config(connection), target)
            return None, head() if target == "head" else target
        if before not in revisions():
            raise InvalidState(f"{_where(connection)} has schema revision {before}, which this werkbund does "
                               "not know: it was written by a newer werkbund")
        _upgrade(connection, target)
    return before, head() if target == "head" else target


def _upgrade(connection: Connection, target: str) -> None:
    """Run the revisions up to ``target``, after stamping an unversioned database as the baseline."""
    from alembic import command
    from alembic.migration import MigrationContext

    if MigrationContext.configure(connection).get_current_revision() is None:
        _stamp(connection, BASELINE)
    command.upgrade(alembic_config(connection), target)


def _stamp(connection: Connection, revision: str) -> None:
    from alembic.migration import MigrationContext

    MigrationContext.configure(connection).stamp(_scripts(), revision)


def _connect(engine: Engine):
    try:
        return engine.connect()
    except OperationalError as exc:
        raise Unavailable(f"cannot open the database {_render(engine.url)}: {_first_line(exc.orig or exc)}") from None


def _first_line(exc) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _render(url) -> str:
    return url.render_as_string(hide_password=True)


def _url(connection: Connection) -> str:
    return _render(connection.engine.url)


def _where(connection: Connection) -> str:
    return f"the database {_url(connection)}"
