"""Broker credentials on the cloud platform are per-session secrets, never the user's password.

A real RabbitMQ broker and a real `werkbund platform serve` process: the broker refuses the
password, a login opens a session account whose secret works until logout or expiry (renewed while
in use, up to a week), the CLI keeps the secret and not the password, two sessions of one user work
side by side, a wrong password is throttled by the platform's login guard, and an upgraded platform
deletes the old accounts that took the user's password.
"""
from __future__ import annotations

import subprocess
import uuid
from datetime import timedelta
from urllib.parse import quote

import pika
import pytest

from support.cloud_support import MANAGEMENT, cloud_platform, database, require_broker, start_cloud_platform
from werkbund.client.transports.amqp.session import connection_error
from werkbund.client.transports.amqp.transport import AmqpTransport
from werkbund.client.api import connect, register
from werkbund.platform.amqp import names
from werkbund.platform.amqp.broker_admin import BrokerAdmin
from werkbund.platform.errors import AuthenticationFailed

pytestmark = pytest.mark.broker
PASSWORD = "a-long-password-1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broker-credentials")
    with cloud_platform(tmp) as url:
        for user in ("alice", "bob", "carol", "dave", "erin", "frank", "eve", "heidi"):
            AmqpTransport(url).register(user, PASSWORD, "org")
        yield {"url": url, "db": f"sqlite:///{tmp / 'cloud.db'}", "log": tmp / "cloud-platform.log",
               "admin": BrokerAdmin(MANAGEMENT, url.rsplit("/", 1)[1])}


def connects(url: str, name: str, secret: str) -> bool:
    """Whether the broker lets broker account ``<name>@<vhost>`` in with ``secret`` (plain pika)."""
    params = AmqpTransport(url).parameters(name, secret)
    try:
        pika.BlockingConnection(params).close()
        return True
    except Exception as exc:  # noqa: BLE001 - mapped as the client maps it
        error = connection_error(exc, params)
        assert isinstance(error, AuthenticationFailed), error
        return False


def test_the_broker_refuses_the_users_password(cloud):
    url = cloud["url"]
    # registered, never logged in: no broker account of alice's at all
    assert [a for a in cloud["admin"].broker_users() if names.parse_account(a, cloud["admin"].vhost)[0] == "alice"] == []
    assert not connects(url, "alice", PASSWORD)
    alice = connect("cloud", url, "alice", PASSWORD)
    try:
        transport = alice.transport
        assert transport.token != PASSWORD and transport.account.startswith("alice~")
        assert not connects(url, "alice", PASSWORD)  # nor the old account's name after a login
        assert not connects(url, transport.account, PASSWORD)  # nor the session account with the password
    finally:
        alice.close()


def test_a_logged_in_client_works_with_its_issued_secret(cloud):
    bob = connect("cloud", cloud["url"], "bob", PASSWORD)
    try:
        transport = bob.transport
        assert bob.whoami()["user"] == "bob"
        bob.create_task("bobs-task", {"algorithm": "neural_network", "quorum": 1, "rounds": 1})
        assert [t["name"] for t in bob.list_tasks()] == ["bobs-task"]
        assert connects(cloud["url"], transport.account, transport.token)
        # a new transport resumes the session from its token alone (as `werkbund login` keeps it)
        again = AmqpTransport(cloud["url"])
        again.user, again.token = "bob", transport.token
        assert again.call("whoami")["user"] == "bob"
        again.close()
    finally:
        bob.close()


def test_after_logout_the_secret_is_refused_by_the_broker(cloud):
    carol = connect("cloud", cloud["url"], "carol", PASSWORD)
    transport = carol.transport
    account, secret = transport.account, transport.token
    full = transport.broker_account
    assert full in cloud["admin"].broker_users()
    transport.logout()
    assert full not in cloud["admin"].broker_users()
    assert not connects(cloud["url"], account, secret)
    resumed = AmqpTransport(cloud["url"])
    resumed.user, resumed.token = "carol", secret
    with pytest.raises(AuthenticationFailed):
        resumed.call("whoami")


def test_the_cli_keeps_the_session_secret_not_the_password_and_logout_ends_it(cloud, tmp_path, monkeypatch):
    from conftest import Cli
    from werkbund.client import home_files

    cli = Cli(cloud["url"], tmp_path, platform="cloud")
    result = cli.run("frank", "login", password=PASSWORD)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "frank"))
    token = home_files.load_token(cloud["url"], "frank")
    assert token and PASSWORD not in home_files.session_path(cloud["url"], "frank").read_text()
    account = names.session_name("frank", names.session_id(token))
    assert connects(cloud["url"], account, token)
    result = cli.run("frank", "logout", password=PASSWORD)
    assert result.returncode == 0 and "revoked on the platform" in result.stdout, result.stderr
    assert not connects(cloud["url"], account, token)


def test_two_sessions_of_the_same_user_work_at_the_same_time(cloud):
    first = connect("cloud", cloud["url"], "dave", PASSWORD)
    second = connect("cloud", cloud["url"], "dave", PASSWORD)
    try:
        assert first.transport.account != second.transport.account
        first.create_task("daves-task", {"algorithm": "neural_network", "quorum": 1, "rounds": 1})
        # the permissions of the task reach every live session of dave's: the second reads its queue
        second.transport.session.inbox(names.aggregator_queue("daves-task"))
        assert [t["name"] for t in second.list_tasks() if t["role"] == "creator"] == ["daves-task"]
        first.transport.logout()
        assert second.whoami()["user"] == "dave"  # one session's logout leaves the other alone
    finally:
        second.close()


def test_an_expired_sessions_account_is_gone_after_the_sweep(cloud):
    from sqlalchemy import create_engine, select, update

    from werkbund.platform.tables import SessionToken, User, utcnow

    eve = connect("cloud", cloud["url"], "eve", PASSWORD)
    transport = eve.transport
    account, secret, full = transport.account, transport.token, transport.broker_account
    engine = create_engine(cloud["db"])
    with engine.begin() as db:  # the session's 12 hours have passed
        eves = select(User.id).where(User.name == "eve").scalar_subquery()
        db.execute(update(SessionToken).where(SessionToken.user_id == eves)
                   .values(expires_at=utcnow() - timedelta(minutes=1)))
    engine.dispose()
    with pytest.raises(AuthenticationFailed, match="expired"):  # refused at once, before any sweep
        eve.whoami()
    connect("cloud", cloud["url"], "frank", PASSWORD).close()  # every login sweeps
    assert full not in cloud["admin"].broker_users()
    assert not connects(cloud["url"], account, secret)
    with pytest.raises(AuthenticationFailed):  # the client is told so, without trying for minutes
        eve.whoami()
    eve.close()


def test_a_session_in_use_is_renewed_up_to_a_week_after_its_login(cloud):
    from sqlalchemy import create_engine, select, update

    from werkbund.platform.tables import SessionToken, User, utcnow

    heidi = connect("cloud", cloud["url"], "heidi", PASSWORD)
    engine = create_engine(cloud["db"])
    heidis = select(User.id).where(User.name == "heidi").scalar_subquery()

    def expiry_after(created_ago: timedelta) -> timedelta:
        """Heidi's session, logged in ``created_ago`` and a minute from its expiry, after a renewal."""
        now = utcnow()
        with engine.begin() as db:
            db.execute(update(SessionToken).where(SessionToken.user_id == heidis)
                       .values(created_at=now - created_ago, expires_at=now + timedelta(minutes=1)))
        heidi.transport._renew_at = 0.0  # an hour of use has passed
        assert heidi.whoami()["user"] == "heidi"
        with engine.begin() as db:
            return db.scalar(select(SessionToken.expires_at).where(SessionToken.user_id == heidis)) - now

    try:
        assert expiry_after(timedelta(hours=1)) > timedelta(hours=11)  # another 12 hours
        capped = expiry_after(timedelta(days=7) - timedelta(hours=2))
        assert timedelta(hours=1) < capped < timedelta(hours=3)  # not beyond a week after the login
    finally:
        heidi.close()
        engine.dispose()


def test_a_wrong_password_at_login_is_throttled_by_the_login_guard(cloud):
    url = cloud["url"]
    refused = None
    for _ in range(12):  # five failures are free, then each must wait 1 s, 2 s, 4 s, ...
        try:
            connect("cloud", url, "erin", "not-erins-password")
        except AuthenticationFailed as exc:
            if "too many failed logins" in exc.message:
                refused = exc.message
                break
            assert exc.message == "wrong user name or password"
    assert refused is not None, "the login guard never stepped in"
    assert "failed login for 'erin'" in cloud["log"].read_text()
    other = connect("cloud", url, "alice", PASSWORD)  # throttled per account: alice is not locked out
    other.close()


def test_an_upgraded_platform_deletes_the_accounts_that_took_the_users_password(tmp_path):
    require_broker()
    vhost = f"wb-test-{uuid.uuid4().hex[:8]}"
    admin = BrokerAdmin(MANAGEMENT, vhost)
    procs = []
    try:
        with database("sqlite", tmp_path) as db_url:
            proc, url = start_cloud_platform(tmp_path, db_url, vhost)
            procs.append(proc)
            register("grace", PASSWORD, "org", platform="cloud", url=url).close()
            proc.terminate()
            proc.wait(timeout=20)
            # what an older werkbund left: broker account grace@<vhost> with grace's password
            legacy = names.broker_user("grace", vhost)
            admin._request("PUT", f"/users/{quote(legacy, safe='')}", {"password": PASSWORD, "tags": "werkbund"})
            admin.set_permissions(legacy, "^$", "^$", "^$")
            assert connects(url, "grace", PASSWORD)
            proc, url = start_cloud_platform(tmp_path, db_url, vhost)
            procs.append(proc)
            assert legacy not in admin.broker_users()
            assert not connects(url, "grace", PASSWORD)
            assert names.registration_user(vhost) in admin.broker_users()  # the registration account stays
            connect("cloud", url, "grace", PASSWORD).close()  # grace logs in as before
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for account in admin.broker_users():
            admin.delete_broker_user(account)
        admin.delete_vhost()
