"""`werkbund platform backup` / `restore`: the platform's database, ledger key and blob store in one folder.

A backup folder holds

- ``database.sqlite``: a SQLite database copied with SQLite's online backup API (a consistent copy
  while the platform runs), or ``database.jsonl``: any other database (PostgreSQL) as JSON lines,
  every table's rows read in one REPEATABLE READ transaction through SQLAlchemy (no pickle: a value
  is a JSON scalar or a one-key object ``{"bytes": base64}``, ``{"datetime": iso}``, ``{"json": ...}``);
- ``ledger-key.pem``: the platform's ledger signing key, which signed every checkpoint (0600);
- ``blobs/``: the blob store's finished files (the cloud platform's large messages in flight);
- ``models/``: the final models' files (named by their sha256) that the database copy refers to;
- ``manifest.json``: format, time, werkbund version, schema revision, row counts, the ledger's
  public key and the sha256 and size of every file above.

``restore`` checks every file against the manifest (and refuses files it does not list) before it
writes anything, refuses a target that holds data unless ``force``, and loads the database at the
backup's schema revision: a SQLite backup onto SQLite is copied whole, anything else is loaded row
by row into the schema made by the migrations (PostgreSQL's id sequences are then moved past the
rows). A backup from an older werkbund is restored as it was; `werkbund platform upgrade` follows.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import MetaData, create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url

from werkbund.platform import schema
from werkbund.platform.errors import InvalidInput, InvalidState
from werkbund.platform.storage.files import SHA256
from werkbund.platform.ledger.store import default_key_path, load_or_create_key
from werkbund.platform.model_store import default_model_dir

FORMAT = "werkbund-platform-backup/1"
MANIFEST = "manifest.json"
SQLITE_FILE, JSONL_FILE, KEY_FILE, BLOBS = "database.sqlite", "database.jsonl", "ledger-key.pem", "blobs"
MODELS = "models"
BATCH = 500


class BackupError(InvalidInput):
    code = "backup_invalid"


# ------------------------------------------------------------------------------------ backup
def backup(db_url: str, target: Path, ledger_key: Path | None = None, blob_dir: Path | None = None,
           model_dir: Path | None = None) -> dict:
    """Write a backup of the platform at ``db_url`` into the new or empty folder ``target``; the manifest.
    ``model_dir``: the platform's model files (default: where the service keeps them for ``db_url``)."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} is not an empty folder; back up into a new one")
    key_path = Path(ledger_key) if ledger_key else default_key_path(db_url)
    if key_path is None or not key_path.is_file():
        raise InvalidInput(f"no ledger key at {key_path}: give --ledger-key (the key signed every checkpoint; "
                           "a backup without it cannot be verified after a restore)")
    public_key = _public_key(key_path)
    url = make_url(db_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and (url.database in (None, "", ":memory:") or not Path(url.database).is_file()):
        raise InvalidInput(f"no SQLite database at {url.database or ':memory:'}")
    engine = create_engine(db_url)
    try:
        revision = schema.describe(engine)["current"]
        if revision is None:
            raise InvalidInput(f"{_shown(db_url)} holds no werkbund platform tables; nothing to back up")
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        if sqlite:
            _sqlite_copy(Path(url.database), target / SQLITE_FILE)
            tables = _row_counts(target / SQLITE_FILE)
        else:
            tables = _dump_jsonl(engine, target / JSONL_FILE)
    finally:
        engine.dispose()
    _private_copy(key_path, target / KEY_FILE)
    models = _copy_models(target, SQLITE_FILE if sqlite else JSONL_FILE,
                          Path(model_dir) if model_dir else default_model_dir(db_url))
    blobs = 0
    if blob_dir is not None and Path(blob_dir).is_dir():
        for path in sorted(Path(blob_dir).rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):  # an upload in flight is not a blob yet
                copy = target / BLOBS / path.relative_to(blob_dir)
                copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
                blobs += 1
    from importlib.metadata import version

    manifest = {
        "format": FORMAT, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "werkbund": version("werkbund"), "schema_revision": revision,
        "database": {"file": SQLITE_FILE if sqlite else JSONL_FILE, "dialect": url.get_backend_name(),
                     "url": _shown(db_url), "tables": tables},
        "ledger_key": {"file": KEY_FILE, "public_key": public_key},
        "blobs": {"folder": BLOBS, "files": blobs},
        "models": {"folder": MODELS, "files": models},
        "files": {rel: _digest(target / rel) for rel in _files(target)},
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _sqlite_copy(source: Path, copy: Path) -> None:
    """A consistent copy of a live SQLite database (SQLite's online backup API)."""
    src = sqlite3.connect(source, timeout=30)  # a reader only (mode=ro cannot open a WAL database without -shm)
    try:
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
    finally:
        src.close()


def _row_counts(path: Path) -> dict:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


def _dump_jsonl(engine: Engine, path: Path) -> dict:
    counts = {}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out, engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        with conn.begin():
            meta = MetaData()
            meta.reflect(conn)
            for table in meta.sorted_tables:
                columns = [c.name for c in table.columns]
                out.write(json.dumps({"table": table.name, "columns": columns}) + "\n")
                order = [table.c[c] for c in ("id", "version_num") if c in table.c] or list(table.c)
                counts[table.name] = 0
                for row in conn.execute(select(table).order_by(*order)):
                    out.write(json.dumps({"row": [_encode(v) for v in row]}) + "\n")
                    counts[table.name] += 1
    return counts


def _encode(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, (dict, list)):
        return {"json": value}
    raise InvalidState(f"cannot back up a value of type {type(value).__name__}")


def _decode(value):
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (kind, data), = value.items()
        if kind == "bytes":
            return base64.b64decode(data)
        if kind == "datetime":
            return datetime.fromisoformat(data)
        if kind == "json":
            return data
    raise BackupError(f"the database dump holds a value it cannot read: {str(value)[:80]}")


# ----------------------------------------------------------------------------------- restore
def check(source: Path) -> dict:
    """The manifest of the backup in ``source``, after checking every file's size and sha256."""
    source = Path(source)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} holds no {MANIFEST}: not a werkbund platform backup") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{source / MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{source / MANIFEST} is not a {FORMAT} manifest")
    listed = manifest.get("files") or {}
    for rel, expected in listed.items():
        path = source / rel
        if not path.resolve().is_relative_to(source.resolve()) or not path.is_file():
            raise BackupError(f"the backup lacks {rel}, which its manifest lists")
        if _digest(path) != expected:
            raise BackupError(f"{rel} in the backup does not match its sha256 in the manifest: it was changed "
                              "or damaged after the backup")
    extra = sorted(set(_files(source)) - set(listed))
    if extra:
        raise BackupError(f"the backup holds {extra[0]}, which its manifest does not list")
    for rel in (manifest["database"]["file"], manifest["ledger_key"]["file"]):
        if rel not in listed:
            raise BackupError(f"the manifest does not list {rel}")
    return manifest


def restore(source: Path, db_url: str, ledger_key: Path | None = None, blob_dir: Path | None = None,
            force: bool = False, model_dir: Path | None = None) -> dict:
    """Restore the backup in ``source`` onto the platform at ``db_url``; the backup's manifest. The model
    files go to ``model_dir`` (default: where the service keeps them for ``db_url``)."""
    source = Path(source)
    manifest = check(source)
    revision = manifest["schema_revision"]
    if revision not in schema.revisions():
        raise BackupError(f"the backup has schema revision {revision}, which this werkbund does not know: "
                          f"it was made by werkbund {manifest.get('werkbund')}; restore it with that version")
    key_path = Path(ledger_key) if ledger_key else default_key_path(db_url)
    if key_path is None:
        raise InvalidInput("an in-memory database cannot be restored to; give a database URL")
    url = make_url(db_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and url.database in (None, "", ":memory:"):
        raise InvalidInput("an in-memory database cannot be restored to; give a database URL")
    if sqlite:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # what is there already: refused unless force
    engine = create_engine(db_url)
    try:
        held = []
        if schema.describe(engine)["current"] is not None:
            held.append(f"the database {_shown(db_url)}")
        if key_path.exists():
            held.append(f"the ledger key {key_path}")
        blobs = blob_dir is not None and manifest["blobs"]["files"] > 0  # a backup without blobs leaves them
        if blobs and Path(blob_dir).is_dir() and any(Path(blob_dir).iterdir()):
            held.append(f"the blob store {blob_dir}")
        model_dir = Path(model_dir) if model_dir else default_model_dir(db_url)
        models = (manifest.get("models") or {}).get("files", 0) > 0
        if model_dir is not None and model_dir.is_dir() and any(model_dir.iterdir()):
            held.append(f"the model folder {model_dir}")
        if held and not force:
            raise InvalidState(f"{' and '.join(held)} hold data already; restore onto a fresh platform, or give "
                               "--force to replace it")
        if sqlite and manifest["database"]["file"] == SQLITE_FILE:
            engine.dispose()
            database = Path(url.database)
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                path.unlink(missing_ok=True)
            database.parent.mkdir(parents=True, exist_ok=True)
            _sqlite_copy(source / SQLITE_FILE, database)
            with sqlite3.connect(database) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        else:
            _drop_all(engine)
            schema.upgrade(engine, revision)
            load_rows(engine, _backup_rows(source, manifest))
    finally:
        engine.dispose()
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)
    _private_copy(source / KEY_FILE, key_path)
    if model_dir is not None and (models or model_dir.exists()):
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(mode=0o700, parents=True)
        if models:
            for path in sorted((source / MODELS).iterdir()):
                _private_copy(path, model_dir / path.name)
    if blobs:
        blob_dir = Path(blob_dir)
        if blob_dir.exists():
            shutil.rmtree(blob_dir)
        blob_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source / BLOBS, blob_dir, dirs_exist_ok=True)
    return manifest


def _backup_rows(source: Path, manifest: dict):
    """(table, columns, rows) of the backup's database, whichever form it has."""
    if manifest["database"]["file"] == SQLITE_FILE:
        engine = create_engine(f"sqlite:///{(source / SQLITE_FILE).resolve().as_uri()}?mode=ro&uri=true")
        try:
            yield from table_rows(engine)
        finally:
            engine.dispose()
        return
    with open(source / JSONL_FILE) as lines:
        table, columns, rows = None, None, []
        for number, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise BackupError(f"{JSONL_FILE} line {number} is not JSON") from None
            if "table" in item:
                if table is not None:
                    yield table, columns, iter(rows)
                table, columns, rows = item["table"], item["columns"], []
            else:
                rows.append([_decode(v) for v in item["row"]])
        if table is not None:
            yield table, columns, iter(rows)


def table_rows(engine: Engine):
    """(table, columns, rows) of every table of a database, parents before children."""
    with engine.connect() as conn:
        meta = MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            yield table.name, [c.name for c in table.columns], (tuple(r) for r in conn.execute(select(table)))


def load_rows(engine: Engine, tables) -> None:
    """Insert ``(table, columns, rows)`` into the empty tables of a database made at the rows' schema revision."""
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn)
        for name, columns, rows in tables:
            if name == "alembic_version":  # the migrations stamped the target already
                continue
            if name not in meta.tables:
                raise BackupError(f"the backup has a table {name!r} that its schema revision does not have")
            table = meta.tables[name]
            batch = []
            for row in rows:
                batch.append(dict(zip(columns, row)))
                if len(batch) >= BATCH:
                    conn.execute(table.insert(), batch)
                    batch = []
            if batch:
                conn.execute(table.insert(), batch)
        if conn.dialect.name == "postgresql":  # ids were inserted as they were: move each sequence past them
            for table in meta.sorted_tables:
                if "id" in table.c:
                    highest = conn.scalar(select(func.max(table.c.id)))
                    if highest is not None:
                        conn.execute(text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :n)"),
                                     {"t": table.name, "n": highest})


def _drop_all(engine: Engine) -> None:
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn)
        meta.drop_all(conn)


# ----------------------------------------------------------------------------------- helpers
def _copy_models(target: Path, database_file: str, model_dir: Path | None) -> int:
    """Copy the model files that the database copy in ``target`` refers to (rows whose bytes are not in
    the database: revision 0004 on) into ``target/models``; how many."""
    hashes = sorted(set(_model_hashes(target, database_file)))
    if not hashes:
        return 0
    if model_dir is None:
        raise InvalidInput("the database refers to model files but has no model folder; give its place")
    (target / MODELS).mkdir(mode=0o700)
    for sha in hashes:
        if not SHA256.fullmatch(sha or "") or not (model_dir / sha).is_file():
            raise InvalidState(f"the model file {model_dir / str(sha)} that the database refers to is missing; "
                               "it was replaced while the backup ran (back up again) or lost")
        _private_copy(model_dir / sha, target / MODELS / sha)
        if _digest(target / MODELS / sha)["sha256"] != sha:
            raise InvalidState(f"the model file {model_dir / sha} does not hash to its name: it is damaged")
    return len(hashes)


def _model_hashes(target: Path, database_file: str):
    if database_file == SQLITE_FILE:
        conn = sqlite3.connect(f"{(target / SQLITE_FILE).resolve().as_uri()}?mode=ro", uri=True)
        try:
            yield from (r[0] for r in conn.execute("SELECT sha256 FROM stored_models WHERE data IS NULL"))
        finally:
            conn.close()
        return
    with open(target / JSONL_FILE) as lines:
        columns = None
        for line in lines:
            item = json.loads(line)
            if "table" in item:
                columns = item["columns"] if item["table"] == "stored_models" else None
            elif columns is not None:
                row = dict(zip(columns, item["row"]))
                if row.get("data") is None:
                    yield row["sha256"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            sha.update(piece)
    return {"sha256": sha.hexdigest(), "size": path.stat().st_size}


def _private_copy(source: Path, copy: Path) -> None:
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as into:
        shutil.copyfileobj(into, out, 1 << 20)  # streamed: a model file may have several GB


def _public_key(path: Path) -> str:
    from werkbund.ledger.entries import encode_public_key

    try:
        return encode_public_key(load_or_create_key(path))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not the platform's ledger key: {exc}") from None


def _shown(db_url: str) -> str:
    return make_url(db_url).render_as_string(hide_password=True)
