"""The `werkbund` commands that run training: aggregate, participate, demo, algorithms."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from werkbund.client import home_files
from werkbund.client.cli.common import (
    LOGIN_ENVIRONMENT, Connection, emit_json, environment, handle_errors, parse_value, platform_options,
)


def _progress():
    """Bars on a terminal; otherwise the engine's log records (through the CLI's logging handler)."""
    return "terminal" if sys.stderr.isatty() else False


def _task(conn: Connection, task: str):
    from werkbund.client.python_api.session import Session

    return Session(conn.login(), conn.platform, conn.url).task(task)


@click.command()
@environment(*LOGIN_ENVIRONMENT, "WERKBUND_MNIST_DIR")
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--data", "data_spec",
              help="Held-out data of your own (.csv, .npz, builtin:digits or builtin:mnist) to evaluate every "
                   "round's model (default: none, only the participants evaluate).")
@click.option("--target", help="Target column of the --data CSV (default: none; needed for a CSV).")
@click.option("--quorum-timeout", type=float,
              help="Give up if the quorum is not met in this many seconds (default: wait for ever).")
@click.option("--results", type=click.Path(file_okay=False),
              help="Where to write history.json and the plots (accuracy or RMSE per round, confusion matrix) "
                   "(default: WERKBUND_HOME/results/TASK).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False),
              help="Where the checkpoint after every round goes (default: WERKBUND_HOME/checkpoints/TASK).")
@click.option("--resume", is_flag=True,
              help="Continue a STARTED task from its last checkpoint (after the aggregator was stopped or killed) "
                   "(default: start from round 1).")
@handle_errors
def aggregate(conn: Connection, task, data_spec, target, quorum_timeout, results, checkpoint_dir, resume):
    """Run the aggregator of a task you created: wait for the quorum, then run the rounds."""
    from werkbund.algorithms.metrics import headline

    out = Path(results) if results else home_files.results_dir(task)
    result = _task(conn, task).aggregate(holdout=data_spec or None, target=target, progress=_progress(),
                                         quorum_timeout=quorum_timeout, checkpoint_dir=checkpoint_dir,
                                         resume=resume, results=out)
    history = result.outcome.get("history") or []
    final = history[-1] if history else {}
    figures = f", final {headline(final)}" if headline(final) else ""
    stopped = f"; {result.outcome['stopped_early']}" if result.outcome.get("stopped_early") else ""
    click.echo(f"task {task} COMPLETE{figures}; results in {out}{stopped}")


@click.command()
@environment(*LOGIN_ENVIRONMENT, "WERKBUND_MNIST_DIR")
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--data", "data_spec", help="Override the data chosen at join (default: the data given to join).")
@click.option("--target", help="Target column of the --data CSV (default: the one given to join).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the final model (default: WERKBUND_HOME/models/USER/TASK with the algorithm's "
                   "model suffix, e.g. .keras; `werkbund algorithms --details` names each).")
@click.option("--hold-back", help="Comma-separated columns to keep to yourself, for algorithms that declare the "
                                  "participant option hold_back (default: none).")
@click.option("--option", "settings", multiple=True, metavar="NAME=VALUE",
              help="A participant option the task's algorithm declares, repeatable, read as its declared type "
                   "(default: none; `werkbund algorithms --algorithm NAME` lists them).")
@handle_errors
def participate(conn: Connection, task, data_spec, target, out, hold_back, settings):
    """Train in a task you joined, round after round, until the final model arrives."""
    from werkbund.algorithms.metrics import headline

    columns = [c.strip() for c in hold_back.split(",") if c.strip()] if hold_back else None
    handle = _task(conn, task)
    options = _participant_options(handle.definition, settings)
    result = handle.participate(data=data_spec or None, target=target, progress=_progress(), hold_back=columns,
                                out=out, options=options)
    figures = headline(result.evaluation)
    click.echo(f"task {task}: final model written to {result.model_path}"
               + (f"; local test {figures}" if figures else ""))


def _participant_options(definition: dict, settings: tuple[str, ...]) -> dict:
    """``--option NAME=VALUE`` pairs, parsed as the task's algorithm declares its participant options."""
    if not settings:
        return {}
    from werkbund.client.definitions import load_algorithm
    from werkbund.platform.errors import InvalidInput

    algorithm = load_algorithm(definition.get("algorithm"), definition)
    declared = {f.name: f.types for f in algorithm.participant_options}
    options = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        key = key.strip()
        if not sep or key not in declared:
            raise InvalidInput(f"--option {setting!r}: algorithm {algorithm.name!r} takes NAME=VALUE with NAME one of "
                               f"{', '.join(declared) or 'none (it declares no participant options)'}")
        if list in declared[key] and not text.strip().startswith("["):
            options[key] = [part.strip() for part in text.split(",") if part.strip()]
        else:
            options[key] = parse_value(text, declared[key], f"--option {key}")
    return options


def describe_algorithm(facts: dict) -> list[str]:
    """The lines `werkbund algorithms --details` prints for one declaration (``Algorithm.describe()``)."""
    from werkbund.algorithms.registry import POM_NAMES as modes

    provider = f"{facts['distribution']} {facts.get('version') or ''}".strip() if facts["distribution"] else "unknown"
    lines = [f"{facts['name']}: {facts['description']}",
             f"  provided by   {provider} (pip install {facts['distribution'] or '...'})",
             "  privacy       " + ", ".join(f"POM {m} ({modes.get(m, '?')})" for m in facts["privacy_modes"])
             + f"; differential privacy (dp): {'yes' if facts['dp'] else 'no'}",
             f"  model file    {facts['model_suffix']}"]
    for title, where, items in (("fields", "werkbund create --set NAME=VALUE, or the --definition file",
                                 facts["fields"]),
                                ("participant options", "werkbund participate --option NAME=VALUE",
                                 facts["participant_options"])):
        lines.append(f"  {title} ({where}):" if items else f"  {title}: none")
        for item in items:
            default = "" if item["default"] is None else f"; default {json.dumps(item['default'])}"
            lines.append(f"    {item['name']:<14}{item['type']}{' ' + item['range'] if item['range'] else ''}{default}")
            if item["help"]:
                lines.append(f"    {'':<14}{item['help']}")
    return lines


@click.command()
@click.option("--algorithm", "name", help="Show this algorithm in full: fields with type, default, range and help, "
                                          "privacy modes, DP, participant options (default: every algorithm, one "
                                          "line each).")
@click.option("--details", is_flag=True, help="Show every algorithm in full (default: one line each).")
@click.option("--json", "as_json", is_flag=True, help="Print the declarations as JSON (default: text).")
@handle_errors
def algorithms(name, details, as_json):
    """List the installed algorithms (entry points of the group werkbund.algorithms) and what each declares."""
    from werkbund.algorithms.registry import available
    from werkbund.client.definitions import load_algorithm

    facts = [load_algorithm(n).describe() for n in ([name] if name else available())]
    if as_json:
        return emit_json(facts if not name else facts[0])
    for i, one in enumerate(facts):
        if name or details:
            click.echo(("\n" if i else "") + "\n".join(describe_algorithm(one)))
        else:
            click.echo(f"{one['name']}: {one['description']}")


@click.command()
@environment("WERKBUND_MNIST_DIR",
             ("WERKBUND_LEDGER_KEY", "The demo platform's ledger signing key file (default: beside its "
                                     "database, OUT/platform.sqlite)."))
@click.option("--participants", "-n", default=3, show_default=True, type=click.IntRange(1),
              help="How many participant processes share the data.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1), help="Training rounds.")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1), help="Local epochs per round.")
@click.option("--dataset", default="digits", show_default=True, type=click.Choice(["digits", "mnist"]),
              help="Built-in data (mnist is read from WERKBUND_MNIST_DIR).")
@click.option("--out", default="werkbund-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the platform database, models and the accuracy plot.")
@handle_errors
def demo(participants, rounds, epochs, dataset, out):
    """Run a whole federated task on built-in data: a local platform, an aggregator, N participants."""
    from werkbund.usecases.demo import run_demo

    summary = run_demo(participants=participants, rounds=rounds, epochs=epochs, dataset=dataset, out=Path(out))
    click.echo(f"demo finished in {summary['wall_s']:.1f} s: final accuracy {summary['accuracy']:.4f} "
               f"(loss {summary['loss']:.4f}) over {summary['rounds']} rounds; model {summary['model']}, plot {summary['plot']}")
