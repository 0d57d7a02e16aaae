"""The platform core: every rule about users, tasks, memberships, rounds and models.

The fronts (Flask, AMQP, in-process) translate requests into calls of
:class:`PlatformService` and its errors into their own replies; none of them
decides anything on its own. Every method returns plain JSON-able data.

The rules live in one module per part, each a mixin of :class:`PlatformService`: accounts
(``accounts.py``), tasks (``tasks.py``), message routing (``routing.py``) and final models
(``model_store.py``); all of them, and the ledger's service, reach rows and check roles through
``access.py``.
"""
from __future__ import annotations

from werkbund.platform.accounts import Accounts
from werkbund.platform.db import Database
from werkbund.platform.ledger.service import LedgerService
from werkbund.platform.login_guard import LoginGuard
from werkbund.platform.model_store import ModelStore
from werkbund.platform.routing import Routing
from werkbund.platform.tasks import Tasks


class PlatformService(Accounts, Tasks, Routing, ModelStore):
    """Users, tasks, memberships, round records, message routes and final models over one database."""

    def __init__(self, db: Database | str, ledger_key=None, model_dir=None):
        self.db = db if isinstance(db, Database) else Database(db)
        self.ledger = LedgerService(self, ledger_key)  # ledger_key: path of the signing key
        self.logins = LoginGuard()
        self._open_model_store(model_dir)
