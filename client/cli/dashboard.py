"""`werkbund dashboard`: the platform in a browser, served from this machine (werkbund/dashboard/)."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from werkbund.client.cli.common import CREDENTIALS_HELP, LOGIN_ENVIRONMENT, environment, handle_errors
from werkbund.platform.errors import InvalidInput

DEFAULT_PORT = 8050


def require_extra() -> None:
    """The dashboard's own dependencies are the `dashboard` extra."""
    missing = []
    for module in ("pydantic", "spectree"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InvalidInput(f"the dashboard needs {', '.join(missing)}: pip install 'werkbund[dashboard]'")


def start_dashboard(platform: str, url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    credentials: dict | None = None, default_user: str | None = None, tls_cert: str | None = None,
                    tls_key: str | None = None, data_root: str | None = None):
    """A started DashboardServer logged in to ``platform`` at ``url`` (for this command and `local-platform`)."""
    require_extra()
    from werkbund.dashboard import DashboardServer, DashboardSettings

    root = Path(data_root).expanduser().resolve() if data_root else None
    if root is not None and not root.is_dir():
        raise InvalidInput(f"--data-root {data_root} is not a folder")
    settings = DashboardSettings(platform=platform, url=url, credentials=dict(credentials or {}), data_root=root,
                                 default_user=default_user)
    return DashboardServer(settings, host=host, port=port, tls_certificate=tls_cert, tls_key=tls_key).start()


@click.command()
@environment(*LOGIN_ENVIRONMENT)
@click.option("--platform", "platform_kind", type=click.Choice(["local", "cloud"]), envvar="WERKBUND_PLATFORM",
              show_envvar=True, help="Which platform the dashboard logs its users in to (default: the credentials "
                                     "file's, else local).")
@click.option("--url", envvar="WERKBUND_URL", show_envvar=True,
              help="Platform address, e.g. http://127.0.0.1:5000 or amqp://broker:5672/werkbund (default: the "
                   "credentials file's url).")
@click.option("--user", "-u", envvar="WERKBUND_USER", show_envvar=True,
              help="A user name to put on the login page (default: the credentials file's user, else none); "
                   "everyone logs in with their own password.")
@click.option("--credentials", type=click.Path(dir_okay=False), envvar="WERKBUND_CREDENTIALS", show_envvar=True,
              help=CREDENTIALS_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but a loopback address needs --tls-cert and --tls-key.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port to serve on (0: a free one).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True),
              help="Certificate file: serve over HTTPS, with --tls-key (default: plain HTTP, on loopback only).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True),
              help="Private key file of --tls-cert (default: none).")
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Register dataset files only from under this folder (default: any file this process can read).")
@handle_errors
def dashboard(platform_kind, url, user, credentials, host, port, tls_cert, tls_key, data_root):
    """Serve the dashboard on this machine: tasks, datasets and live rounds in a browser.

    Each person logs in as their own werkbund user, with their password (never the credentials
    file's); their datasets and the aggregator and participant runs they start stay on this
    machine, as with the CLI."""
    from werkbund.client.api import load_credentials

    creds = load_credentials(credentials) if credentials else {}
    platform = platform_kind or creds.get("platform") or "local"
    url = url or creds.get("url")
    if not url:
        raise click.UsageError("no platform address: give --url, set WERKBUND_URL or use --credentials")
    server = start_dashboard(platform, url, host=host, port=port, credentials=creds,
                             default_user=user or creds.get("user"), tls_cert=tls_cert, tls_key=tls_key,
                             data_root=data_root)
    click.echo(f"werkbund dashboard for the {platform} platform at {url} serving on {server.url}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _interrupt(*_):
    raise KeyboardInterrupt
