"""The in-memory database of the in-process platform is shared by every thread of a federation."""
import threading

from werkbund.platform.db import Database
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
