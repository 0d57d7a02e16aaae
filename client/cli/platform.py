"""`werkbund platform serve`: the cloud platform service behind a RabbitMQ broker."""
from __future__ import annotations

import signal
import sys

import click

from werkbund.client.cli.common import environment, handle_errors


@click.group("platform")
def platform_group():
    """Run the cloud platform service."""


@platform_group.command()
@environment(("WERKBUND_HOME", "Home of the default --blob-dir and ledger key (default: ~/.werkbund)."),
             "WERKBUND_LEDGER_KEY")
@click.option("--broker", required=True, envvar="WERKBUND_BROKER", show_envvar=True,
              help="The platform's own broker account and vhost, e.g. amqp://admin:pw@host:5672/werkbund.")
@click.option("--db", required=True, envvar="WERKBUND_DB", show_envvar=True,
              help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/werkbund or sqlite:///werkbund.db.")
@click.option("--broker-ca", type=click.Path(dir_okay=False, exists=True), envvar="WERKBUND_BROKER_CA",
              show_envvar=True, help="CA file that signed the broker's TLS certificate, for an amqps:// --broker and "
                                     "an https:// --management (default: the system's CAs).")
@click.option("--management", envvar="WERKBUND_BROKER_MANAGEMENT", show_envvar=True,
              help="RabbitMQ management API (default: http://<broker user>@<broker host>:15672).")
@click.option("--workers", default=4, show_default=True, type=int, help="Threads answering requests.")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic", show_default=True,
              envvar="WERKBUND_QUEUE_TYPE", show_envvar=True,
              help="Queues the platform declares: quorum (replicated) on a broker cluster; a queue keeps its type.")
@click.option("--queue-max-messages", type=click.IntRange(min=1), default=4096, show_default=True,
              envvar="WERKBUND_QUEUE_MAX_MESSAGES", show_envvar=True,
              help="Messages that may wait in one queue (an inbox, the request queue); the broker refuses more "
                   "and the sender gets inbox_full.")
@click.option("--queue-max-bytes", type=click.IntRange(min=1), default=4 * 1024**3, show_default=True,
              envvar="WERKBUND_QUEUE_MAX_BYTES", show_envvar=True,
              help="Bytes of message bodies that may wait in one queue; the broker refuses more.")
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
@click.option("--upgrade", is_flag=True,
              help="Bring an older database to this werkbund's schema first, as `werkbund platform upgrade` does "
                   "(default: refuse to start on one).")
@click.option("--new-ledger-key", is_flag=True,
              help="Start with a ledger key that did not sign the ledger in the database, after the old one was "
                   "retired (docs/operations.md); default: refuse, as every replica must sign with the same key.")
@handle_errors
def serve(broker, broker_ca, db, management, workers, queue_type, queue_max_messages, queue_max_bytes, blob_port,
          blob_host, blob_url, blob_dir, blob_tls_cert, blob_tls_key, no_blobs, upgrade, new_ledger_key):
    """Answer control requests from the broker until interrupted."""
    from werkbund.client import home_files
    from werkbund.client.cli.platform_admin import upgrade_before_start
    from werkbund.platform.amqp.server import AmqpPlatformServer
    from werkbund.platform.replicas import check_ledger_key

    if upgrade:
        upgrade_before_start(db)

    server = AmqpPlatformServer(broker, db, management_url=management, workers=workers,
                                blob_dir=blob_dir or str(home_files.home() / "platform-blobs"), blob_host=blob_host,
                                blob_port=None if no_blobs else blob_port, blob_url=blob_url,
                                blob_certificate=blob_tls_cert, blob_key=blob_tls_key, broker_ca=broker_ca,
                                queue_type=queue_type, queue_max_messages=queue_max_messages,
                                queue_max_bytes=queue_max_bytes)
    if not new_ledger_key:
        check_ledger_key(server.service)  # replicas: all sign with one key
    server.setup()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    p = server.parameters
    blobs = f", blob store {server.blob_server.url}" if server.blob_server else ""
    scheme = "amqps" if p.ssl_options else "amqp"
    click.echo(f"werkbund cloud platform serving on {scheme}://{p.host}:{p.port}/{server.vhost} "
               f"(database {server.service.db.engine.url.render_as_string(hide_password=True)}{blobs})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
