"""The `werkbund` commands that run training: aggregate, participate, demo, algorithms."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from werkbund.client import state
from werkbund.client.cli import cli
from werkbund.client.cli_common import Connection, handle_errors, platform_options
from werkbund.platform.errors import InvalidInput


def make_progress():
    from werkbund.algorithms.engine.progress import Progress, RichProgress

    return RichProgress() if sys.stderr.isatty() else Progress()


def load_local_data(data_spec, target, features=None, shard=None):
    from werkbund.algorithms.data import load_dataset

    return load_dataset(data_spec, target=target, shard=shard, features=features) if data_spec else None


@cli.command()
@platform_options
@click.option("--task", required=True)
@click.option("--data", "data_spec", help="Optional held-out data of your own to evaluate every round's model.")
@click.option("--target", help="Target column of a CSV.")
@click.option("--quorum-timeout", type=float, help="Give up if the quorum is not met in this many seconds.")
@click.option("--results", type=click.Path(file_okay=False), help="Where to write history.json and accuracy.png.")
@handle_errors
def aggregate(conn: Connection, task, data_spec, target, quorum_timeout, results):
    """Run the aggregator of a task you created: wait for the quorum, then run the rounds."""
    from werkbund.algorithms.plots import plot_accuracy
    from werkbund.algorithms.registry import get_algorithm

    user = conn.login()
    channel = user.aggregator(task)
    algorithm = get_algorithm(channel.definition["algorithm"])
    holdout = load_local_data(data_spec, target)
    progress = make_progress()
    try:
        outcome = algorithm.aggregator(channel, holdout=holdout, progress=progress,
                                       quorum_timeout=quorum_timeout).run()
    finally:
        progress.close()
    out = Path(results) if results else state.results_dir(task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(outcome["history"], indent=2))
    if outcome["history"]:
        plot_accuracy(outcome["history"], out / "accuracy.png", f"{task}: test accuracy per round")
    final = outcome["history"][-1] if outcome["history"] else {}
    accuracy = f", final accuracy {final['accuracy']:.4f}" if "accuracy" in final else ""
    click.echo(f"task {task} COMPLETE{accuracy}; results in {out}")


@cli.command()
@platform_options
@click.option("--task", required=True)
@click.option("--data", "data_spec", help="Override the data chosen at join.")
@click.option("--target")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the final model (.keras).")
@handle_errors
def participate(conn: Connection, task, data_spec, target, out):
    """Train in a task you joined, round after round, until the final model arrives."""
    from werkbund.algorithms.registry import get_algorithm

    choice = state.load_join(conn.url, conn.user, task) or {}
    if data_spec:
        choice = {"data": data_spec, "target": target or choice.get("target")}
    if not choice.get("data"):
        raise InvalidInput(f"no data chosen for task {task!r}: join it with --data, or give --data here")
    data = load_local_data(choice["data"], choice.get("target"), choice.get("features"), choice.get("shard"))
    user = conn.login()
    channel = user.participant(task)
    definition = channel.definition
    algorithm = get_algorithm(definition["algorithm"])
    train, test = data.split(definition.get("test_size", 0.2), definition.get("seed", 0))
    out = out or str(state.home() / "models" / conn.user / f"{task}.keras")
    progress = make_progress()
    try:
        result = algorithm.participant(channel, train, test, progress=progress, out_model=out).run()
    finally:
        progress.close()
    accuracy = result.get("eval", {}).get("accuracy")
    click.echo(f"task {task}: final model written to {result.get('model_path', out)}"
               + (f"; local test accuracy {accuracy:.4f}" if accuracy is not None else ""))


@cli.command()
def algorithms():
    """List the installed algorithms."""
    from werkbund.algorithms.registry import available, get_algorithm

    for name in available():
        click.echo(f"{name}: {get_algorithm(name).description}")


@cli.command()
@click.option("--participants", "-n", default=3, show_default=True, type=click.IntRange(1))
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1))
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1))
@click.option("--dataset", default="digits", show_default=True, type=click.Choice(["digits", "mnist"]))
@click.option("--out", default="werkbund-demo", show_default=True, type=click.Path(file_okay=False))
@handle_errors
def demo(participants, rounds, epochs, dataset, out):
    """Run a whole federated task on built-in data: a local platform, an aggregator, N participants."""
    from werkbund.client.demo import run_demo

    summary = run_demo(participants=participants, rounds=rounds, epochs=epochs, dataset=dataset, out=Path(out))
    click.echo(f"demo finished in {summary['wall_s']:.1f} s: final accuracy {summary['accuracy']:.4f} "
               f"(loss {summary['loss']:.4f}) over {summary['rounds']} rounds; model {summary['model']}, plot {summary['plot']}")
