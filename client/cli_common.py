"""What every `werkbund` command shares: platform options, passwords, sessions, errors."""
from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from werkbund.client import state
from werkbund.client.api import User, load_credentials, make_transport
from werkbund.platform.errors import AuthenticationFailed, Unavailable, WerkbundError

log = logging.getLogger("werkbund.cli")

EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_TASK_FAILED = 1, 3, 4


def platform_options(func):
    """--platform, --url, --user, --credentials, as every command that talks to a platform takes them."""
    @click.option("--credentials", type=click.Path(dir_okay=False), envvar="WERKBUND_CREDENTIALS",
                  help="JSON file with platform, url, user (and optionally password, org).")
    @click.option("--user", "-u", envvar="WERKBUND_USER", help="Your user name.")
    @click.option("--url", envvar="WERKBUND_URL", help="Platform address, e.g. http://127.0.0.1:5000.")
    @click.option("--platform", "platform_kind", type=click.Choice(["local", "cloud"]), envvar="WERKBUND_PLATFORM",
                  help="Which platform (default: local, or the credentials file's).")
    @functools.wraps(func)
    def wrapper(*args, platform_kind, url, user, credentials, **kwargs):
        creds = load_credentials(credentials) if credentials else {}
        conn = Connection(platform=platform_kind or creds.get("platform", "local"), url=url or creds.get("url"),
                          user=user or creds.get("user"), creds=creds)
        return func(*args, conn=conn, **kwargs)
    return wrapper


class Connection:
    """Where and as whom a command acts; logs in lazily, reusing a cached session token."""

    def __init__(self, platform: str, url: str | None, user: str | None, creds: dict):
        self.platform, self.url, self.user, self.creds = platform, url, user, creds
        if not self.url:
            raise click.UsageError("no platform address: give --url, set WERKBUND_URL or use --credentials")
        if not self.user:
            raise click.UsageError("no user: give --user, set WERKBUND_USER or use --credentials")

    def password(self, confirm: bool = False) -> str:
        password = os.environ.get("WERKBUND_PASSWORD") or self.creds.get("password")
        if password:
            return password
        if not sys.stdin.isatty():
            raise AuthenticationFailed("no password: set WERKBUND_PASSWORD, put it in the credentials file, "
                                       "or run the command in a terminal to be asked")
        return click.prompt(f"password for {self.user}", hide_input=True, confirmation_prompt=confirm)

    def transport(self):
        return make_transport(self.platform, self.url, **_cloud_options(self.creds))

    def login(self, fresh: bool = False) -> User:
        transport = self.transport()
        token = None if fresh else state.load_token(self.url, self.user)
        if token and hasattr(transport, "token"):
            transport.token, transport.user = token, self.user
            try:
                transport.call("whoami")
                return User(transport, state.load_identity(self.url, self.user))
            except AuthenticationFailed:
                state.forget_token(self.url, self.user)
        data = transport.login(self.user, self.password())
        if data.get("token"):
            state.save_token(self.url, self.user, data["token"])
        return User(transport, state.load_identity(self.url, self.user))


def _cloud_options(creds: dict) -> dict:
    return {k: creds[k] for k in ("vhost", "ca_certificate") if k in creds}


def handle_errors(func):
    """Turn a user's mistake into one line on stderr and a non-zero exit, never a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from werkbund.algorithms.data import DataError
        from werkbund.client.messages import MalformedMessage

        try:
            return func(*args, **kwargs)
        except Unavailable as exc:
            fail(exc.message, EXIT_UNAVAILABLE)
        except WerkbundError as exc:
            fail(exc.message, EXIT_REFUSED)
        except (DataError, MalformedMessage) as exc:
            fail(str(exc), EXIT_REFUSED)
        except OSError as exc:  # a file the user named cannot be read or written
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_REFUSED)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except _task_errors() as exc:
            fail(str(exc), EXIT_TASK_FAILED)
    return wrapper


def _task_errors():
    from werkbund.algorithms.engine.aggregator import TaskFailure
    from werkbund.algorithms.engine.participant import TaskEnded

    return (TaskFailure, TaskEnded)


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "werkzeug", "waitress", "absl", "tensorflow", "pika", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
