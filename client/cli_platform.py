"""`werkbund platform serve`: the cloud platform service behind a RabbitMQ broker."""
from __future__ import annotations

import signal
import sys

import click

from werkbund.client.cli import cli
from werkbund.client.cli_common import environment, handle_errors


@cli.group("platform")
def platform_group():
    """Run the cloud platform service."""


@platform_group.command()
@environment(("WERKBUND_HOME", "Home of the default --blob-dir and ledger key (default: ~/.werkbund)."),
             "WERKBUND_LEDGER_KEY")
@click.option("--broker", required=True, envvar="WERKBUND_BROKER", show_envvar=True,
              help="The platform's own broker account and vhost, e.g. amqp://admin:pw@host:5672/werkbund.")
@click.option("--db", required=True, envvar="WERKBUND_DB", show_envvar=True,
              help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/werkbund or sqlite:///werkbund.db.")
@click.option("--management", envvar="WERKBUND_BROKER_MANAGEMENT", show_envvar=True,
              help="RabbitMQ management API (default: http://<broker user>@<broker host>:15672).")
@click.option("--workers", default=4, show_default=True, type=int, help="Threads answering requests.")
@click.option("--blob-port", default=0, show_default=True, type=int, envvar="WERKBUND_BLOB_PORT", show_envvar=True,
              help="Port of the blob store for large messages and models (0: any free port).")
@click.option("--blob-host", default="127.0.0.1", show_default=True, help="Address the blob store listens on.")
@click.option("--blob-url", envvar="WERKBUND_BLOB_URL", show_envvar=True,
              help="The blob store's URL as clients reach it (default: http://<blob host>:<blob port>).")
@click.option("--blob-dir", type=click.Path(file_okay=False), envvar="WERKBUND_BLOB_DIR", show_envvar=True,
              help="Where blobs are kept (default: <WERKBUND_HOME>/platform-blobs).")
@click.option("--blob-tls-cert", type=click.Path(dir_okay=False, exists=True),
              help="Certificate file: serve the blob store over HTTPS, with --blob-tls-key (default: plain HTTP).")
@click.option("--blob-tls-key", type=click.Path(dir_okay=False, exists=True),
              help="Private key file of --blob-tls-cert (default: none).")
@click.option("--no-blobs", is_flag=True,
              help="No blob store: large messages travel through the broker in chunks (default: a blob store).")
@handle_errors
def serve(broker, db, management, workers, blob_port, blob_host, blob_url, blob_dir, blob_tls_cert, blob_tls_key,
          no_blobs):
    """Answer control requests from the broker until interrupted."""
    from werkbund.client import state
    from werkbund.platform.amqp_server import AmqpPlatformServer

    server = AmqpPlatformServer(broker, db, management_url=management, workers=workers,
                                blob_dir=blob_dir or str(state.home() / "platform-blobs"), blob_host=blob_host,
                                blob_port=None if no_blobs else blob_port, blob_url=blob_url,
                                blob_certificate=blob_tls_cert, blob_key=blob_tls_key)
    server.setup()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    p = server.parameters
    blobs = f", blob store {server.blob_server.url}" if server.blob_server else ""
    click.echo(f"werkbund cloud platform serving on amqp://{p.host}:{p.port}/{server.vhost} "
               f"(database {server.service.db.engine.url.render_as_string(hide_password=True)}{blobs})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
