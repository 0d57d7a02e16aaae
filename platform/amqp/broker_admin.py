"""Broker users and permissions, provisioned through the RabbitMQ management HTTP API.

Why the management API (and not rabbitmq_auth_backend_http): the broker keeps checking passwords
and permissions on its own, with no call back to the platform on every connection, channel and
publish, so the platform can be down or slow while a running task goes on; it needs only the
management plugin (no broker configuration file, no restart) and works with any broker a user may
already run. The broker never sees a user's password: each login opens a broker account of its
own, ``alice~<session id>@<vhost>``, whose password is the session's random token (see
``broker_sessions.py``); the ``@<vhost>`` suffix lets several platforms share a broker and no
registration take over an existing account such as ``guest``. The platform writes the permissions
of each of the user's session accounts when a membership changes:

- configure: nothing (the platform declares every exchange and queue);
- write: the request exchange, and the exchanges of the tasks the user created or joined, with
  topic permissions on each task exchange that allow a participant only the routing key
  ``to.aggregator`` and the creator only ``to.all`` and ``to.user.<name>``;
- read: the direct reply-to pseudo queue, the aggregator queue of each task the user created and
  the user's own queue in each task joined.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote, urlsplit

import requests

from werkbund.platform.amqp import names
from werkbund.platform.errors import Unavailable, WerkbundError

log = logging.getLogger("werkbund.platform.broker")
TAG = "werkbund"  # the tag of the accounts the platform made (and may delete)
QUEUE_POLICY = "werkbund-queue-bounds"  # the policy bounding this vhost's queues (set_queue_limits)


class BrokerAdmin:
    """The management API of one broker, acting in one vhost."""

    def __init__(self, management_url: str, vhost: str, timeout: float = 30.0, ca_certificate: str | None = None):
        parts = urlsplit(management_url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}/api"
        self.auth = (parts.username or "guest", parts.password or "guest")
        self.vhost = vhost
        self.timeout = timeout
        self.http = requests.Session()
        self.verify = ca_certificate or True  # an https:// management API with the broker's own CA

    def _request(self, method: str, path: str, body=None, ok_missing: bool = False):
        try:
            response = self.http.request(method, self.base + path, json=body, auth=self.auth, timeout=self.timeout,
                                         verify=self.verify)
        except requests.RequestException as exc:
            reason = type(exc).__name__ if isinstance(exc, requests.ConnectionError) else exc
            raise Unavailable(f"cannot reach the RabbitMQ management API at {self.base} ({reason}): the platform "
                              "needs the broker's management plugin (`rabbitmq-plugins enable rabbitmq_management`) "
                              "or the right --management URL") from None
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            raise WerkbundError(f"broker management API {method} {path}: {response.status_code} {response.text[:200]}")
        return response.json() if response.content else None

    def _v(self) -> str:
        return quote(self.vhost, safe="")

    # ------------------------------------------------------------- setup
    def setup(self, platform_user: str) -> None:
        """Create the vhost, give the platform full rights there and open the registration account."""
        self._request("PUT", f"/vhosts/{self._v()}", {"description": "werkbund cloud platform"})
        self.set_permissions(platform_user, ".*", ".*", ".*")
        registration = names.registration_user(self.vhost)
        self._request("PUT", f"/users/{quote(registration, safe='')}",
                      {"password": names.REGISTRATION_PASSWORD, "tags": TAG})
        self.set_permissions(registration, "^$", names.any_of([names.REQUEST_EXCHANGE]), names.any_of([names.REPLY_TO]))

    # ------------------------------------------------------------- users
    def add_session_account(self, account: str, secret: str) -> None:
        """Create the broker account of one login session; its password is the session's secret."""
        self._request("PUT", f"/users/{quote(account, safe='')}", {"password": secret, "tags": TAG})

    def accounts(self) -> list[dict]:
        """The broker accounts of this vhost's form (``...@<vhost>``): name and tags (a list)."""
        found = []
        for u in self._request("GET", "/users") or []:
            if names.parse_account(u.get("name"), self.vhost) is not None:
                tags = u.get("tags") or []
                found.append({"name": u["name"], "tags": tags.split(",") if isinstance(tags, str) else list(tags)})
        return found

    def broker_users(self) -> list[str]:
        """The broker accounts of this platform (registration and session accounts)."""
        return [a["name"] for a in self.accounts()]

    def session_accounts(self, user: str) -> list[str]:
        """The broker accounts of ``user``'s login sessions."""
        return [a["name"] for a in self.accounts()
                if (parsed := names.parse_account(a["name"], self.vhost)) and parsed[1] and parsed[0] == user]

    def exists(self, account: str) -> bool:
        return self._request("GET", f"/users/{quote(account, safe='')}", ok_missing=True) is not None

    def delete_broker_user(self, name: str) -> None:
        self._request("DELETE", f"/users/{quote(name, safe='')}", ok_missing=True)

    def delete_vhost(self) -> None:
        self._request("DELETE", f"/vhosts/{self._v()}", ok_missing=True)

    # ------------------------------------------------------- permissions
    def set_permissions(self, user: str, configure: str, write: str, read: str) -> None:
        self._request("PUT", f"/permissions/{self._v()}/{quote(user, safe='')}",
                      {"configure": configure, "write": write, "read": read})

    def set_topic_permission(self, user: str, exchange: str, write: str) -> None:
        self._request("PUT", f"/topic-permissions/{self._v()}/{quote(user, safe='')}",
                      {"exchange": exchange, "write": write, "read": "^$"})

    def grant(self, user: str, created: list[str], joined: list[str], accounts: list[str] | None = None) -> None:
        """Write ``user``'s permissions for the tasks it created and joined (and nothing else), on each
        of its session accounts (``accounts``: only these)."""
        write = [names.REQUEST_EXCHANGE] + [names.task_exchange(t) for t in created + joined]
        read = ([names.REPLY_TO] + [names.aggregator_queue(t) for t in created]
                + [names.participant_queue(t, user) for t in joined])
        for account in self.session_accounts(user) if accounts is None else accounts:
            try:
                # topic permissions first: a write permission never exists without its routing-key limit
                for task in created:
                    self.set_topic_permission(account, names.task_exchange(task), r"^to\.(all|user\..+)$")
                for task in joined:
                    self.set_topic_permission(account, names.task_exchange(task), r"^to\.aggregator$")
                self.set_permissions(account, "^$", names.any_of(write), names.any_of(read))
            except WerkbundError:
                if self.exists(account):
                    raise
                log.debug("session account %s went (logout or expiry) while its permissions were written", account)
        log.debug("permissions of %s: created %s, joined %s", user, created, joined)

    # ------------------------------------------------------------ queues
    def set_queue_limits(self, max_messages: int, max_bytes: int) -> None:
        """Bound the request queue and every task queue of this vhost: at most ``max_messages`` ready
        messages and ``max_bytes`` bytes of bodies; beyond that the broker refuses (nacks) a publish
        (``overflow: reject-publish``), so nothing already queued is dropped. A policy, not queue
        arguments: it applies to the queues that exist too, and changing it needs no redeclaration.
        Quorum queues check the limit before they add a message, so one may hold one message more."""
        pattern = f"^({re.escape(names.REQUEST_QUEUE)}$|{re.escape(names.task_exchange(''))})"
        self._request("PUT", f"/policies/{self._v()}/{quote(QUEUE_POLICY, safe='')}",
                      {"pattern": pattern, "apply-to": "queues", "priority": 0,
                       "definition": {"max-length": max_messages, "max-length-bytes": max_bytes,
                                      "overflow": "reject-publish"}})
        log.info("queues of vhost %s hold at most %d messages and %d bytes", self.vhost, max_messages, max_bytes)
