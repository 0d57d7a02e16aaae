"""Logging in from Python: ``connect``, ``register`` and the :class:`Session` they return.

A session shares its state with the command line: the same ``WERKBUND_HOME`` (session tokens,
the Ed25519 identity key made at registration, the datasets chosen when joining), the same
environment variables (``WERKBUND_PLATFORM``, ``WERKBUND_URL``, ``WERKBUND_USER``,
``WERKBUND_PASSWORD``, ``WERKBUND_CREDENTIALS``) and the same credentials file. A user who
registered with ``werkbund register`` can ``werkbund.connect`` without a password while the
cached token is valid, and the other way round.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkbund.client import home_files
from werkbund.client.api import User, load_credentials, make_transport
from werkbund.platform.errors import AuthenticationFailed, InvalidInput

if TYPE_CHECKING:  # pandas is imported when a table is asked for
    import pandas

    from werkbund.client.python_api.task import Task

LIST_COLUMNS = ["name", "creator", "org", "status", "algorithm", "pom", "quorum", "joined", "max_participants",
                "role", "created_at", "reason"]


def _settings(platform, url, user, password, credentials) -> tuple[str, str | None, str, str | None, dict]:
    """Arguments first, then the credentials file, then the environment (as the CLI does)."""
    credentials = credentials or os.environ.get("WERKBUND_CREDENTIALS")
    creds = load_credentials(credentials) if credentials else {}
    platform = platform or creds.get("platform") or os.environ.get("WERKBUND_PLATFORM") or "local"
    url = url or creds.get("url") or os.environ.get("WERKBUND_URL")
    user = user or creds.get("user") or os.environ.get("WERKBUND_USER")
    password = password or creds.get("password") or os.environ.get("WERKBUND_PASSWORD")
    if not user:
        raise InvalidInput("no user: give user=..., set WERKBUND_USER or use a credentials file")
    if platform not in ("local", "cloud", "inproc"):
        raise InvalidInput(f"unknown platform {platform!r}; use local, cloud or inproc")
    if platform != "inproc" and not url:
        raise InvalidInput("no platform address: give url=..., set WERKBUND_URL or use a credentials file")
    return platform, url, user, password, creds


def _cloud_options(creds: dict) -> dict:
    return {k: creds[k] for k in ("vhost", "ca_certificate") if k in creds}


def connect(platform: str | None = None, url: str | None = None, user: str | None = None,
            password: str | None = None, credentials: str | Path | None = None, inproc: Any = None) -> "Session":
    """Log in to a werkbund platform and return a :class:`Session`.

    Args:
        platform: ``"local"`` (a local platform over HTTP, the default), ``"cloud"`` (the RabbitMQ
            platform, ``url`` is an ``amqp://`` or ``amqps://`` address) or ``"inproc"`` (the
            platform core in this process, given as ``inproc=InProcPlatform()``).
        url: the platform's address, e.g. ``"http://127.0.0.1:5000"`` (default: the credentials
            file's ``url``, else ``WERKBUND_URL``).
        user: your user name (default: the credentials file's, else ``WERKBUND_USER``).
        password: your password (default: the credentials file's, else ``WERKBUND_PASSWORD``). May be
            left out while a session token cached under ``WERKBUND_HOME`` (by an earlier login from
            Python or the CLI) is still valid.
        credentials: a JSON file with ``platform``, ``url``, ``user`` and optionally ``password``,
            ``vhost`` and ``ca_certificate`` (cloud). Arguments win over the file.

    Raises:
        AuthenticationFailed: wrong password, or none given and no valid cached session.
        Unavailable: the platform cannot be reached.
        InvalidInput: something is missing (no user, no address) or malformed.

    Example::

        alice = werkbund.connect(url="http://127.0.0.1:5000", user="alice", password="...")
    """
    platform, url, user, password, creds = _settings(platform, url, user, password, credentials)
    transport = make_transport(platform, url, inproc=inproc, **_cloud_options(creds))
    token = None if password else home_files.load_token(url, user)
    if token and hasattr(transport, "token"):
        transport.token, transport.user = token, user
        try:
            transport.call("whoami")
            return Session(User(transport, home_files.identity_file(url, user)), platform, url)
        except AuthenticationFailed:
            home_files.forget_token(url, user)
    if not password:
        raise AuthenticationFailed(f"no password for {user}: give password=..., set WERKBUND_PASSWORD or put it "
                                   "in the credentials file")
    data = transport.login(user, password)
    if data.get("token") and platform != "inproc":
        home_files.save_token(url, user, data["token"])
    return Session(User(transport, home_files.identity_file(url, user, password)), platform, url)


def register(user: str, password: str, org: str, platform: str | None = None, url: str | None = None,
             credentials: str | Path | None = None, inproc: Any = None, encrypt_key: bool = True) -> "Session":
    """Create an account on a platform, make your ledger identity key, and return the logged-in :class:`Session`.

    The Ed25519 identity key that signs your ledger entries is made on this machine under
    ``WERKBUND_HOME/identity/``, encrypted with ``WERKBUND_KEY_PASSPHRASE`` if set, else with
    ``password``, as ``werkbund register`` does; only its public key is sent to the platform.
    Later sessions unlock it with the same (``WERKBUND_KEY_PASSPHRASE`` or the password given to
    :func:`connect`).

    Args:
        user: the new user name.
        password: its password (checked with argon2id; about 0.2 s per login by design).
        org: your organisation, shown to others in the task list.
        platform, url, credentials, inproc: where, as for :func:`connect`.
        encrypt_key: ``False`` writes the key unencrypted (an explicit opt-out; default ``True``).

    Raises:
        UserExists: the name is taken.
        InvalidInput: a malformed name or password.
    """
    platform, url, user, _, creds = _settings(platform, url, user, password, credentials)
    transport = make_transport(platform, url, inproc=inproc, **_cloud_options(creds))
    register_account(transport, url, user, password, org, keep_token=platform != "inproc", encrypt_key=encrypt_key)
    return Session(User(transport, home_files.identity_file(url, user, password)), platform, url)


def register_account(transport, url: str | None, user: str, password: str, org: str,
                     keep_token: bool = True, encrypt_key: bool = True) -> dict:
    """Register ``user`` through ``transport``, log in, and register a fresh identity key.

    The key is made under ``WERKBUND_HOME`` unless one exists for this platform and user, encrypted
    with WERKBUND_KEY_PASSPHRASE if set, else with ``password`` (unencrypted only with
    ``encrypt_key=False``); a key made here is removed again if the platform refuses the
    registration. Returns the platform's answer with ``key_path``, ``public_key`` and
    ``encrypted`` added.
    """
    from werkbund.client.identity import generate_identity, is_encrypted, public_key_b64

    key_path, made = home_files.identity_path(url, user), False
    if not key_path.exists():  # the ledger identity key, made here and never sent anywhere
        generate_identity(key_path, home_files.key_passphrase(password) if encrypt_key else None)
        made = True
    try:
        data = transport.register(user, password, org)
    except Exception:
        if made:
            key_path.unlink(missing_ok=True)
        raise
    login = transport.login(user, password)
    if login.get("token") and keep_token:
        home_files.save_token(url, user, login["token"])
    public_key = public_key_b64(home_files.load_identity(url, user, password))
    transport.call("set_identity_key", public_key=public_key)
    return dict(data, key_path=str(key_path), public_key=public_key, encrypted=is_encrypted(key_path))


class Session:
    """A logged-in user: list, create, join and run tasks.

    Made by :func:`connect` or :func:`register`. Every method raises the typed errors of
    :mod:`werkbund` (``TaskNotFound``, ``PermissionDenied``, ...) with the same message the CLI prints.
    """

    def __init__(self, user: User, platform: str, url: str | None):
        self._user = user
        self.platform = platform
        self.url = url
        self._joined: dict = {}  # task -> the Dataset joined with in this session

    @property
    def name(self) -> str:
        """Your user name."""
        return self._user.name

    @property
    def client(self) -> User:
        """The low-level handle (``werkbund.client.api.User``) for raw platform commands."""
        return self._user

    def whoami(self) -> dict:
        """Your account as the platform knows it (user, organisation)."""
        return self._user.whoami()

    def create_task(self, name: str, definition: dict | None = None, **fields: Any) -> "Task":
        """Create a learning task and return its :class:`Task` handle.

        ``definition`` is the task definition (as in a ``--definition`` JSON file); keyword
        arguments add to or override it, e.g.
        ``create_task("weld-1", algorithm="neural_network", quorum=2, rounds=5, epochs=2)``.
        The generic fields are listed in ``docs/task-definition.md``, an algorithm's own by
        ``werkbund.algorithms(NAME)``. The algorithm installed here checks the definition before it
        is sent (and fills in its defaults), the platform the generic fields: ``InvalidInput`` names
        the first field refused, ``AlgorithmNotInstalled`` an algorithm that is not installed here.
        """
        if definition is not None and not isinstance(definition, dict):
            raise InvalidInput("a task definition must be a dict")
        merged = {**(definition or {}), **fields}
        self._user.create_task(name, merged)
        return self.task(name)

    def list_tasks(self, status: str | None = None, creator: str | None = None, algorithm: str | None = None,
                   search: str | None = None, mine: bool = False, joined: bool = False) -> "pandas.DataFrame":
        """The tasks you can see, as a DataFrame (one row per task; the columns of ``werkbund list``).

        Args:
            status: only tasks in this state: ``CREATED``, ``STARTED``, ``COMPLETE`` or ``FAILED``.
            creator: only tasks made by this user.
            algorithm: only tasks of this algorithm.
            search: text to look for in the name, creator, organisation and description.
            mine: only tasks you created.
            joined: only tasks you joined as a participant.
        """
        import pandas as pd

        rows = self._user.list_tasks(status=status, creator=creator, algorithm=algorithm, search=search)
        if mine:
            rows = [r for r in rows if r.get("role") == "creator"]
        if joined:
            rows = [r for r in rows if r.get("role") == "participant"]
        frame = pd.DataFrame([{c: r.get(c) for c in LIST_COLUMNS} for r in rows], columns=LIST_COLUMNS)
        for column in ("created_at",):
            frame[column] = pd.to_datetime(frame[column], errors="coerce", utc=True)
        return frame

    def task(self, name: str) -> "Task":
        """The handle of an existing task (raises ``TaskNotFound`` if there is none of that name)."""
        from werkbund.client.python_api.task import Task

        return Task(self, name)

    def info(self, name: str) -> dict:
        """A task's details: status, definition, participants (for members), schema."""
        return self._user.task_info(name)

    def close(self) -> None:
        """Close the connection (the cached session token stays valid)."""
        self._user.close()

    def logout(self) -> None:
        """End the session on the platform (its token, and on the cloud its broker account, open
        nothing afterwards), forget the cached token, and close the connection."""
        from werkbund.client import home_files

        try:
            if hasattr(self._user.transport, "logout"):
                self._user.transport.logout()
        finally:
            if self.platform != "inproc":
                home_files.forget_token(self.url, self.name)
            self.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url or "this process"
        return f"<werkbund.Session {self.name} on the {self.platform} platform at {where}>"


class LocalPlatform:
    """A local platform (Flask + SQLite) served from this process, for notebooks and development.

    ``url`` is its address; ``stop()`` shuts it down (the SQLite file stays). Use it as a context
    manager or stop it at the end; as ``werkbund local-platform`` does in a terminal.
    """

    def __init__(self, path: str | Path | None = None, host: str = "127.0.0.1", port: int = 0):
        from werkbund.local_platform.server import LocalPlatformServer, default_db_url
        from werkbund.platform.db import sqlite_url

        if path is None:
            db = default_db_url(home_files.home())
        else:
            folder = Path(path).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            db = sqlite_url(folder / "platform.sqlite")
        try:
            self._server = LocalPlatformServer(db, host=host, port=port).start()
        except OSError as exc:
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.database = self._server.service.db.url

    @property
    def url(self) -> str:
        """The address to give to :func:`connect` and :func:`register`."""
        return self._server.url

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "LocalPlatform":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<werkbund.LocalPlatform {self.url if self._server else '(stopped)'}, database {self.database}>"


def start_local_platform(path: str | Path | None = None, host: str = "127.0.0.1", port: int = 0) -> LocalPlatform:
    """Start a local platform in this process and return it (``.url``, ``.stop()``).

    Args:
        path: a folder for its SQLite database (default: ``WERKBUND_HOME/local-platform.sqlite``).
        host: the address to listen on (default 127.0.0.1: this machine only).
        port: the port (default 0: a free one, see ``.url``).
    """
    return LocalPlatform(path, host=host, port=port)


ALGORITHM_COLUMNS = ["name", "description", "privacy_modes", "dp", "fields", "participant_options", "model_suffix",
                     "distribution", "version"]
FIELD_COLUMNS = ["name", "kind", "type", "default", "range", "help"]


def algorithms(name: str | None = None) -> "pandas.DataFrame":
    """The installed algorithms (entry points ``werkbund.algorithms``), as their declarations say.

    Without ``name``: one row per algorithm (description, the POMs it runs under, whether it has
    differential privacy, its field names, participant options, model suffix and the distribution
    that provides it). With ``name``: one row per field of that algorithm and per participant option
    (``kind`` says which), with type, default, range and help; the generic fields every task has
    are in ``docs/task-definition.md``.
    """
    import pandas as pd

    from werkbund.algorithms.registry import available
    from werkbund.client.definitions import load_algorithm

    if name is not None:
        facts = load_algorithm(name).describe()
        rows = [dict(f, kind="field") for f in facts["fields"]]
        rows += [dict(f, kind="participant option") for f in facts["participant_options"]]
        return pd.DataFrame([{c: r.get(c) for c in FIELD_COLUMNS} for r in rows], columns=FIELD_COLUMNS)
    rows = []
    for installed in available():
        facts = load_algorithm(installed).describe()
        rows.append(dict(facts, fields=[f["name"] for f in facts["fields"]],
                         participant_options=[f["name"] for f in facts["participant_options"]]))
    return pd.DataFrame([{c: r.get(c) for c in ALGORITHM_COLUMNS} for r in rows], columns=ALGORITHM_COLUMNS)
