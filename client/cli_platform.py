"""`werkbund platform serve`: the cloud platform service behind a RabbitMQ broker."""
from __future__ import annotations

import signal
import sys

import click

from werkbund.client.cli import cli
from werkbund.client.cli_common import handle_errors


@cli.group("platform")
def platform_group():
    """Run the cloud platform service."""


@platform_group.command()
@click.option("--broker", required=True, envvar="WERKBUND_BROKER",
              help="The platform's own broker account and vhost, e.g. amqp://admin:pw@host:5672/werkbund.")
@click.option("--db", required=True, envvar="WERKBUND_DB",
              help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/werkbund or sqlite:///werkbund.db.")
@click.option("--management", envvar="WERKBUND_BROKER_MANAGEMENT",
              help="RabbitMQ management API (default: http://<broker user>@<broker host>:15672).")
@click.option("--workers", default=4, show_default=True, type=int, help="Threads answering requests.")
@handle_errors
def serve(broker, db, management, workers):
    """Answer control requests from the broker until interrupted."""
    from werkbund.platform.amqp_server import AmqpPlatformServer

    server = AmqpPlatformServer(broker, db, management_url=management, workers=workers)
    server.setup()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    p = server.parameters
    click.echo(f"werkbund cloud platform serving on amqp://{p.host}:{p.port}/{server.vhost} "
               f"(database {server.service.db.engine.url.render_as_string(hide_password=True)})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
