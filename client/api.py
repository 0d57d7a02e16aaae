"""The Python API of werkbund: one set of handles over any transport.

>>> alice = connect(platform="local", url="http://127.0.0.1:5000", user="alice", password="...")
>>> alice.create_task("weld-1", {"algorithm": "neural_network", "quorum": 2, "rounds": 5})
>>> agg = alice.aggregator("weld-1")      # the creator's handle: participants, broadcast, receive, finish
>>> part = bob.participant("weld-1")      # a participant's handle: receive, send to the aggregator
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from werkbund.client.ledger_relay import RelayedLedger
from werkbund.client.messages import MalformedMessage, TaskMessage, decode_message
from werkbund.client.transports.base import Transport
from werkbund.platform.errors import InvalidInput, InvalidState

log = logging.getLogger("werkbund.client")


def make_transport(platform: str = "local", url: str | None = None, inproc=None, **options) -> Transport:
    """A transport for ``platform`` ('local', 'cloud' or 'inproc')."""
    if platform == "local":
        from werkbund.client.transports.http import HttpTransport

        if not url:
            raise InvalidInput("the local platform needs a URL (--url or WERKBUND_URL), e.g. http://127.0.0.1:5000")
        return HttpTransport(url, ca_certificate=options.get("ca_certificate"))
    if platform == "inproc":
        from werkbund.client.transports.inproc import InProcTransport

        if inproc is None:
            raise InvalidInput("the in-process platform needs an InProcPlatform object")
        return InProcTransport(inproc)
    if platform == "cloud":
        try:
            from werkbund.client.transports.amqp.transport import AmqpTransport
        except ImportError as exc:  # pika, a dependency of werkbund, is missing or broken in this environment
            raise InvalidInput(f"the cloud platform transport cannot be loaded ({exc}); reinstall werkbund, "
                               "which brings its dependency pika") from None
        return AmqpTransport(url, **options)
    raise InvalidInput(f"unknown platform {platform!r}; use local, cloud or inproc")


def load_credentials(path: str | Path) -> dict:
    """Read a credentials file: JSON with platform, url and optionally user, password, org."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise InvalidInput(f"credentials file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"credentials file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"credentials file {path} must hold a JSON object")
    return data


def connect(platform: str | None = None, url: str | None = None, user: str | None = None,
            password: str | None = None, credentials: str | Path | None = None, inproc=None,
            transport: Transport | None = None, identity=None, **options) -> "User":
    """Log in to a platform and return the user's handle.

    Values given as arguments win over those in the credentials file.
    """
    creds = load_credentials(credentials) if credentials else {}
    platform = platform or creds.get("platform", "local")
    url = url or creds.get("url")
    user = user or creds.get("user")
    password = password or creds.get("password")
    if not user:
        raise InvalidInput("no user given")
    transport = transport or make_transport(platform, url, inproc=inproc, **options)
    transport.login(user, password or "")
    return User(transport, identity)  # identity: the Ed25519 key that signs ledger entries


def register(user: str, password: str, org: str, platform: str = "local", url: str | None = None,
             inproc=None, identity=None, **options) -> "User":
    """Create an account and return the logged-in handle.

    ``identity``: the user's Ed25519 private key (made on this machine); its public
    key is registered so the user can sign ledger entries.
    """
    transport = make_transport(platform, url, inproc=inproc, **options)
    transport.register(user, password, org)
    transport.login(user, password)
    if identity is not None:
        from werkbund.ledger.entries import encode_public_key

        transport.call("set_identity_key", public_key=encode_public_key(identity))
    return User(transport, identity)


class User:
    """What a logged-in user can do on a platform."""

    def __init__(self, transport: Transport, identity=None):
        self.transport = transport
        self.identity = identity  # Ed25519 private key for ledger entries, or None

    @property
    def identity(self):
        """The Ed25519 key (or None); a key file under WERKBUND_HOME (``home_files.IdentityFile``) is
        read and unlocked on first use, so commands that sign nothing never need its passphrase."""
        if callable(getattr(self._identity, "load", None)):
            self._identity = self._identity.load()
        return self._identity

    @identity.setter
    def identity(self, value) -> None:
        self._identity = value

    @property
    def name(self) -> str:
        return self.transport.user

    def whoami(self) -> dict:
        return self.transport.call("whoami")

    def create_task(self, task: str, definition: dict) -> dict:
        """Create a task; the definition is checked here first by the installed algorithm
        (``client/definitions.py``): AlgorithmNotInstalled or InvalidInput name what is wrong."""
        from werkbund.client.definitions import prepare_definition

        return self.transport.call("create_task", task=task, definition=prepare_definition(definition))

    def list_tasks(self, status=None, creator=None, algorithm=None, search=None) -> list[dict]:
        params = {k: v for k, v in dict(status=status, creator=creator, algorithm=algorithm, search=search).items() if v}
        return self.transport.call("list_tasks", **params)

    def task_info(self, task: str) -> dict:
        return self.transport.call("task_info", task=task)

    def join_task(self, task: str, schema: dict | None = None) -> dict:
        params = {"task": task}
        if schema is not None:
            params["schema"] = schema
        return self.transport.call("join_task", **params)

    def leave_task(self, task: str) -> dict:
        return self.transport.call("leave_task", task=task)

    def delete_task(self, task: str) -> dict:
        return self.transport.call("delete_task", task=task)

    def rounds(self, task: str) -> list[dict]:
        return self.transport.call("rounds", task=task)

    def get_model(self, task: str) -> tuple[bytes, dict]:
        return self.transport.get_model(task)

    def aggregator(self, task: str) -> "AggregatorHandle":
        return AggregatorHandle(self, task)

    def participant(self, task: str) -> "ParticipantHandle":
        return ParticipantHandle(self, task)

    def close(self) -> None:
        self.transport.close()


class _TaskHandle(RelayedLedger):
    receive_most = 1  # messages one exchange with the platform may take (``Transport.receive_batched``)

    def __init__(self, user: User, task: str):
        self.user = user
        self.transport = user.transport
        self.task = task
        self._info = user.task_info(task)

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def definition(self) -> dict:
        return self._info["definition"]

    def info(self) -> dict:
        self._info = self.user.task_info(self.task)
        return self._info

    def receive(self, timeout: float) -> TaskMessage | None:
        """The next message, or None after ``timeout`` s; a corrupt one comes back with kind 'malformed'."""
        got = self.transport.receive_batched(self.task, timeout, self.receive_most)
        if got is None:
            return None
        sender, frame = got
        try:
            message = decode_message(frame, sender)
        except MalformedMessage as exc:
            log.warning("malformed message from %s in %s: %s", sender, self.task, exc)
            return TaskMessage(kind="malformed", header={}, sender=sender, extra={"error": str(exc)})
        if message.get("task") != self.task:
            return TaskMessage(kind="malformed", header=message.header, sender=sender,
                               extra={"error": f"message names task {message.get('task')!r}"})
        return message


class AggregatorHandle(_TaskHandle):
    """The task creator's channel: participants, broadcast, send to one, receive, records, final model."""

    role = "aggregator"
    # a round's updates in one long poll where the transport can (the local platform's ?most=); one taken but
    # not handled when the aggregator stops is asked for again with the round, as one in hand is
    receive_most = 64

    def __init__(self, user: User, task: str):
        super().__init__(user, task)
        if self._info.get("role") != "creator":
            raise InvalidInput(f"only the creator of task {task!r} ({self._info['creator']}) can aggregate it")

    def participants(self) -> list[dict]:
        return self.transport.call("participants", task=self.task)

    def wait_for_quorum(self, timeout: float | None = None, poll: float = 1.0, on_progress=None,
                        check=None) -> list[dict]:
        """Block until the quorum has joined; returns the participants.

        ``check`` is called before every look at the task (it may raise to stop the wait).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = -1
        while True:
            if check is not None:
                check()
            info = self.info()
            if info["status"] != "CREATED":
                raise InvalidState(f"task {self.task!r} is {info['status']}; it cannot start again")
            if info["joined"] != last:
                last = info["joined"]
                if on_progress:
                    on_progress(info["joined"], info["quorum"])
            if info["joined"] >= info["quorum"]:
                return self.participants()
            if deadline is not None and time.monotonic() > deadline:
                raise InvalidState(f"the quorum of task {self.task!r} was not met in {timeout:.0f} s "
                                   f"({info['joined']} of {info['quorum']} joined)")
            time.sleep(poll)

    def start(self) -> dict:
        self._info = self.transport.call("start_task", task=self.task)
        return self._info

    def broadcast(self, kind: str, payload: bytes = b"", *, payload_sha256: str | None = None, **header) -> dict:
        """A message to every participant; ``payload_sha256``: the payload's, where the caller has it."""
        return self.transport.send_message(self.task, "all", kind, payload, header, payload_sha256)

    def send(self, to: str, kind: str, payload: bytes = b"", *, payload_sha256: str | None = None, **header) -> dict:
        return self.transport.send_message(self.task, to, kind, payload, header, payload_sha256)

    def record_round(self, number: int, reported=(), rejected=None, missing=(), metrics=None) -> dict:
        return self.transport.call("record_round", task=self.task, number=number, reported=list(reported),
                                   rejected=dict(rejected or {}), missing=list(missing), metrics=metrics or {})

    def rounds(self) -> list[dict]:
        return self.user.rounds(self.task)

    def finish(self, model: bytes, meta: dict | None = None, reason: str | None = None) -> dict:
        self.transport.put_model(self.task, model, meta or {})
        extra = {"reason": reason} if reason else {}
        self._info = self.transport.call("finish_task", task=self.task, **extra)
        return self._info

    def fail(self, reason: str) -> dict:
        self._info = self.transport.call("fail_task", task=self.task, reason=reason)
        return self._info


class ParticipantHandle(_TaskHandle):
    """A participant's channel: receive from the aggregator, send to it."""

    role = "participant"

    def __init__(self, user: User, task: str):
        super().__init__(user, task)
        if self._info.get("role") != "participant":
            raise InvalidInput(f"you have not joined task {task!r}; run `werkbund join` first")

    def send(self, kind: str, payload: bytes = b"", *, payload_sha256: str | None = None, **header) -> dict:
        """A message to the aggregator; ``payload_sha256``: the payload's, where the caller has it."""
        return self.transport.send_message(self.task, "aggregator", kind, payload, header, payload_sha256)

    @property
    def state_dir(self) -> Path | None:
        """Where the participant keeps its own state of this task across restarts (its DP account): under
        WERKBUND_HOME, or for an in-process platform its ``state_dir`` (None: kept in memory only)."""
        from werkbund.client import home_files

        if hasattr(self.transport, "participant_state_base"):  # an in-process or simulated platform
            base = self.transport.participant_state_base
            return None if base is None else Path(base) / self.name / self.task
        return home_files.participant_dir(getattr(self.transport, "url", None), self.name, self.task,
                                          self._info.get("created_at"))
