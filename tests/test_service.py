"""The rules of the platform core, on a real SQLite database."""
import pytest

from werkbund.platform import errors
from werkbund.platform.service import PlatformService

SCHEMA = {"kind": "classification", "features": ["a", "b"], "target": "y", "classes": [0, 1], "n_samples": 10}


@pytest.fixture()
def core(tmp_path):
    service = PlatformService(f"sqlite:///{tmp_path / 'p.sqlite'}")
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma"), ("dave", "delta")):
        service.register(user, f"{user}-password", org)
    service.create_task("alice", "weld-1", {"quorum": 2, "rounds": 1})
    return service


def test_register_and_login(core):
    assert core.login("bob", "bob-password")["user"] == "bob"
    with pytest.raises(errors.AuthenticationFailed, match="wrong user name or password"):
        core.login("bob", "not-the-password")
    with pytest.raises(errors.AuthenticationFailed):
        core.login("nobody", "whatever-123")
    with pytest.raises(errors.UserExists, match="already exists"):
        core.register("bob", "another-password", "beta")
    with pytest.raises(errors.InvalidInput, match="at least 8"):
        core.register("eve", "short", "evil")
    with pytest.raises(errors.InvalidInput, match="invalid user name"):
        core.register("no spaces", "long-enough", "x")


def _stored_bytes(tmp_path) -> bytes:
    """The database file and its write-ahead log, as they lie on disk."""
    return b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite*"))


def test_password_is_not_stored_in_clear(core, tmp_path):
    raw = _stored_bytes(tmp_path)
    assert b"bob-password" not in raw
    assert b"$argon2id$" in raw


def test_session_tokens_are_stored_as_digests(core, tmp_path):
    token = core.login("bob", "bob-password")["token"]
    assert core.authenticate(token) == "bob"
    assert token.encode() not in _stored_bytes(tmp_path)
    with pytest.raises(errors.AuthenticationFailed):
        core.authenticate(token + "x")


def test_task_rules(core):
    with pytest.raises(errors.TaskExists):
        core.create_task("bob", "weld-1", {})
    with pytest.raises(errors.TaskNotFound, match="unknown task 'nope'"):
        core.task_info("bob", "nope")
    with pytest.raises(errors.InvalidInput, match="never an import path"):
        core.create_task("alice", "t2", {"algorithm": "os.system"})
    with pytest.raises(errors.InvalidInput, match="quorum"):
        core.create_task("alice", "t2", {"quorum": 0})
    with pytest.raises(errors.InvalidInput, match="invalid field name"):
        core.create_task("alice", "t2", {"Aggregator.class": "neural_network.Aggregator"})
    with pytest.raises(errors.InvalidInput, match="at most 1048576"):
        core.create_task("alice", "t2", {"notes": "x" * (1 << 20)})


def test_the_platform_hosts_a_task_whose_algorithm_it_does_not_have(core):
    """It checks the generic fields only; an algorithm's own are checked where the algorithm runs."""
    info = core.create_task("alice", "t3", {"algorithm": "not_installed_here", "quorum": 2, "shrinkage": 0.5,
                                            "algorithm_package": {"distribution": "werkbund-x", "version": "1.0"}})
    assert info["algorithm"] == "not_installed_here" and info["definition"]["shrinkage"] == 0.5
    assert info["definition"]["rounds"] == 5 and "epochs" not in info["definition"]
    core.join_task("bob", "t3", SCHEMA)
    with pytest.raises(errors.InvalidInput, match="algorithm_package"):
        core.create_task("alice", "t4", {"algorithm_package": {"distribution": 3}})


def test_join_rules_and_quorum(core):
    with pytest.raises(errors.InvalidState, match="quorum is not met"):
        core.start_task("alice", "weld-1")
    core.join_task("bob", "weld-1", SCHEMA)
    with pytest.raises(errors.AlreadyJoined):
        core.join_task("bob", "weld-1", SCHEMA)
    with pytest.raises(errors.SchemaMismatch, match="features"):
        core.join_task("carol", "weld-1", dict(SCHEMA, features=["a", "c"]))
    with pytest.raises(errors.PermissionDenied, match="creator"):
        core.join_task("alice", "weld-1", SCHEMA)
    core.join_task("carol", "weld-1", dict(SCHEMA, classes=[1, 2]))
    with pytest.raises(errors.TaskFull):
        core.join_task("dave", "weld-1", SCHEMA)
    with pytest.raises(errors.PermissionDenied, match="only the creator"):
        core.start_task("bob", "weld-1")
    info = core.start_task("alice", "weld-1")
    assert info["status"] == "STARTED"
    assert info["schema"]["classes"] == [0, 1, 2]
    with pytest.raises(errors.InvalidState, match="STARTED"):
        core.leave_task("bob", "weld-1")


def test_permissions_on_someone_elses_task(core):
    core.join_task("bob", "weld-1", SCHEMA)
    with pytest.raises(errors.PermissionDenied, match="only the creator"):
        core.delete_task("bob", "weld-1")
    with pytest.raises(errors.PermissionDenied):
        core.rounds("dave", "weld-1")
    assert "participants" not in core.task_info("dave", "weld-1")


def test_messages_are_routed_by_role(core):
    core.join_task("bob", "weld-1", SCHEMA)
    core.join_task("carol", "weld-1", SCHEMA)
    with pytest.raises(errors.InvalidState):
        core.route_message("alice", "weld-1", "all")
    core.start_task("alice", "weld-1")
    assert core.route_message("alice", "weld-1", "all") == ["bob", "carol"]
    assert core.route_message("bob", "weld-1", "aggregator") == ["@aggregator"]
    with pytest.raises(errors.PermissionDenied, match="only to the task's aggregator"):
        core.route_message("bob", "weld-1", "carol")
    with pytest.raises(errors.PermissionDenied):
        core.route_message("dave", "weld-1", "aggregator")
    assert core.inbox_of("alice", "weld-1") == "@aggregator"
    with pytest.raises(errors.PermissionDenied):
        core.inbox_of("dave", "weld-1")


def test_complete_task_and_model_access(core):
    core.join_task("bob", "weld-1", SCHEMA)
    core.join_task("carol", "weld-1", SCHEMA)
    core.start_task("alice", "weld-1")
    core.record_round("alice", "weld-1", 0, ["bob", "carol"], {}, [], {"accuracy": 0.9})
    with pytest.raises(errors.InvalidState, match="no final model"):
        core.finish_task("alice", "weld-1")
    core.put_model("alice", "weld-1", b"model-bytes", {"classes": [0, 1]})
    core.finish_task("alice", "weld-1")
    assert core.get_model("bob", "weld-1")[0] == b"model-bytes"
    with pytest.raises(errors.PermissionDenied):
        core.get_model("dave", "weld-1")
    with pytest.raises(errors.InvalidState, match="COMPLETE"):
        core.join_task("dave", "weld-1", SCHEMA)
    assert [r["round"] for r in core.rounds("carol", "weld-1")] == [0]
    assert core.list_tasks("dave", status="COMPLETE")[0]["name"] == "weld-1"
    assert core.list_tasks("dave", search="ACME")[0]["name"] == "weld-1"
    assert core.list_tasks("dave", creator="bob") == []


def test_failed_task_keeps_its_reason(core):
    core.fail_task("alice", "weld-1", "only 0 updates")
    info = core.task_info("bob", "weld-1")
    assert (info["status"], info["reason"]) == ("FAILED", "only 0 updates")
