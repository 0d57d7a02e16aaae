"""TLS end to end: a RabbitMQ node of the test's own that speaks AMQP only over TLS, with
certificates made here by a CA of the test's own; the cloud platform on it with its blob store
over HTTPS; the local platform over HTTPS; and `werkbund check` on all of it.

A client trusts what the credentials file's ``ca_certificate`` names; one with another CA, and one
that speaks plain AMQP to the TLS port, are refused with one sentence that says why.
"""
from __future__ import annotations

import json
import subprocess
import uuid

import numpy as np
import pytest

from support.cloud_support import start_cloud_platform
from conftest import PASSWORDS, WERKBUND, Cli, quiet_env
from support.tls_support import CertificateAuthority, tls_broker_node
from werkbund.platform.errors import Unavailable

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """The CA, a second CA nobody uses, the TLS-only broker node and the cloud platform on it."""
    base = tmp_path_factory.mktemp("tls")
    ca, stranger = CertificateAuthority(base / "ca"), CertificateAuthority(base / "other-ca", "another CA")
    blob_cert, blob_key = ca.issue("blob-store")
    with tls_broker_node(base / "broker", ca) as node:
        vhost = f"wb-tls-{uuid.uuid4().hex[:8]}"
        proc, url = start_cloud_platform(
            base, f"sqlite:///{base / 'cloud.db'}", vhost, node.port, node.management_url, scheme="amqps",
            extra=("--broker-ca", ca.cert, "--blob-port", "0", "--blob-tls-cert", blob_cert,
                   "--blob-tls-key", blob_key))
        try:
            yield {"base": base, "ca": ca, "stranger": stranger, "node": node, "url": url}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def credentials(tls, name: str, **values) -> str:
    path = tls["base"] / f"{name}.json"
    path.write_text(json.dumps({"platform": "cloud", "url": tls["url"], "ca_certificate": tls["ca"].cert,
                                **values}))
    return str(path)


def cli_for(tls, home_name: str, creds: str) -> Cli:
    (tls["base"] / home_name).mkdir(exist_ok=True)
    cli = Cli(tls["url"], tls["base"] / home_name, platform="cloud")
    plain = cli.env
    cli.env = lambda user, password=None: {**plain(user, password), "WERKBUND_CREDENTIALS": creds,
                                           "WERKBUND_BLOB_THRESHOLD": "0"}  # every message via the blob store
    return cli


@pytest.fixture(scope="module")
def users(tls):
    """alice, bob and carol registered over amqps, with a trusting credentials file; alice created
    the task `open`, bob joined it."""
    cli = cli_for(tls, "users", credentials(tls, "trusting"))
    for user in ("alice", "bob", "carol"):
        registered = cli.run(user, "register", "--org", f"org-{user}")
        assert registered.returncode == 0, registered.stderr
    definition, data = tls["base"] / "open.json", tls["base"] / "open.csv"
    definition.write_text(json.dumps({"algorithm": "statistics", "quorum": 2}))
    write_site(data, 7)
    assert cli.run("alice", "create", "--task", "open", "--definition", str(definition)).returncode == 0
    joined = cli.run("bob", "join", "--task", "open", "--data", str(data), "--target", "label")
    assert joined.returncode == 0, joined.stderr
    return cli


def write_site(path, seed: int, rows: int = 40):
    rng = np.random.default_rng(seed)
    lines = ["pressure,flow,label"] + [f"{a:.4f},{b:.4f},{'ok' if a > 0 else 'worn'}"
                                       for a, b in rng.normal(0, 1, (rows, 2))]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_task_runs_over_amqps_and_its_messages_through_the_blob_store_over_https(tls, users, tmp_path):
    cli = users
    (tmp_path / "task.json").write_text(json.dumps({"algorithm": "statistics", "quorum": 2, "round_timeout": 60}))
    created = cli.run("alice", "create", "--task", "tls-stats", "--definition", str(tmp_path / "task.json"))
    assert created.returncode == 0, created.stderr
    aggregator = cli.start("alice", "aggregate", "--task", "tls-stats", "--results", str(tmp_path / "results"),
                           log=tmp_path / "aggregate.log")
    procs = [aggregator]
    try:
        for seed, user in enumerate(("bob", "carol")):
            write_site(tmp_path / f"{user}.csv", seed)
            joined = cli.run(user, "join", "--task", "tls-stats", "--data", str(tmp_path / f"{user}.csv"),
                             "--target", "label")
            assert joined.returncode == 0, joined.stderr
            procs.append(cli.start(user, "participate", "--task", "tls-stats", log=tmp_path / f"{user}.log"))
        for proc in procs:
            proc.wait(timeout=180)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("aggregate", "bob", "carol")}
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert "task tls-stats COMPLETE" in logs["aggregate"]
    report = tmp_path / "report.json"
    downloaded = cli.run("bob", "model", "--task", "tls-stats", "--out", str(report))
    assert downloaded.returncode == 0, downloaded.stderr
    assert sum(json.loads(report.read_text())["class_counts"].values()) == 80
    platform_log = (tls["base"] / "cloud-platform.log").read_text()
    assert "bob stored blob" in platform_log and "carol stored blob" in platform_log  # the HTTPS blob store


def test_a_client_with_another_ca_is_refused_with_a_clear_message(tls, users):
    cli = cli_for(tls, "stranger", credentials(tls, "stranger", ca_certificate=tls["stranger"].cert))
    refused = cli.run("alice", "login")
    port = tls["node"].port
    assert refused.returncode == 3
    assert refused.stderr.strip() == (
        f"error: the TLS certificate of the broker at 127.0.0.1:{port} is not trusted by the CA in "
        f"{tls['stranger'].cert} (self-signed certificate in certificate chain)")


def test_plain_amqp_to_the_tls_only_broker_is_refused(tls, users):
    from werkbund.client.api import connect

    plain = tls["url"].replace("amqps://", "amqp://")
    with pytest.raises(Unavailable, match=r"closed the plain AMQP connection at once; if it requires TLS, "
                                          r"use an amqps:// URL"):
        connect("cloud", plain, "alice", PASSWORDS["alice"])


def test_a_missing_ca_file_is_one_clear_error(tls, tmp_path):
    cli = cli_for(tls, "missing", credentials(tls, "missing", ca_certificate=str(tmp_path / "nope.pem")))
    refused = cli.run("alice", "login")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: the CA certificate file {tmp_path / 'nope.pem'} does not exist"


def check(tls, creds: str, user: str = "alice", password: str | None = None) -> subprocess.CompletedProcess:
    """`werkbund check` at a wide terminal; ``rows``: each row's result and detail by its check."""
    cli = cli_for(tls, "check", creds)
    plain = cli.env
    cli.env = lambda user, password=None: {**plain(user, password), "COLUMNS": "400"}
    result = cli.run(user, "check", password=password)
    result.rows, name = {}, None
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 3:
            name = cells[0] or name  # a detail that wrapped continues its row
            result.rows[name] = " ".join(filter(None, (result.rows.get(name), *cells[1:])))
    return result


def test_check_passes_every_row_with_the_right_ca(tls, users):
    result = check(tls, credentials(tls, "trusting"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    for row in ("broker reachable", "TLS", "credentials accepted", "task open (creator)", "blob store reachable"):
        assert result.rows[row].startswith("pass"), result.stdout
    assert result.rows["task open (creator)"] == "pass may read wb/open/aggregator"
    assert "certificate valid for localhost, 127.0.0.1 (asked for 127.0.0.1)" in result.rows["TLS"]
    assert "answers and accepts your token (TLS valid for localhost, 127.0.0.1)" in result.rows["blob store reachable"]


def test_check_of_a_participant_reads_its_own_queue(tls, users):
    result = check(tls, credentials(tls, "trusting"), user="bob")
    assert result.returncode == 0, result.stdout
    assert result.rows["task open (participant)"] == "pass may read wb/open/p/bob"


def test_check_names_the_untrusted_certificate_and_exits_1(tls, users):
    result = check(tls, credentials(tls, "stranger", ca_certificate=tls["stranger"].cert))
    assert result.returncode == 1
    assert result.rows["broker reachable"].startswith("pass")
    assert result.rows["TLS"].startswith(f"FAIL the TLS certificate of the broker at 127.0.0.1:{tls['node'].port} "
                                         f"is not trusted by the CA in {tls['stranger'].cert}"), result.stdout
    assert result.rows["credentials accepted"] == "FAIL not tried: TLS failed"


def test_check_names_a_wrong_password_and_exits_1(tls, users):
    result = check(tls, credentials(tls, "trusting"), password="not-her-password")
    assert result.returncode == 1
    assert result.rows["TLS"].startswith("pass")
    assert result.rows["credentials accepted"] == "FAIL alice: wrong user name or password"


def test_the_local_platform_over_https_with_a_given_certificate(tmp_path):
    from werkbund.client.api import connect, register
    from werkbund.local_platform.server import LocalPlatformServer

    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = ca.issue("local-platform")
    server = LocalPlatformServer(f"sqlite:///{tmp_path / 'local.db'}", tls_certificate=cert, tls_key=key).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        register("dora", "dora-secret-55", "delta", url=server.url, ca_certificate=ca.cert).close()
        dora = connect("local", server.url, "dora", "dora-secret-55", ca_certificate=ca.cert)
        assert dora.list_tasks() == []
        dora.close()
        with pytest.raises(Unavailable, match=r"^the TLS certificate of the local platform at https://127\.0\.0\.1:"
                                              r"\d+ is not trusted by the system's CAs"):
            connect("local", server.url, "dora", "dora-secret-55")
        with pytest.raises(Unavailable, match="does not answer|cannot reach|does not speak TLS|failed"):
            connect("local", server.url.replace("https://", "http://"), "dora", "dora-secret-55")
        creds = tmp_path / "dora.json"
        creds.write_text(json.dumps({"platform": "local", "url": server.url, "user": "dora",
                                     "password": "dora-secret-55", "ca_certificate": ca.cert}))
        checked = subprocess.run([WERKBUND, "check", "--credentials", str(creds)], capture_output=True, text=True,
                                 env=quiet_env(COLUMNS="400", WERKBUND_HOME=str(tmp_path / "home")), timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "certificate valid for localhost, 127.0.0.1" in checked.stdout
    finally:
        server.stop()


def test_a_certificate_for_another_name_is_refused_naming_the_mismatch(tmp_path):
    from werkbund.client.api import register
    from werkbund.local_platform.server import LocalPlatformServer

    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = ca.issue("elsewhere", dns=("elsewhere.example",), ips=())
    server = LocalPlatformServer(f"sqlite:///{tmp_path / 'local.db'}", tls_certificate=cert, tls_key=key).start()
    try:
        with pytest.raises(Unavailable, match=r"^the TLS certificate of the local platform at https://127\.0\.0\.1:"
                                              r"\d+ is not issued for that name \(IP address mismatch"):
            register("erin", "erin-secret-555", "epsilon", url=server.url, ca_certificate=ca.cert)
    finally:
        server.stop()
