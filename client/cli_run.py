"""The `werkbund` commands that run training: aggregate, participate, demo, algorithms."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import click

from werkbund.client import state
from werkbund.client.cli import cli
from werkbund.client.cli_common import LOGIN_ENVIRONMENT, Connection, environment, handle_errors, platform_options
from werkbund.platform.errors import InvalidInput


def make_progress():
    from werkbund.algorithms.engine.progress import Progress, RichProgress

    return RichProgress() if sys.stderr.isatty() else Progress()


def load_local_data(data_spec, target, features=None, shard=None, kind=None):
    from werkbund.algorithms.data import load_dataset

    if not data_spec:
        return None
    return load_dataset(data_spec, target=target, shard=shard, features=features, kind=kind or "classification")


def write_results(out: Path, task: str, outcome: dict) -> None:
    """history.json and the pictures: the metric per round and the final combined confusion matrix."""
    from werkbund.algorithms.plots import plot_accuracy, plot_confusion_matrix, plot_metric

    out.mkdir(parents=True, exist_ok=True)
    history = outcome["history"]
    (out / "history.json").write_text(json.dumps(history, indent=2))
    if not history:
        return
    if any("accuracy" in h for h in history):
        plot_accuracy(history, out / "accuracy.png", f"{task}: test accuracy per round")
    for metric in ("rmse", "mae"):
        if any(metric in h for h in history):
            plot_metric(history, metric, out / f"{metric}.png", f"{task}: test {metric.upper()} per round")
    last = history[-1]
    if last.get("confusion"):
        plot_confusion_matrix(last["confusion"], outcome.get("classes") or [], out / "confusion.png",
                              f"{task}: confusion matrix, all participants, round {last['round'] + 1}")


@cli.command()
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
    from werkbund.algorithms.engine.checkpoint import CheckpointError
    from werkbund.algorithms.metrics import headline
    from werkbund.algorithms.registry import get_algorithm

    user = conn.login()
    channel = user.aggregator(task)
    algorithm = get_algorithm(channel.definition["algorithm"])
    holdout = load_local_data(data_spec, target)
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else state.home() / "checkpoints" / task
    progress = make_progress()
    try:
        aggregator = algorithm.aggregator(channel, holdout=holdout, progress=progress, quorum_timeout=quorum_timeout,
                                          checkpoint_dir=checkpoints)
        outcome = aggregator.run(resume=resume)
    except CheckpointError as exc:
        raise InvalidInput(f"cannot resume task {task!r}: {exc}") from None
    finally:
        progress.close()
    out = Path(results) if results else state.results_dir(task)
    outcome["classes"] = (channel.info().get("schema") or {}).get("classes")
    write_results(out, task, outcome)
    if hasattr(aggregator, "write_results"):  # an algorithm's own results (clusters.png, statistics.md, ...)
        aggregator.write_results(out)
    final = outcome["history"][-1] if outcome["history"] else {}
    figures = f", final {headline(final)}" if headline(final) else ""
    stopped = f"; {outcome['stopped_early']}" if outcome.get("stopped_early") else ""
    click.echo(f"task {task} COMPLETE{figures}; results in {out}{stopped}")


@cli.command()
@environment(*LOGIN_ENVIRONMENT, "WERKBUND_MNIST_DIR")
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--data", "data_spec", help="Override the data chosen at join (default: the data given to join).")
@click.option("--target", help="Target column of the --data CSV (default: the one given to join).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the final model (.keras; .safetensors or .json for kmeans, the linear models "
                   "and statistics) (default: WERKBUND_HOME/models/USER/TASK.keras, or that suffix).")
@click.option("--hold-back", help="Comma-separated columns to keep to yourself (algorithms that allow it: statistics) "
                                  "(default: none).")
@handle_errors
def participate(conn: Connection, task, data_spec, target, out, hold_back):
    """Train in a task you joined, round after round, until the final model arrives."""
    from werkbund.algorithms.registry import get_algorithm

    choice = state.load_join(conn.url, conn.user, task) or {}
    if data_spec:
        choice = {"data": data_spec, "target": target or choice.get("target"), "kind": choice.get("kind")}
    if not choice.get("data"):
        raise InvalidInput(f"no data chosen for task {task!r}: join it with --data, or give --data here")
    data = load_local_data(choice["data"], choice.get("target"), choice.get("features"), choice.get("shard"),
                           choice.get("kind"))
    user = conn.login()
    channel = user.participant(task)
    definition = channel.definition
    algorithm = get_algorithm(definition["algorithm"])
    train, test = data.split(definition.get("test_size", 0.2), definition.get("seed", 0))
    options = {}
    if hold_back:
        if "hold_back" not in inspect.signature(algorithm.participant.__init__).parameters:
            raise InvalidInput(f"algorithm {definition['algorithm']!r} does not let participants hold back columns")
        options["hold_back"] = [c.strip() for c in hold_back.split(",") if c.strip()]
    suffix = getattr(algorithm.participant, "model_suffix", ".keras")
    out = out or str(state.home() / "models" / conn.user / f"{task}{suffix}")
    progress = make_progress()
    try:
        result = algorithm.participant(channel, train, test, progress=progress, out_model=out, **options).run()
    finally:
        progress.close()
    from werkbund.algorithms.metrics import headline

    figures = headline(result.get("eval", {}))
    click.echo(f"task {task}: final model written to {result.get('model_path', out)}"
               + (f"; local test {figures}" if figures else ""))


@cli.command()
def algorithms():
    """List the installed algorithms."""
    from werkbund.algorithms.registry import available, get_algorithm

    for name in available():
        click.echo(f"{name}: {get_algorithm(name).description}")


@cli.command()
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
    from werkbund.client.demo import run_demo

    summary = run_demo(participants=participants, rounds=rounds, epochs=epochs, dataset=dataset, out=Path(out))
    click.echo(f"demo finished in {summary['wall_s']:.1f} s: final accuracy {summary['accuracy']:.4f} "
               f"(loss {summary['loss']:.4f}) over {summary['rounds']} rounds; model {summary['model']}, plot {summary['plot']}")
