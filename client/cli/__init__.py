"""The `werkbund` command line: register, create, list, join, aggregate, participate, ...

The root group and the account and task commands live here; the other commands live in the
modules of this package (``run``, ``platform``, ``ledger``, ...), which know nothing of this one
(their shared helpers are in ``common``): this module imports them and adds their commands to the
groups explicitly, at the end of the file, so every command is registered once
``werkbund.client.cli`` is imported."""
from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import click

from werkbund.client import home_files
from werkbund.client.cli import (
    check as cli_check, dashboard as cli_dashboard, ledger as cli_ledger, platform as cli_platform,
    platform_admin as cli_platform_admin, run as cli_run, simulate as cli_simulate, usecase as cli_usecase,
)
from werkbund.client.cli.common import (
    LOGIN_ENVIRONMENT, Connection, definition_with_options, emit_json, environment, handle_errors, parse_value,
    platform_options, setup_logging, shown,
)
from werkbund.platform.definition import FIELDS
from werkbund.platform.errors import InvalidInput, WerkbundError

DEFINITION_OPTIONS = ("algorithm", "quorum", "rounds", "epochs", "batch_size", "learning_rate",
                      "max_participants", "min_updates", "round_timeout", "kind")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version("werkbund"), prog_name="werkbund")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (default: info).")
def cli(verbose):
    """werkbund: train one model on data that none of the companies may share.

    `werkbund COMMAND --help` tells what a command does, its options with their defaults and the
    environment variables it reads.

    \b
    Environment:
      WERKBUND_HOME  Where session tokens, identity keys, joined datasets,
                     checkpoints, models and results are kept
                     (default: ~/.werkbund).
    """
    setup_logging(verbose)


def _field(what: str, field: str, fallback: str | None = None) -> str:
    """Help for an option that overrides a task definition field, with the platform's default."""
    default = FIELDS[field][1]
    return f"{what} (default: the definition file's value, else {fallback or default})."


def _training_field(what: str, field: str) -> str:
    """Help for an option that sets a field of the algorithms that train in epochs (algorithms/fields.py)."""
    from werkbund.algorithms import fields

    default = next(f.default for f in fields.TRAINING if f.name == field)
    return (f"{what}, for algorithms that declare the field {field} (default: the definition file's value, "
            f"else the algorithm's, {default} for the built-in ones).")


# ------------------------------------------------------------------ accounts
@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--org", help="Your organisation (default: the credentials file's org; one of the two is needed).")
@click.option("--unencrypted-key", is_flag=True,
              help="Write the identity key unencrypted (default: encrypted with WERKBUND_KEY_PASSPHRASE if "
                   "set, else with your password).")
@handle_errors
def register(conn: Connection, org, unencrypted_key):
    """Create an account and an identity key (the password is asked for, or taken from
    WERKBUND_PASSWORD or the credentials file). The key is encrypted with WERKBUND_KEY_PASSPHRASE if
    set, else with the password; later commands unlock it with the same."""
    org = org or conn.creds.get("org")
    if not org:
        raise click.UsageError("no organisation: give --org or put org in the credentials file")
    from werkbund.client.python_api.session import register_account

    transport = conn.transport()
    password = conn.password(confirm=True)
    data = register_account(transport, conn.url, conn.user, password, org, encrypt_key=not unencrypted_key)
    click.echo(f"registered {data['user']} ({data['org']}); identity key {data['key_path']} "
               f"({'encrypted' if data['encrypted'] else 'UNENCRYPTED'}; public {data['public_key']})")


@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@handle_errors
def login(conn: Connection):
    """Check your password and keep a session token under WERKBUND_HOME."""
    user = conn.login(fresh=True)
    click.echo(f"logged in as {user.name}")


@cli.command()
@environment("WERKBUND_HOME")
@platform_options
@handle_errors
def logout(conn: Connection):
    """Revoke the cached session token on the platform and forget it."""
    token = home_files.load_token(conn.url, conn.user)
    revoked = False
    if token:
        transport = conn.transport()
        if hasattr(transport, "logout"):  # the cloud platform's logout also deletes the session's broker account
            transport.token, transport.user = token, conn.user
            try:
                transport.logout()
                revoked = True
            except WerkbundError:  # expired or revoked already: nothing left to revoke
                pass
    home_files.forget_token(conn.url, conn.user)
    click.echo(f"logged out {conn.user}" + ("; the session token is revoked on the platform" if revoked else ""))


# --------------------------------------------------------------------- tasks
def _settings(definition: dict, settings: tuple[str, ...]) -> dict:
    """``--set NAME=VALUE`` pairs, each parsed as the installed algorithm (or the platform) declares it."""
    if not settings:
        return {}
    from werkbund.client.definitions import load_algorithm

    name = definition.get("algorithm") or FIELDS["algorithm"][1]
    algorithm = load_algorithm(name, definition)
    declared = {f.name: f.types for f in algorithm.all_fields}
    declared.update({k: (v[0] if isinstance(v[0], tuple) else (v[0],)) for k, v in FIELDS.items()})
    values = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--set wants NAME=VALUE, not {setting!r}")
        if key not in declared:
            raise InvalidInput(f"--set {key}: algorithm {name!r} has no field {key!r}; its fields: "
                               f"{', '.join(algorithm.field_names) or 'none'} (`werkbund algorithms --algorithm "
                               f"{name}`), and every task's: {', '.join(sorted(FIELDS))}")
        values[key] = parse_value(text, declared[key], f"--set {key}")
    return values


class CreateCommand(click.Command):
    """`werkbund create`, whose help lists the installed algorithms' own fields (from their declarations)."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        from werkbund.algorithms.registry import available
        from werkbund.client.definitions import load_algorithm

        rows = []
        for name in available():
            try:
                algorithm = load_algorithm(name)
            except InvalidInput as exc:
                rows.append((name, f"cannot be loaded: {exc}"))
                continue
            fields = ", ".join(f.name if f.default is None else f"{f.name}={json.dumps(f.default)}"
                               for f in algorithm.all_fields) or "no fields of its own"
            modes = ", ".join(str(m) for m in sorted(algorithm.privacy_modes))
            rows.append((name, f"{fields}; POM {modes}"))
        with formatter.section("Algorithm fields (--set NAME=VALUE, or in the --definition file; defaults shown)"):
            formatter.write_dl(rows or [("none", "no algorithm is installed")])
            formatter.write_paragraph()
            formatter.write_text("`werkbund algorithms --algorithm NAME` tells each field's type, range and meaning; "
                                 "the fields every task has are in docs/task-definition.md.")


@cli.command(cls=CreateCommand)
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="A unique task name.")
@click.option("--definition", type=click.Path(exists=True, dir_okay=False),
              help="Task definition (a JSON object; fields the options below do not cover, e.g. pom, dp, model, "
                   "go here) (default: none, the defaults of the platform and the algorithm).")
@click.option("--algorithm", help=_field("Algorithm (see `werkbund algorithms`)", "algorithm"))
@click.option("--quorum", type=int, help=_field("Participants needed before the task starts", "quorum"))
@click.option("--rounds", type=int, help=_field("Training rounds", "rounds"))
@click.option("--epochs", type=int, help=_training_field("Local epochs per round", "epochs"))
@click.option("--batch-size", type=int, help=_training_field("Local batch size", "batch_size"))
@click.option("--learning-rate", type=float, help=_training_field("Local learning rate", "learning_rate"))
@click.option("--max-participants", type=int,
              help=_field("Most participants that may join", "max_participants", "the quorum"))
@click.option("--min-updates", type=int,
              help=_field("Fewest participants' updates a round needs (after the round timeout)", "min_updates"))
@click.option("--round-timeout", type=float,
              help=_field("Seconds to wait for the updates of one round", "round_timeout"))
@click.option("--kind", type=click.Choice(["classification", "regression"]),
              help=_field("What the participants' target must be (checked when they join)", "kind",
                          "any, not checked"))
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="A field of the algorithm (or any definition field), repeatable, e.g. --set clusters=4; the value "
                   "is read as the field's declared type (JSON for an object) (default: none; the fields are "
                   "listed below and by `werkbund algorithms --algorithm NAME`).")
@click.option("--json", "as_json", is_flag=True, help="Print the created task as JSON (default: one line of text).")
@handle_errors
def create(conn: Connection, task, definition, settings, as_json, **options):
    """Create a learning task (options override the definition file, --set overrides both).

    The algorithm installed here checks the definition and fills in its defaults before anything is
    sent; a participant needs the same algorithm installed (the task names the distribution)."""
    from werkbund.client.definitions import prepare_definition

    merged = definition_with_options(definition, options)
    merged.update(_settings(merged, settings))
    info = conn.login().create_task(task, prepare_definition(merged))
    if as_json:
        return emit_json(info)
    click.echo(f"created task {info['name']} ({info['algorithm']}, quorum {info['quorum']}, "
               f"{info['definition']['rounds']} rounds)")


@cli.command("list")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--status", type=click.Choice(["CREATED", "STARTED", "COMPLETE", "FAILED"]),
              help="Only tasks in this status (default: any).")
@click.option("--creator", help="Only tasks created by this user (default: anyone's).")
@click.option("--algorithm", help="Only tasks of this algorithm (default: any).")
@click.option("--search", help="Text to look for in name, creator, organisation, description (default: none).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (default: a table).")
@handle_errors
def list_tasks(conn: Connection, status, creator, algorithm, search, as_json):
    """List tasks: name, creator, status, algorithm, quorum, joined, created."""
    tasks = conn.login().list_tasks(status=status, creator=creator, algorithm=algorithm, search=search)
    if as_json:
        return emit_json(tasks)
    from rich.console import Console
    from rich.table import Table

    from rich.text import Text

    table = Table("name", "creator", "status", "algorithm", "POM", "quorum", "joined", "created")
    for t in tasks:  # Text, not markup: an organisation's "[red]" is shown as typed
        table.add_row(*(Text(shown(v)) for v in (
            t["name"], f"{t['creator']} ({t['org']})", t["status"], t["algorithm"], t["pom"], t["quorum"],
            f"{t['joined']}/{t['max_participants']}", t["created_at"])))
    Console(width=140).print(table if tasks else "no tasks")


@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with every round's record (default: text).")
@handle_errors
def info(conn: Connection, task, as_json):
    """Show a task: status, definition, participants, rounds."""
    user = conn.login()
    data = user.task_info(task)
    if data.get("role"):
        data["rounds"] = user.rounds(task)
    if as_json:
        return emit_json(data)
    click.echo(f"task {data['name']}: {data['status']}" + (f" ({shown(data['reason'])})" if data.get("reason") else ""))
    click.echo(f"  creator     {data['creator']} ({shown(data['org'])})")
    modes = {1: "plain", 2: "secure aggregation", 3: "homomorphic encryption"}
    click.echo(f"  algorithm   {data['algorithm']}, POM {data['pom']} ({modes.get(data['pom'], 'unknown')})")
    click.echo(f"  joined      {data['joined']} of quorum {data['quorum']} (max {data['max_participants']})")
    click.echo(f"  definition  {json.dumps(data['definition'])}")
    dp = data["definition"].get("dp")
    if dp:
        click.echo("  privacy     record-level DP-SGD, " + ", ".join(f"{k} {dp[k]:g}" for k in (
            "epsilon", "delta", "noise_multiplier", "l2_norm_clip") if dp.get(k) is not None))
    if data.get("participants") is not None:
        click.echo(f"  participants {', '.join(data['participants']) or '-'}")
    from werkbund.algorithms.metrics import describe_rounds

    for line in describe_rounds(data.get("rounds", []), (data.get("schema") or {}).get("classes")):
        click.echo(f"  {line}")
    spent = [(r.get("metrics") or {}).get("dp") for r in data.get("rounds", [])]
    if any(spent):
        last = [s for s in spent if s][-1]
        click.echo(f"  privacy spent: epsilon {last['epsilon']:.4f} at delta {last['delta']:g}"
                   + (f" of budget {last['budget']:g}" if last.get("budget") is not None else "")
                   + f" (worst participant {last.get('worst_participant')}); after each round: "
                   + ", ".join(f"{s['epsilon']:.3f}" for s in spent if s))


@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@handle_errors
def delete(conn: Connection, task):
    """Delete a task you created (not while it runs)."""
    conn.login().delete_task(task)
    click.echo(f"deleted task {task}")


@cli.command()
@environment(*LOGIN_ENVIRONMENT, "WERKBUND_MNIST_DIR")
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--data", "data_spec", required=True,
              help="Your local data: a .csv, a .parquet, a .npz, builtin:digits or builtin:mnist. It never leaves "
                   "this machine.")
@click.option("--target", help="Target column of a CSV or Parquet file, which needs one (default: none; a .npz or "
                               "builtin: dataset has its own).")
@click.option("--features", help="Comma-separated feature columns of a CSV (default: all but the target).")
@click.option("--shard", help="Use part i of n of the data, e.g. 1/2 (for demos) (default: all of it).")
@click.option("--hide-size", is_flag=True,
              help="Do not tell the platform how many rows you have (default: the row count is reported).")
@click.option("--kind", type=click.Choice(["classification", "regression"]), default="classification",
              show_default=True,
              help="What the target is: classes, or a number to predict (e.g. remaining useful life).")
@click.option("--missing", type=click.Choice(["drop", "mean", "keep", "error"]),
              help="Rows with missing values: drop them, fill features with the column mean, keep NaN, or refuse "
                   "the data (default: what the task's algorithm declares: drop, or keep where it counts them); "
                   "the columns and counts are named either way.")
@handle_errors
def join(conn: Connection, task, data_spec, target, features, shard, hide_size, kind, missing):
    """Join a task with your local data (only its schema summary is reported)."""
    from werkbund.client.python_api.session import Session

    handle = Session(conn.login(), conn.platform, conn.url).task(task)
    features_list = [f.strip() for f in features.split(",")] if features else None
    handle.join(data_spec, target=target, features=features_list, kind=kind, shard=shard, hide_size=hide_size,
                missing=missing)
    data = handle.joined_data
    dropped = data.meta.get("dropped_rows")
    click.echo(f"joined task {task} with {len(data)} rows, {len(data.features)} features, "
               + (f"classes {data.classes}" if kind == "classification" else f"{kind} target {data.target!r}")
               + (f"; {dropped} rows with missing values dropped ({data.meta.get('missing')})" if dropped else ""))


@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@handle_errors
def leave(conn: Connection, task):
    """Leave a task before it starts."""
    conn.login().leave_task(task)
    click.echo(f"left task {task}")


@cli.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the .keras file, its metadata going to OUT.json (default: TASK.keras).")
@handle_errors
def model(conn: Connection, task, out):
    """Download the final model of a COMPLETE task (creator and participants)."""
    data, meta = conn.login().get_model(task)
    out = Path(out or f"{task}.keras")
    out.write_bytes(data)
    Path(f"{out}.json").write_text(json.dumps(meta.get("meta", {}), indent=2))
    click.echo(f"wrote {out} ({meta.get('size')} bytes, sha256 {meta.get('sha256')}); "
               f"classes {meta.get('meta', {}).get('classes')}")


@cli.command()
@environment(("WERKBUND_HOME", "Where the default SQLite database goes (default: ~/.werkbund)."),
             ("WERKBUND_LEDGER_KEY", "The platform's ledger signing key file (default: beside a SQLite "
                                     "database, else WERKBUND_HOME/platform/ledger-key-*.pem)."))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option("--db", help="SQLAlchemy database URL (default: SQLite under WERKBUND_HOME).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True),
              help="Certificate file (PEM, with its chain): serve HTTPS, with --tls-key (default: plain HTTP).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Private key file of --tls-cert (default: none).")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also serve the dashboard for this platform on 127.0.0.1 (default: no dashboard; see "
                   "`werkbund dashboard`).")
@click.option("--dashboard-port", default=8050, show_default=True, type=int,
              help="Port of the dashboard that --dashboard serves (0: a free one).")
@click.option("--upgrade", is_flag=True,
              help="Bring an older database to this werkbund's schema first, as `werkbund platform upgrade` does "
                   "(default: refuse to start on one).")
@handle_errors
def local_platform(host, port, db, tls_cert, tls_key, with_dashboard, dashboard_port, upgrade):
    """Run the local platform (Flask + SQLite) until interrupted."""
    from werkbund.local_platform.server import LocalPlatformServer, default_db_url

    if upgrade:
        cli_platform_admin.upgrade_before_start(db or default_db_url(home_files.home()))
    try:
        server = LocalPlatformServer(db or default_db_url(home_files.home()), host=host, port=port,
                                     tls_certificate=tls_cert, tls_key=tls_key)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    click.echo(f"werkbund local platform listening on {server.url} (database {server.service.db.url})", err=False)
    board = None
    try:
        if with_dashboard:
            board = cli_dashboard.start_dashboard("local", server.url, port=dashboard_port,
                                                  credentials={"ca_certificate": tls_cert} if tls_cert else None)
            click.echo(f"werkbund dashboard serving on {board.url}")
        server.serve_forever()
    finally:
        if board is not None:
            board.stop()
        server.stop()


# ------------------------------------------ the commands of the package's other modules
for command in (cli_run.aggregate, cli_run.participate, cli_run.algorithms, cli_run.demo,
                cli_platform.platform_group, cli_ledger.ledger, cli_usecase.usecase, cli_simulate.simulate,
                cli_dashboard.dashboard, cli_check.check):
    cli.add_command(command)
for command in (cli_platform_admin.upgrade, cli_platform_admin.backup, cli_platform_admin.restore,
                cli_ledger.reset_key_command):
    cli_platform.platform_group.add_command(command)


def main():
    cli(prog_name="werkbund")


if __name__ == "__main__":
    main()
