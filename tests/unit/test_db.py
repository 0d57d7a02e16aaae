"""The in-memory database of the in-process platform is shared by every thread of a federation."""
import threading

from werkbund.platform.db import SHARED_SESSION, Database
from werkbund.platform.tables import User


def test_in_memory_database_takes_concurrent_units_of_work():
    db = Database("sqlite://")
    errors = []

    def work(worker):
        try:
            for i in range(40):
                with db.session() as session:
                    session.add(User(name=f"w{worker}-{i}", org="test", password_hash="x"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.session() as session:
        assert session.query(User).count() == 240


def test_a_read_sees_what_is_committed_and_inside_a_shared_unit_of_work_its_own_writes(tmp_path):
    """``Database.reading`` (the checks every request makes): a connection of its own sees what was
    committed, not a unit of work's writes before its commit; inside that unit of work (``sharing``) it
    reads through the unit's session and sees them."""
    from sqlalchemy import select

    db = Database(f"sqlite:///{tmp_path / 'p.sqlite'}")
    names = select(User.name).order_by(User.name)
    with db.session() as session:
        session.add(User(name="alice", org="acme", password_hash="x"))
    with db.session() as session, db.sharing(session):
        session.add(User(name="bob", org="beta", password_hash="x"))
        session.flush()
        with db.reading() as shared:
            assert list(shared.scalars(names)) == ["alice", "bob"]
        with db.reading() as shared:
            assert shared is session
        token = SHARED_SESSION.set(None)  # as another request's thread would read meanwhile
        try:
            with db.reading() as other:
                assert list(other.scalars(names)) == ["alice"]
        finally:
            SHARED_SESSION.reset(token)
    with db.reading() as after:
        assert list(after.scalars(names)) == ["alice", "bob"]
