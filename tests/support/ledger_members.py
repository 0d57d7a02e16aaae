"""Ledger members without a front: task handles whose requests go straight into a platform process's
command table (parameters checked as on the wire), on SQLite and on the real PostgreSQL."""
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.cloud_support import database

from werkbund.client.ledger import LedgerChannel
from werkbund.client.ledger_relay import RelayedLedger
from werkbund.platform.commands import dispatch
from werkbund.platform.db import Database
from werkbund.ledger import entries as E
from werkbund.ledger.verify import verify_log
from werkbund.platform.service import PlatformService

DEFINITION = {"algorithm": "neural_network", "quorum": 1, "max_participants": 10}
MEMBERS = ("bob", "carol", "dave", "erin")


class Direct:
    """A member's requests, straight into one platform process's command table (what every front
    calls, parameters checked as on the wire), each one counted."""

    def __init__(self, service, user):
        self.service, self.user, self.asked = service, user, []

    def call(self, command, **params):
        self.asked.append(command)
        return dispatch(self.service, self.user, command, params)


class Member(LedgerChannel):
    """The ledger side of a task handle, as the round engine uses it."""

    def __init__(self, service, name, key, task):
        self.name, self.task, self.user = name, task, SimpleNamespace(identity=key)
        self.transport = Direct(service, name)


class RelayedMember(RelayedLedger, Member):
    """The same, with the relay: statements riding on updates, proofs on the broadcast."""


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def platform(request, tmp_path_factory):
    """alice and four members with identity keys, on a SQLite file and on the real PostgreSQL, where a
    second platform process (another service on the same database, with the same key) serves too."""
    tmp = tmp_path_factory.mktemp("ledger-v2")
    with database(request.param, tmp) as url:
        service = PlatformService(Database(url), ledger_key=tmp / "key.pem")
        keys = {}
        for name in ("alice", *MEMBERS):
            service.register(name, f"{name}-password", name)
            keys[name] = Ed25519PrivateKey.generate()
            service.ledger.set_identity_key(name, E.encode_public_key(keys[name]))
        services = [service]
        if request.param == "postgresql":
            other = PlatformService(Database(url), ledger_key=tmp / "other.pem")
            other.ledger.key, other.ledger.public_key = service.ledger.key, service.ledger.public_key
            services.append(other)
        yield SimpleNamespace(services=services, keys=keys)
        for s in services:
            s.db.dispose()


def make_task(platform, name, members=MEMBERS):
    service = platform.services[0]
    service.create_task("alice", name, DEFINITION)
    for member in members:
        service.join_task(member, name)
    return service


def member(platform, name, task, process=0, kind=Member):
    return kind(platform.services[process % len(platform.services)], name, platform.keys[name], task)


def report(service, task):
    bundle = service.ledger.bundle("alice", task)
    latest = bundle["latest"]
    return verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                      latest["checkpoint"], latest["signature"], bundle["platform_key"],
                      cosignatures=latest["cosignatures"] or None)
