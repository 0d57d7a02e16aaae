"""What every `werkbund` command shares: platform options, passwords, sessions, errors."""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import click

from werkbund.client import home_files
from werkbund.client.api import User, load_credentials, make_transport
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, Unavailable, WerkbundError

log = logging.getLogger("werkbund.cli")

EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_TASK_FAILED = 1, 3, 4


# The keys of a credentials file (--credentials) that the CLI reads; options and environment variables win.
CREDENTIALS_KEYS = ("platform", "url", "user", "password", "org", "vhost", "ca_certificate")
CREDENTIALS_HELP = ("JSON file with the keys platform (local or cloud), url, user, password, org (read by "
                    "register), vhost and ca_certificate (cloud: the broker's virtual host and the CA file for "
                    "amqps). All are optional; options and environment variables win over it (default: none).")

# Environment variables that commands read besides their options' own (shown as [env var: ...]).
ENVIRONMENT = {
    "WERKBUND_PASSWORD": "Your password (default: the credentials file's, else asked for at a terminal).",
    "WERKBUND_HOME": "Where session tokens, identity keys, joined datasets, checkpoints, models and results "
                     "are kept (default: ~/.werkbund).",
    "WERKBUND_KEY_PASSPHRASE": "Passphrase of your identity key file (default: your account password, which "
                               "`werkbund register` encrypts the key with).",
    "WERKBUND_BLOB_THRESHOLD": "Cloud platform: messages larger than this many bytes go through the blob store "
                               "(default: 8388608, 8 MiB).",
    "WERKBUND_MNIST_DIR": "Where builtin:mnist is read from: a folder with the four MNIST IDX .gz files or "
                          "an mnist.npz (no default).",
    "WERKBUND_LEDGER_KEY": "The platform's ledger signing key file (default: beside a SQLite database, else "
                           "WERKBUND_HOME/platform/ledger-key-*.pem).",
    "WERKBUND_RECONNECT_SECONDS": "Local platform: how long to keep trying, with backoff, while the platform "
                                  "cannot be reached (restarted) before giving up (default: 300; 0: at once).",
}
# What every command that logs in to a platform reads.
LOGIN_ENVIRONMENT = ("WERKBUND_PASSWORD", "WERKBUND_HOME", "WERKBUND_KEY_PASSPHRASE", "WERKBUND_BLOB_THRESHOLD",
                     "WERKBUND_RECONNECT_SECONDS")


def environment(*names):
    """Append an "Environment:" paragraph naming ``names`` to a command's help: keys of ENVIRONMENT,
    or (name, description) pairs where a command reads a variable for its own purpose.

    Goes below ``@cli.command()`` (it edits the docstring the command is made from)."""
    def decorate(func):
        lines = []
        for item in names:
            name, text = item if isinstance(item, tuple) else (item, ENVIRONMENT[item])
            wrapped = textwrap.wrap(text, 48) or [""]  # lines within 80 columns
            lines.append(f"  {name:<24} {wrapped[0]}")
            lines.extend(f"  {'':<24} {more}" for more in wrapped[1:])
        func.__doc__ = (inspect.cleandoc(func.__doc__ or "") + "\n\n\b\nEnvironment:\n" + "\n".join(lines))
        return func
    return decorate


def platform_options(func):
    """--platform, --url, --user, --credentials, as every command that talks to a platform takes them."""
    @click.option("--credentials", type=click.Path(dir_okay=False), envvar="WERKBUND_CREDENTIALS", show_envvar=True,
                  help=CREDENTIALS_HELP)
    @click.option("--user", "-u", envvar="WERKBUND_USER", show_envvar=True,
                  help="Your user name (default: the credentials file's user).")
    @click.option("--url", envvar="WERKBUND_URL", show_envvar=True,
                  help="Platform address, e.g. http://127.0.0.1:5000 or amqp://broker:5672/werkbund "
                       "(default: the credentials file's url).")
    @click.option("--platform", "platform_kind", type=click.Choice(["local", "cloud"]), envvar="WERKBUND_PLATFORM",
                  show_envvar=True, help="Which platform (default: the credentials file's, else local).")
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
        token = None if fresh else home_files.load_token(self.url, self.user)
        if token and hasattr(transport, "token"):
            transport.token, transport.user = token, self.user
            try:
                transport.call("whoami")
                return User(transport, home_files.identity_file(self.url, self.user, self.password))
            except AuthenticationFailed:
                home_files.forget_token(self.url, self.user)
        password = self.password()
        data = transport.login(self.user, password)
        if data.get("token"):
            home_files.save_token(self.url, self.user, data["token"])
        return User(transport, home_files.identity_file(self.url, self.user, password))


def _cloud_options(creds: dict) -> dict:
    return {k: creds[k] for k in ("vhost", "ca_certificate") if k in creds}


def handle_errors(func):
    """Turn a user's mistake into one line on stderr and a non-zero exit, never a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from werkbund.algorithms.data.dataset import DataError
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


def shown(value) -> str:
    """Text that came from someone else (an organisation, a reason, a creator's description) as one
    terminal-safe line: control characters (newline, NUL, ANSI escapes) are printed as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def fail(message: str, code: int) -> None:
    click.echo(f"error: {shown(message)}", err=True)
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
    for noisy in ("urllib3", "werkzeug", "uvicorn", "absl", "tensorflow", "pika", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def definition_with_options(path, options: dict) -> dict:
    """The task definition in the JSON file ``path`` (if any), with the options that were given set over it."""
    definition = {}
    if path:
        try:
            definition = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"task definition {path} is not valid JSON: {exc}") from None
        if not isinstance(definition, dict):
            raise InvalidInput(f"task definition {path} must be a JSON object")
    definition.update({k: v for k, v in options.items() if v is not None})
    return definition


def parse_value(text: str, types: tuple, what: str):
    """A command-line value as the declared type: int, float, bool, str, or JSON for an object or list."""
    stripped = text.strip()
    if bool in types and stripped.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return stripped.lower() in ("true", "yes", "on", "1")
    for number in (int, float):
        if number in types:
            try:
                return number(stripped)
            except ValueError:
                pass
    if (dict in types or list in types) and stripped[:1] in ("{", "["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{what}: {text!r} is not valid JSON: {exc}") from None
    if str in types:
        return text
    try:  # let the declaration's check say what is wrong with it
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text
