"""A platform database from before the schema was versioned (tests/fixtures/), PostgreSQL databases of
the tests' own, and the checks a platform operator makes after an upgrade or a restore."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD = "platform-before-issue16"
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22", "carol": "carol-password-333"}
TASK = "weld-quality"


def old_sqlite_platform(folder: Path) -> str:
    """The fixture's database as a SQLite file in ``folder``, its ledger key beside it; the URL."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "platform.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript((FIXTURES / f"{OLD}.sql").read_text())
    key = Path(f"{path}.ledger-key.pem")
    shutil.copyfile(FIXTURES / f"{OLD}.ledger-key.pem", key)
    os.chmod(key, 0o600)  # git keeps no file modes; the platform refuses a key others can read
    return f"sqlite:///{path}"


def old_postgres_platform(url: str, folder: Path) -> Path:
    """The fixture's rows in the empty PostgreSQL database ``url`` at the baseline schema; its key file."""
    from sqlalchemy import create_engine

    from werkbund.platform import backup, schema

    source = create_engine(old_sqlite_platform(folder / "source"))
    target = create_engine(url)
    try:
        schema.upgrade(target, schema.BASELINE)
        backup.load_rows(target, backup.table_rows(source))
    finally:
        source.dispose()
        target.dispose()
    return folder / "source" / "platform.sqlite.ledger-key.pem"


def check_platform(platform: str, expect_model_sha256: str | None = None, **where) -> dict:
    """What an operator checks, as the users would, through the client API (``platform`` "local" with
    ``url=``, or "inproc" with ``inproc=``): every user logs in with their password, the finished task is
    there with its members, rounds and model, and every task's ledger verifies for each of its members.
    Returns {"model_sha256", "platform_key"}."""
    from werkbund.client.api import connect
    from werkbund.client.ledger import bundle_report

    users = {name: connect(platform=platform, user=name, password=password, **where)
             for name, password in PASSWORDS.items()}
    tasks = users["alice"].list_tasks()
    assert [(t["name"], t["status"], t["participants"]) for t in tasks] == [(TASK, "COMPLETE", ["bob", "carol"])]
    rounds = users["bob"].rounds(TASK)
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(sorted(r["reported"]) == ["bob", "carol"] and r["metrics"]["participants"] for r in rounds)
    data, info = users["carol"].get_model(TASK)
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    if expect_model_sha256:
        assert info["sha256"] == expect_model_sha256
    keys = set()
    for task in tasks:
        for member in (task["creator"], *task["participants"]):
            bundle = users[member].transport.call("ledger_bundle", task=task["name"])
            report = bundle_report(bundle)
            assert report.ok, str(report)
            finished = [e["entry"] for e in bundle["entries"] if e["entry"]["type"] == "task_finished"]
            assert finished[0]["payload"]["model_sha256"] == info["sha256"]
            keys.add(bundle["platform_key"])
    for user in users.values():
        user.close()
    assert len(keys) == 1
    return {"model_sha256": info["sha256"], "platform_key": keys.pop()}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())
