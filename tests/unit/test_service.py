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
    return b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite*") if p.is_file())


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
    with pytest.raises(errors.SchemaMismatch, match=r"lacks the task's feature column\(s\) 'b' and has column\(s\) 'c'"):
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


@pytest.mark.parametrize("name", ["alice\n", "alice\n\n", "\nalice", "al ice", "alice\x00"])
def test_a_user_or_task_name_is_the_whole_string(core, name):
    """The pattern ended in "$", which also matches before a final newline: "alice\\n" was a user."""
    with pytest.raises(errors.InvalidInput, match="invalid user name"):
        core.register(name, "long-enough", "x")
    with pytest.raises(errors.InvalidInput, match="invalid task name"):
        core.create_task("alice", name, {"quorum": 2})


@pytest.mark.parametrize("org", ["acme\nINFO werkbund.platform: forged line", "acme\x00", "\x1b[31macme\x1b[0m",
                                 "a\tb", " ", "x" * 129])
def test_an_organisation_is_one_printable_line(core, org):
    """Newlines, NUL and ANSI escapes in an organisation forged a line in the server log and coloured
    the terminal; such a name is refused, and a name in any script is welcome."""
    with pytest.raises(errors.InvalidInput, match="organisation"):
        core.register("eve", "long-enough", org)
    assert core.register("frank", "long-enough", "Müller & Söhne GmbH — 東京")["org"] == "Müller & Söhne GmbH — 東京"


def test_the_database_is_private_to_its_owner(core, tmp_path):
    files = sorted(tmp_path.glob("p.sqlite*"))
    assert files and any(p.name.endswith("-wal") for p in files)
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others: {oct(path.stat().st_mode)}"


def test_members_do_not_see_each_others_data_description(core):
    """Only the creator needs the schemas and row counts; a member sees who joined, and its own entry."""
    core.join_task("bob", "weld-1", SCHEMA)
    core.join_task("carol", "weld-1", dict(SCHEMA, n_samples=20))
    seen_by_bob = {m["user"]: m for m in core.participants("bob", "weld-1")}
    assert seen_by_bob["carol"] == {"user": "carol", "joined_at": seen_by_bob["carol"]["joined_at"]}
    assert seen_by_bob["bob"]["schema"]["n_samples"] == 10 and seen_by_bob["bob"]["org"] == "beta"
    seen_by_alice = {m["user"]: m for m in core.participants("alice", "weld-1")}
    assert seen_by_alice["carol"]["schema"]["n_samples"] == 20 and seen_by_alice["carol"]["org"] == "gamma"


@pytest.mark.parametrize("count", [0, -1, "abc", 1.5, True, 10**13, 10**400])
def test_a_declared_row_count_is_a_sensible_whole_number(core, count):
    with pytest.raises(errors.InvalidInput, match="n_samples"):
        core.join_task("bob", "weld-1", dict(SCHEMA, n_samples=count))


def test_a_task_can_bound_the_rows_a_participant_declares(core):
    core.create_task("alice", "bounded", {"quorum": 2, "selection": {"max_samples": 15}})
    with pytest.raises(errors.SchemaMismatch, match="at most 15 rows"):
        core.join_task("bob", "bounded", dict(SCHEMA, n_samples=16))
    core.join_task("bob", "bounded", dict(SCHEMA, n_samples=15))


@pytest.mark.parametrize("url, message", [("nonsense", "is not a database URL"),
                                          pytest.param("postgresql+psycopg://postgres@127.0.0.1:5432/werkbund_no_such_db",
                                                       "cannot open the database", marks=pytest.mark.postgres)])
def test_a_database_that_cannot_be_opened_is_one_clear_error(url, message):
    with pytest.raises(errors.WerkbundError, match=message):
        PlatformService(url)


def test_a_schema_mismatch_names_only_the_differing_columns(core):
    core.join_task("bob", "weld-1", dict(SCHEMA, features=["a", "b", "c"]))
    with pytest.raises(errors.SchemaMismatch) as caught:
        core.join_task("carol", "weld-1", dict(SCHEMA, features=["a", "c", "d"]))
    assert str(caught.value).endswith("your data lacks the task's feature column(s) 'b' and has column(s) 'd' "
                                      "that the task does not use")
    core.join_task("dave", "weld-1", dict(SCHEMA, features=["c", "a", "b"]))  # the same columns, another order


def test_class_labels_with_nothing_in_common_are_refused(core):
    """0/1 against benign/malignant built a 4-class model at 0.42 accuracy and exited 0."""
    core.join_task("bob", "weld-1", SCHEMA)
    with pytest.raises(errors.SchemaMismatch, match="none in common"):
        core.join_task("carol", "weld-1", dict(SCHEMA, classes=["benign", "malignant"]))
    core.join_task("carol", "weld-1", dict(SCHEMA, classes=[1, 2]))  # overlapping: a site may lack a class


def test_password_guessing_is_slowed_down_and_logged(core, caplog):
    """200 wrong logins took 92 s with no delay and nothing logged. After five failures each further
    attempt waits (1 s, 2 s, 4 s, ...) and is refused before any password check; the owner gets in
    once the delay has passed; every failure is logged."""
    from werkbund.platform.login_guard import LoginGuard

    now = [1000.0]
    core.logins = LoginGuard(clock=lambda: now[0])
    caplog.set_level("WARNING", logger="werkbund.platform.logins")
    for _ in range(6):
        with pytest.raises(errors.AuthenticationFailed, match="wrong user name or password"):
            core.login("bob", "guess-guess")
    with pytest.raises(errors.AuthenticationFailed, match="too many failed logins; try again in 2 s"):
        core.login("bob", "bob-password")  # even the right password waits: the guesser cannot tell
    assert core.login("carol", "carol-password")["user"] == "carol"  # other accounts are not locked out
    now[0] += 1.5
    assert core.login("bob", "bob-password")["user"] == "bob"
    assert sum("failed login for 'bob'" in r.getMessage() for r in caplog.records) == 6
    for _ in range(6):  # a success cleared the count: five free failures again
        with pytest.raises(errors.AuthenticationFailed, match="wrong user name or password"):
            core.login("bob", "guess-guess")
    with pytest.raises(errors.AuthenticationFailed, match="too many failed logins"):
        core.login("bob", "guess-guess")


def test_a_login_flood_waits_for_a_bounded_number_of_password_checks(core, monkeypatch):
    """40 concurrent wrong logins pushed the server to 2.2 GB: argon2 takes 64 MiB per check, so at most
    two checks run at once and the rest queue, or are told the platform is busy."""
    import threading
    import time

    from werkbund.platform import login_guard, passwords

    running, most, lock, release = [0], [0], threading.Lock(), threading.Event()
    real = passwords.check_password

    def counting(hashed, password):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(30)
        try:
            return real(hashed, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(passwords, "check_password", counting)
    monkeypatch.setattr(login_guard, "QUEUE_SECONDS", 0.5)
    outcomes = []

    def attempt(i):
        try:
            core.login(f"nobody{i}", "whatever-long")
        except errors.WerkbundError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60  # ten of them find no free check and give up after QUEUE_SECONDS
    while outcomes.count("Unavailable") < 10 and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    release.set()
    for t in threads:
        t.join(30)
    assert most[0] == 2
    assert sorted(set(outcomes)) == ["AuthenticationFailed", "Unavailable"] and outcomes.count("Unavailable") == 10


def test_a_transfer_token_opens_only_its_tasks_blobs_and_logout_revokes_a_session(core):
    """The blob store's transfer token was a full session token; logging out only forgot the token."""
    session = core.login("bob", "bob-password")["token"]
    core.join_task("bob", "weld-1", SCHEMA)
    grant = core.transfer_token("bob", "weld-1")["token"]
    assert core.authenticate(grant, scope="blob:weld-1") == "bob"
    with pytest.raises(errors.AuthenticationFailed):
        core.authenticate(grant)  # no control command
    with pytest.raises(errors.AuthenticationFailed):
        core.authenticate(grant, scope="blob:another-task")
    with pytest.raises(errors.AuthenticationFailed):
        core.authenticate(session, scope="blob:weld-1")  # nor is a session a transfer token
    assert core.authenticate(session) == "bob"
    core.logout("bob", session)
    with pytest.raises(errors.AuthenticationFailed, match="expired or is unknown"):
        core.authenticate(session)


def test_a_participants_request_reads_its_own_membership_not_every_members(core):
    """Every request of a participant checks that it is a member of the task (a message, its inbox, a ledger
    append): that check reads its own membership, so a round of N participants costs O(N) reads, not
    O(N^2). With 200 members, the check is one or two queries that fetch a row or two; the answers are
    those of the rule."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from werkbund.platform.tables import Membership, Task, User

    with core.db.session() as s:
        task = s.query(Task).filter_by(name="weld-1").one()
        for i in range(200):
            user = User(name=f"site{i:03d}", org=f"org{i}", password_hash="(not a login)")
            s.add(user)
            s.add(Membership(task=task, user=user, schema=SCHEMA))
    core.start_task("alice", "weld-1")
    loaded, statements = [], []

    def count(session, instance):
        loaded.append(type(instance).__name__)

    def executed(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(Session, "loaded_as_persistent", count)
    event.listen(core.db.engine, "before_cursor_execute", executed)
    try:
        for check in (lambda: core.route_message("site123", "weld-1", "aggregator"),
                      lambda: core.inbox_of("site123", "weld-1"),
                      lambda: core.route_message("alice", "weld-1", "site007"),
                      lambda: core.check_blob_access("site123", "weld-1", "upload")):
            loaded.clear()
            statements.clear()
            check()
            assert len(loaded) <= 6, loaded  # the task, its creator, the member and its user: not 200 members
            assert len(statements) <= 2, statements
        assert core.route_message("site123", "weld-1", "aggregator") == ["@aggregator"]
        assert core.inbox_of("site199", "weld-1") == "site199"
        with pytest.raises(errors.PermissionDenied, match="not a participant"):
            core.route_message("dave", "weld-1", "aggregator")
        with pytest.raises(errors.PermissionDenied, match="not a participant"):
            core.inbox_of("dave", "weld-1")
        with pytest.raises(errors.InvalidInput, match="'dave' is not a participant"):
            core.route_message("alice", "weld-1", "dave")
        with pytest.raises(errors.TaskNotFound):
            core.inbox_of("site123", "no-such-task")
        # a broadcast does read every member: their names, in the order they joined, with one more query
        statements.clear()
        assert core.route_message("alice", "weld-1", "all") == [f"site{i:03d}" for i in range(200)]
        assert len(statements) == 2
    finally:
        event.remove(Session, "loaded_as_persistent", count)
        event.remove(core.db.engine, "before_cursor_execute", executed)
