"""`werkbund check`: can this user work with this platform? One row per thing that must work.

For the cloud platform: the broker is reachable, its TLS certificate is valid (and for which
names), the platform accepts the user's name and password (through the registration account) and
the broker the session account it issues (the broker never sees the password), the broker lets the user read the queue of
each of their tasks, and the platform's blob store is reachable (over TLS, with the user's token).
For the local platform: reachable, TLS when https://, the password. Every check is a real
connection, as the user's commands make them; nothing is sent to a task and nothing is consumed
(a message that the read check gets is given back to its queue at once).
"""
from __future__ import annotations

import contextlib
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from werkbund.platform.amqp import names
from werkbund.platform.errors import InvalidInput, NotFound, Unavailable, WerkbundError
from werkbund.platform.tls import peer_certificate

PASS, FAIL, SKIP = "pass", "FAIL", "n/a"


@dataclass
class Row:
    check: str
    result: str  # PASS, FAIL or SKIP (does not apply here: not counted as a failure)
    detail: str


def all_passed(rows: list[Row]) -> bool:
    return all(row.result != FAIL for row in rows)


def _endpoint(platform: str, url: str) -> tuple[str, str, int, bool]:
    parts = urlsplit(url)
    schemes = {"cloud": {"amqp": 5672, "amqps": 5671}, "local": {"http": 80, "https": 443}}[platform]
    if parts.scheme not in schemes:
        raise InvalidInput(f"a {platform} platform URL starts with {' or '.join(s + '://' for s in schemes)}, "
                           f"not {url!r}")
    try:
        port = parts.port or schemes[parts.scheme]
    except ValueError:
        raise InvalidInput(f"the port in {url!r} is not a number") from None
    return parts.scheme, parts.hostname or "127.0.0.1", port, parts.scheme.endswith("s")


def _reachable(what: str, host: str, port: int) -> Row:
    try:
        with socket.create_connection((host, port), timeout=10):
            return Row(f"{what} reachable", PASS, f"{host}:{port} accepts connections")
    except OSError as exc:
        return Row(f"{what} reachable", FAIL, f"cannot reach {host}:{port}: {exc.strerror or exc}")


def _tls(what: str, host: str, port: int, tls: bool, ca_certificate: str | None, scheme: str) -> Row:
    if not tls:
        return Row("TLS", SKIP, f"not used ({scheme}://): passwords and data travel unencrypted")
    try:
        peer = peer_certificate(host, port, ca_certificate)
    except (Unavailable, InvalidInput) as exc:
        return Row("TLS", FAIL, exc.message.replace("the server", f"the {what}"))
    trust = f"CA {ca_certificate}" if ca_certificate else "the system's CAs"
    return Row("TLS", PASS, f"{peer['version']}, certificate valid for {', '.join(peer['names']) or peer['subject']} "
                            f"(asked for {host}), issued by {peer['issuer']}, trusted via {trust}, "
                            f"until {peer['not_after']}")


def check_access(platform: str, url: str, user: str, password: str, ca_certificate: str | None = None,
                 vhost: str | None = None) -> list[Row]:
    """The rows of the check, in order; a row that needs an earlier one that failed says so."""
    if platform not in ("local", "cloud"):
        raise InvalidInput(f"unknown platform {platform!r}; use local or cloud")
    scheme, host, port, tls = _endpoint(platform, url)
    what = "broker" if platform == "cloud" else "local platform"
    rows = [_reachable(what, host, port)]
    if rows[0].result == FAIL:
        return rows + [Row(name, FAIL, f"not tried: the {what} is not reachable") for name in _later(platform)]
    rows.append(_tls(what, host, port, tls, ca_certificate, scheme))
    if rows[-1].result == FAIL:
        return rows + [Row(name, FAIL, "not tried: TLS failed") for name in _later(platform)[1:]]
    from werkbund.client.api import make_transport

    options = {"ca_certificate": ca_certificate} if ca_certificate else {}
    if platform == "cloud" and vhost:
        options["vhost"] = vhost
    transport = make_transport(platform, url, **options)
    try:
        try:
            me = transport.login(user, password)
        except WerkbundError as exc:
            rows.append(Row("credentials accepted", FAIL, f"{user}: {exc.message}"))
            return rows + [Row(name, FAIL, "not tried: not logged in") for name in _later(platform)[2:]]
        where = f" on vhost {transport.broker_vhost} as {transport.broker_account}" if platform == "cloud" else ""
        rows.append(Row("credentials accepted", PASS, f"logged in as {me.get('user', user)} "
                                                      f"({me.get('org', '?')}){where}"))
        tasks = [t for t in transport.call("list_tasks") if t.get("role") in ("creator", "participant")]
        if platform == "cloud":
            rows.extend(_queue_permissions(transport, user, tasks))
            rows.append(_blob_store(transport, tasks))
        else:
            rows.append(Row("task permissions", PASS, f"{len(tasks)} task(s) of yours; the platform checks "
                                                      "every request"))
    finally:
        with contextlib.suppress(Exception):  # a cloud login's session (and broker account) ends with the check
            transport.logout() if platform == "cloud" else transport.close()
    return rows


def _later(platform: str) -> list[str]:
    later = ["TLS", "credentials accepted", "task permissions"]
    return later + ["blob store reachable"] if platform == "cloud" else later


def _queue_permissions(transport, user: str, tasks: list[dict]) -> list[Row]:
    """Per task: may the user read the queue their role reads? ``basic.get`` is refused (403) without
    the read permission; a message it gets is given back to the queue at once (nack, requeue)."""
    if not tasks:
        return [Row("task permissions", SKIP, "no tasks of yours yet (created or joined)")]
    import pika
    from pika.exceptions import AMQPError, ChannelClosedByBroker

    rows = []
    try:
        connection = pika.BlockingConnection(transport.parameters(transport.account, transport.token))
    except AMQPError as exc:
        return [Row("task permissions", FAIL, f"cannot open a second connection: {exc!r}")]
    try:
        for task in tasks:
            name, role = task["name"], task["role"]
            queue = names.aggregator_queue(name) if role == "creator" else names.participant_queue(name, user)
            label = f"task {name} ({role})"
            try:
                channel = connection.channel()
                method, _, _ = channel.basic_get(queue, auto_ack=False)
                if method is not None:
                    channel.basic_nack(method.delivery_tag, requeue=True)
                channel.close()
                rows.append(Row(label, PASS, f"may read {queue}"))
            except ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    detail = f"{queue} does not exist on the broker ({task['status']})"
                    rows.append(Row(label, SKIP if task["status"] in ("COMPLETE", "FAILED") else FAIL, detail))
                else:
                    rows.append(Row(label, FAIL, f"the broker refuses to let {user} read {queue}: {exc.reply_text}"))
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return rows


def _blob_store(transport, tasks: list[dict]) -> Row:
    """With a transfer token for one of the user's tasks, ask the blob store for a blob that does not
    exist: a 'not found' shows that it is reachable, its TLS certificate valid and the token accepted."""
    from werkbund.client.transports.amqp.blobs import BlobClient

    if not tasks:
        return Row("blob store reachable", SKIP, "no tasks of yours yet: a blob store token is per task")
    try:
        grant = transport.call("transfer_token", task=tasks[0]["name"])
    except Unavailable as exc:
        return Row("blob store reachable", SKIP, f"{exc.message} (large messages travel through the broker)")
    except WerkbundError as exc:
        return Row("blob store reachable", FAIL, f"no transfer token: {exc.message}")
    where = urlsplit(grant["url"])
    if where.scheme == "https":
        try:
            peer = peer_certificate(where.hostname, where.port or 443, transport.ca_certificate)
        except (Unavailable, InvalidInput) as exc:
            return Row("blob store reachable", FAIL, exc.message.replace("the server", "the blob store"))
        how = f"TLS valid for {', '.join(peer['names']) or peer['subject']}"
    else:
        how = "plain HTTP, unencrypted"
    try:
        client = BlobClient(grant["url"], grant["token"], transport.ca_certificate)
        connection, _ = client._request("GET", tasks[0]["name"], uuid.uuid4().hex, query="?meta")
        connection.close()
    except NotFound:
        return Row("blob store reachable", PASS, f"{grant['url']} answers and accepts your token ({how})")
    except WerkbundError as exc:
        return Row("blob store reachable", FAIL, f"{grant['url']}: {exc.message}")
    return Row("blob store reachable", PASS, f"{grant['url']} answers ({how})")
