"""In-process transport: a whole federation inside one Python process.

For algorithm development, fast tests and simulations with many participants:
the same platform core and mailboxes as the local platform, without HTTP.
"""
from __future__ import annotations

from werkbund.client.transports.base import Transport
from werkbund.platform.commands import dispatch, dispatch_public
from werkbund.platform.db import Database
from werkbund.platform.errors import AuthenticationFailed
from werkbund.platform.storage.mailboxes import Mailboxes
from werkbund.platform.service import PlatformService


class InProcPlatform:
    """A platform core and its mailboxes, shared by every in-process transport."""

    def __init__(self, db_url: str = "sqlite://", state_dir=None):
        self.service = PlatformService(Database(db_url))
        self.mailboxes = Mailboxes()
        # where its participants keep their own state of a task (their DP accounts); None: in memory only
        self.state_dir = state_dir


class InProcTransport(Transport):
    def __init__(self, platform: InProcPlatform):
        self.platform = platform
        self.user = None

    @property
    def _service(self) -> PlatformService:
        return self.platform.service

    @property
    def participant_state_base(self):
        """Where a participant over this transport keeps its own state of a task (None: in memory)."""
        return self.platform.state_dir

    def _caller(self) -> str:
        if self.user is None:
            raise AuthenticationFailed("not logged in")
        return self.user

    def register(self, user, password, org):
        return dispatch_public(self._service, "register", {"user": user, "password": password, "org": org})

    def login(self, user, password):
        self.user = self._service.check_credentials(user, password)
        return {"user": self.user}

    def call(self, command, **params):
        result = dispatch(self._service, self._caller(), command, params)
        if command == "delete_task":
            self.platform.mailboxes.drop_task(result["task"])
        return result

    def send(self, task, to, body):
        inboxes = self._service.route_message(self._caller(), task, to)
        self.platform.mailboxes.put(task, inboxes, self._caller(), bytes(body))
        return {"delivered_to": len(inboxes), "size": len(body)}

    def receive(self, task, timeout):
        inbox = self._service.inbox_of(self._caller(), task)
        message = self.platform.mailboxes.get(task, inbox, timeout)
        return None if message is None else (message.sender, message.body)

    def put_model(self, task, data, meta):
        return self._service.put_model(self._caller(), task, bytes(data), meta)

    def get_model(self, task):
        return self._service.get_model(self._caller(), task)
