"""The cloud platform for tests: a real RabbitMQ broker, a real `werkbund platform serve` process.

Each run gets its own vhost (and, on PostgreSQL, its own database), removed afterwards, so the
broker's default vhost and other runs are left alone. Under CI (CI=true) a missing broker or
database fails the tests instead of skipping them.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import pytest
import requests

from conftest import WERKBUND, quiet_env

BROKER_HOST, BROKER_PORT, MANAGEMENT = "127.0.0.1", 5672, "http://guest:guest@127.0.0.1:15672"
POSTGRES_ADMIN_URL = os.environ.get("WERKBUND_TEST_POSTGRES", "postgresql+psycopg://root@127.0.0.1/postgres")


def unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def _management_up() -> bool:
    try:
        return requests.get("http://127.0.0.1:15672/api/overview", auth=("guest", "guest"), timeout=5).ok
    except requests.RequestException:
        return False


def require_broker() -> None:
    """A broker on 127.0.0.1:5672 with the management API. The tests never change the system's broker:
    .ci/run and scripts/provision.sh enable the plugin; without it the test is skipped (fails under CI)."""
    if not _port_open(BROKER_HOST, BROKER_PORT):
        unavailable(f"no RabbitMQ broker on {BROKER_HOST}:{BROKER_PORT}")
    if not _management_up():
        unavailable("the RabbitMQ management API (rabbitmq_management) is not reachable on port 15672; the tests "
                    "leave the system's broker as it is: enable it with `rabbitmq-plugins enable rabbitmq_management` "
                    "(as .ci/run and scripts/provision.sh do)")


@contextlib.contextmanager
def database(kind: str, tmp: Path):
    """A fresh SQLite file or PostgreSQL database; dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'cloud.db'}"
        return
    with postgres_database() as url:
        yield url


@contextlib.contextmanager
def postgres_database():
    """A new, empty PostgreSQL database werkbund_test_*; dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"werkbund_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - reported as unavailable
        admin.dispose()
        unavailable(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_cloud_platform(tmp: Path, db_url: str, vhost: str, port: int = BROKER_PORT,
                         management: str = MANAGEMENT, scheme: str = "amqp", extra: tuple = (),
                         env: dict | None = None):
    """Start `werkbund platform serve` (``extra``: more of its options, ``env``: of its environment); return
    (process, the URL clients use). Its log is ``tmp/cloud-platform.log``."""
    log = tmp / "cloud-platform.log"
    proc = subprocess.Popen([WERKBUND, "platform", "serve", "--broker",
                             f"{scheme}://guest:guest@{BROKER_HOST}:{port}/{vhost}", "--db", db_url,
                             "--management", management, *extra],
                            env=quiet_env(WERKBUND_HOME=str(tmp / "platform-home"), **(env or {})),
                            stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, stdin=subprocess.DEVNULL)
    deadline, line = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving on" in line:
            return proc, f"{scheme}://{BROKER_HOST}:{port}/{vhost}"
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"cloud platform did not start: {line!r} {log.read_text()}")


@contextlib.contextmanager
def cloud_platform(tmp: Path, db_kind: str = "sqlite", node=None, extra: tuple = ()):
    """A running cloud platform in a vhost of its own; yields the client URL.

    ``node``: a broker node of the test's own (tests/support/broker_node.py) instead of the system broker;
    ``extra``: more options of `werkbund platform serve`."""
    if node is None:
        require_broker()
    from werkbund.platform.amqp.broker_admin import BrokerAdmin
    from werkbund.platform.errors import Unavailable

    port, management = (node.port, node.management_url) if node is not None else (BROKER_PORT, MANAGEMENT)
    vhost = f"wb-test-{uuid.uuid4().hex[:8]}"
    admin = BrokerAdmin(management, vhost)
    with database(db_kind, tmp) as db_url:
        proc, url = start_cloud_platform(tmp, db_url, vhost, port, management, extra=extra)
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            try:
                for account in admin.broker_users():
                    admin.delete_broker_user(account)
                admin.delete_vhost()
            except Unavailable as exc:  # a test's own node may be down after a failure: keep that failure
                if node is None:
                    raise
                warnings.warn(f"could not clean up vhost {vhost}: {exc}", stacklevel=1)

