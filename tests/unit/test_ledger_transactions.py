"""Lifecycle entries commit with the state change they record, and the cached trees give the
same heads and proofs as the stored log, whatever happened to it."""
import pytest
from support.cloud_support import database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.platform.db import Database
from werkbund.platform.errors import InvalidInput, TaskNotFound
from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.ledger.verify import verify_log
from werkbund.platform.ledger.service import LedgerService
from werkbund.platform.ledger.store import LedgerEntry
from werkbund.platform.ledger.tree_cache import TreeCache
from werkbund.platform.service import PlatformService

DEFINITION = {"algorithm": "neural_network", "quorum": 1, "max_participants": 5}


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def users(request, tmp_path_factory):
    """One database with alice and bob (password hashing is slow, so once per module), on a
    SQLite file and on the real PostgreSQL (row locks, real transactions)."""
    tmp = tmp_path_factory.mktemp("ledger-tx")
    with database(request.param, tmp) as url:
        service = PlatformService(Database(url), ledger_key=tmp / "key.pem")
        keys = {}
        for name in ("alice", "bob"):
            service.register(name, f"{name}-password", name)
            keys[name] = Ed25519PrivateKey.generate()
            service.ledger.set_identity_key(name, E.encode_public_key(keys[name]))
        yield service, keys
        service.db.dispose()


def _log(service, task):
    return [(i["entry"], i["signature"]) for i in service.ledger.entries("alice", task)]


def _verifies(service, task):
    bundle = service.ledger.bundle("alice", task)
    latest = bundle["latest"]
    report = verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                        latest["checkpoint"], latest["signature"], bundle["platform_key"])
    assert report.ok, str(report)
    return latest["checkpoint"]["size"]


def _crash_in_append(monkeypatch, after: bool):
    """Make the next platform entry fail, before it is stored or after (before the commit)."""
    original = LedgerService.platform_append_in

    def failing(self, s, task, type, payload):
        if after:
            original(self, s, task, type, payload)
        raise Crash(f"crash while appending {type}")

    monkeypatch.setattr(LedgerService, "platform_append_in", failing)


def _state(service, task):
    try:
        info = service.task_info("alice", task)
    except TaskNotFound:
        return None
    size = service.ledger.head("alice", task)["size"]
    return info["status"], tuple(info.get("participants") or ()), size


@pytest.mark.parametrize("after", [False, True], ids=["before-insert", "after-insert"])
def test_a_failed_lifecycle_entry_rolls_the_state_change_back(users, monkeypatch, after):
    service, _ = users
    task = f"tx-{int(after)}"
    with monkeypatch.context() as m:
        _crash_in_append(m, after)
        with pytest.raises(Crash):
            service.create_task("alice", task, DEFINITION)
    assert _state(service, task) is None                      # no task, no log
    with service.db.session() as s:
        assert TreeCache.stored_size(s, task) == 0
    service.create_task("alice", task, DEFINITION)
    steps = [("join", lambda: service.join_task("bob", task)),
             ("leave", lambda: service.leave_task("bob", task)),
             ("join again", lambda: service.join_task("bob", task))]
    for name, step in steps:
        before = _state(service, task)
        with monkeypatch.context() as m:
            _crash_in_append(m, after)
            with pytest.raises(Crash):
                step()
        assert _state(service, task) == before, name          # the join/leave did not happen
        step()
        assert _state(service, task)[2] == before[2] + 1, name  # now it did, with its entry
    service.start_task("alice", task)
    service.put_model("alice", task, b"model bytes")
    for name, step in (("fail", lambda: service.fail_task("alice", task, "broken")),
                       ("finish", lambda: service.finish_task("alice", task))):
        before = _state(service, task)
        with monkeypatch.context() as m:
            _crash_in_append(m, after)
            with pytest.raises(Crash):
                step()
        assert _state(service, task) == before and before[0] == "STARTED", name
    service.finish_task("alice", task)
    assert _state(service, task)[0] == "COMPLETE"
    types = [e["type"] for e, _ in _log(service, task)]
    assert types == ["task_created", "joined", "left", "joined", "task_finished"]
    assert _verifies(service, task) == 5                      # the cached tree forgot the crashes
    with monkeypatch.context() as m:
        _crash_in_append(m, after)
        service.delete_task("alice", task)  # deleting writes no entry: it drops the log
    assert _state(service, task) is None


def test_service_proofs_verify_for_every_size_up_to_64(users):
    service, keys = users
    ledger = service.ledger
    service.create_task("alice", "proofs", DEFINITION)
    service.join_task("bob", "proofs")
    while ledger.head("bob", "proofs")["size"] < 64:
        head = ledger.head("bob", "proofs")
        entry = E.make_entry("proofs", "update_submitted", "bob", head["size"], head["prev"], {"n": head["size"]})
        ledger.append("bob", "proofs", entry, E.encode_signature(E.sign_entry(entry, keys["bob"])))
    leaves = [E.entry_leaf_hash(e) for e, _ in _log(service, "proofs")]
    rebuilds = ledger.trees.rebuilds
    for size in range(1, 65):
        cp = ledger.checkpoint("bob", "proofs", size)
        assert E.verify_checkpoint_signature(cp["checkpoint"], cp["signature"], cp["platform_key"])
        root = bytes.fromhex(cp["checkpoint"]["root"])
        assert root == merkle.MerkleTree(leaves[:size]).root()
        probes = sorted({0, size // 3, 2 * size // 3, size - 1})  # every pair: test_ledger_merkle
        for seq in probes:
            proof = ledger.inclusion_proof("bob", "proofs", seq, size)
            assert merkle.verify_inclusion(leaves[seq], seq, size, [bytes.fromhex(p) for p in proof["proof"]], root)
        for old in probes + [size]:
            old_root = merkle.MerkleTree(leaves[:old]).root()
            proof = ledger.consistency_proof("bob", "proofs", old, size)
            assert merkle.verify_consistency(old, size, old_root, root, [bytes.fromhex(p) for p in proof["proof"]])
    assert ledger.trees.rebuilds == rebuilds   # ~800 proofs and no tree read in full again
    with pytest.raises(InvalidInput, match="exceeds the 64 entries"):
        ledger.inclusion_proof("bob", "proofs", 3, 65)
    with pytest.raises(InvalidInput, match="not below tree size"):
        ledger.inclusion_proof("bob", "proofs", 64)


def test_the_cache_follows_other_writers_and_a_changed_log(users, tmp_path):
    service, keys = users
    service.create_task("alice", "shared", DEFINITION)
    other = PlatformService(service.db, ledger_key=tmp_path / "unused.pem")  # a second process
    other.ledger.key, other.ledger.public_key = service.ledger.key, service.ledger.public_key
    assert service.ledger.inclusion_proof("alice", "shared", 0)["size"] == 1
    other.join_task("bob", "shared")                       # appended by the other "process"
    other.ledger.platform_append("shared", "maintenance", {"n": 1})
    proof = service.ledger.consistency_proof("alice", "shared", 1)
    assert proof["new_size"] == 3
    leaves = [E.entry_leaf_hash(e) for e, _ in _log(service, "shared")]
    tree = merkle.MerkleTree(leaves)
    assert merkle.verify_consistency(1, 3, tree.root(1), tree.root(), [bytes.fromhex(p) for p in proof["proof"]])
    # the last stored leaf changed behind the platform's back: the tree is read again
    rebuilds = service.ledger.trees.rebuilds
    with service.db.session() as s:
        row = s.query(LedgerEntry).filter_by(task="shared", seq=2).one()
        row.leaf_hash = "00" * 32
    proof = service.ledger.inclusion_proof("alice", "shared", 2)
    assert service.ledger.trees.rebuilds == rebuilds + 1
    assert proof["leaf_hash"] == "00" * 32


def test_a_key_registered_after_joining_goes_on_the_log(users):
    """A member who joined with no key and registers one later: key_registered on its logs."""
    service, _ = users
    service.register("carol", "carol-password", "gamma")
    service.create_task("alice", "late-key", DEFINITION)
    service.join_task("carol", "late-key")
    assert _log(service, "late-key")[-1][0]["payload"]["public_key"] is None
    key = Ed25519PrivateKey.generate()
    done = service.ledger.set_identity_key("carol", E.encode_public_key(key))
    assert done["tasks"] == ["late-key"]
    entry = _log(service, "late-key")[-1][0]
    assert (entry["type"], entry["author"], entry["payload"]["subject"]) == ("key_registered", "platform", "carol")
    head = service.ledger.head("carol", "late-key")
    mine = E.make_entry("late-key", "maintenance", "carol", head["size"], head["prev"], {"commitment": "00" * 32})
    service.ledger.append("carol", "late-key", mine, E.encode_signature(E.sign_entry(mine, key)))
    assert _verifies(service, "late-key") == 4
