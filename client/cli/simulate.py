"""`werkbund simulate`: a task with N virtual companies cut from one data set, in this process."""
from __future__ import annotations

import logging

import click

from werkbund.client.cli.common import definition_with_options, environment, handle_errors


def _default(what: str, fallback: str) -> str:
    return f"{what} (default: the definition file's value, else {fallback})."


@click.command()
@environment("WERKBUND_MNIST_DIR",
             ("WERKBUND_LEDGER_KEY", "The simulated platform's ledger signing key file (default: a throw-away "
                                     "key for the run)."))
@click.option("--definition", type=click.Path(exists=True, dir_okay=False),
              help="Task definition (a JSON object, as for `werkbund create`) (default: none, the options below "
                   "and the platform's defaults).")
@click.option("--algorithm", help=_default("Algorithm (see `werkbund algorithms`)", "the platform's, neural_network"))
@click.option("--rounds", type=click.IntRange(1), help=_default("Training rounds", "the platform's, 5"))
@click.option("--epochs", type=click.IntRange(1),
              help=_default("Local epochs per round, for algorithms that train in epochs", "the algorithm's"))
@click.option("--batch-size", type=click.IntRange(1),
              help=_default("Local batch size, for algorithms that train in batches", "the algorithm's"))
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True),
              help=_default("Local learning rate, for algorithms that have one", "the algorithm's"))
@click.option("--data", "data_spec", required=True,
              help="The one data set the virtual companies are cut from: a .csv, a .parquet, a .npz, builtin:digits "
                   "or builtin:mnist.")
@click.option("--target", help="Target column of a CSV or Parquet file (default: none; a .npz or builtin: data set "
                               "has its own).")
@click.option("--features", help="Comma-separated feature columns of a CSV or Parquet file (default: all but the "
                                 "target and the partition column).")
@click.option("--kind", type=click.Choice(["classification", "regression"]),
              help="What the target is (default: the definition's kind, else classification).")
@click.option("--participants", "-n", default=10, show_default=True, type=click.IntRange(1),
              help="How many virtual companies.")
@click.option("--partition", default="iid", show_default=True,
              help="How the rows are shared out: iid, column:NAME (one group of a column per company, e.g. "
                   "column:Type for AI4I's product types), dirichlet:ALPHA (label skew, e.g. dirichlet:0.5) or "
                   "quantity:BETA (skewed sizes, e.g. quantity:1.5).")
@click.option("--min-rows", default=2, show_default=True, type=click.IntRange(1),
              help="The fewest rows a virtual company gets from a skewed partition.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the partition, and of the task (splits, initial models) unless the definition has one.")
@click.option("--backend", type=click.Choice(["threads", "ray"]), default="threads", show_default=True,
              help="Run the participants on a bounded thread pool here, or on Ray actors (the ray extra).")
@click.option("--workers", type=click.IntRange(1),
              help="Pool threads (default: one per core, at most 4) or Ray actors (default: Ray's CPUs).")
@click.option("--ledger/--no-ledger", default=None,
              help="Give the virtual companies identity keys, so the members' ledger entries are written and "
                   "audited as in a real task (slower) (default: only for a task with pom 2 or 3, which needs them).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the results: history.csv, participants.csv, figures, simulation.json and the final "
                   "model (default: none, only the summary line).")
@click.option("--task", "task_name", default="simulation", show_default=True,
              help="The task's name on the simulated platform.")
@click.pass_context
@handle_errors
def simulate(ctx, definition, algorithm, rounds, epochs, batch_size, learning_rate, data_spec, target, features,
             kind, participants, partition, min_rows, seed, backend, workers, ledger, out, task_name):
    """Simulate a task with N virtual companies cut from one data set: the platform core, the real
    algorithm code and its Result, in this process, before real partners join."""
    from werkbund.simulation import simulate as run

    if not ctx.find_root().params.get("verbose"):
        logging.getLogger("werkbund").setLevel(logging.WARNING)
    options = {"algorithm": algorithm, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "kind": kind}
    spec = definition_with_options(definition, options)
    result = run(spec, data_spec, partition=partition, participants=participants, seed=seed, target=target,
                 features=features, kind=kind, rounds=rounds, backend=backend, workers=workers, min_rows=min_rows,
                 task=task_name, out=out, ledger=ledger, progress=True)
    click.echo(result.summary())
    if result.errors:
        click.echo(f"{len(result.errors)} virtual participant(s) stopped with an error, e.g. "
                   f"{next(iter(result.errors.items()))}", err=True)
    if out:
        click.echo(f"results: {out}")
