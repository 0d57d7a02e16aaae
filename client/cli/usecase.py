"""`werkbund usecase pdm`: the cross-company predictive-maintenance use case, local vs central vs federated."""
from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import click

from werkbund.client.cli.common import environment, handle_errors
from werkbund.platform.errors import InvalidInput

SCENARIOS = ("ai4i", "ai4i_type", "cmapss", "welding")


@click.group()
def usecase():
    """Use cases that show what federated training buys over training alone."""


class _Ticker:
    """A rich progress bar on a terminal, one line per step otherwise."""

    def __init__(self, total: int):
        self.bars = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True))
            self.bars.start()
            self.task = self.bars.add_task("starting", total=total)
        self.done, self.total = 0, total

    def __call__(self, text: str) -> None:
        self.done += 1
        if self.bars is not None:
            self.bars.update(self.task, advance=1, description=text)
        else:
            click.echo(f"[{self.done}/{self.total}] {text}", err=True)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


@usecase.command()
@environment(("WERKBUND_LEDGER_KEY", "The federation platform's ledger signing key file (default: a "
                                     "throw-away key for the run)."))
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="WERKBUND_DATA_DIR", show_envvar=True,
              help="Folder with ai4i2020/ and cmapss/; welding data is generated (default: none, welding only).")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(SCENARIOS),
              help="Run only these (repeatable; default: all, or only welding without --data-dir).")
@click.option("--rows", type=click.IntRange(20), help="Limit the data: AI4I rows of the file, C-MAPSS training "
              "rows per operator, welding records per robot (default: all rows; the generator's own count of "
              "welding records).")
@click.option("--rounds", default=10, show_default=True, type=click.IntRange(1), help="Federated rounds.")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1), help="Local epochs per round.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Batch size.")
@click.option("--learning-rate", default=0.002, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Learning rate.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the splits, the initial models and the generated welding data.")
@click.option("--platform", "platform_kind", default="local", show_default=True, type=click.Choice(["local", "inproc"]),
              help="Federate through a local platform server (HTTP), or the in-process platform core.")
@click.option("--out", default="werkbund-usecase", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the Markdown report, the plots and the generated welding data.")
@click.pass_context
@handle_errors
def pdm(ctx, data_dir, scenarios, rows, rounds, epochs, batch_size, learning_rate, seed, platform_kind, out):
    """Predictive maintenance across companies: AI4I 2020 (3 companies), C-MAPSS (4 operators), welding
    (2 robots, SYNTHETIC data); local vs central vs federated, with a Markdown report and plots."""
    from rich.console import Console

    from werkbund.usecases.data import load_scenario, write_welding_csv
    from werkbund.usecases.pdm import Budget, run_scenario, steps
    from werkbund.usecases.report import console_table, gap, write_report

    if not ctx.find_root().params.get("verbose"):
        logging.getLogger("werkbund").setLevel(logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes from the sites' evaluations
    if not scenarios:
        scenarios = SCENARIOS if data_dir else ("welding",)
        if not data_dir:
            click.echo("no --data-dir given: running the welding scenario (SYNTHETIC data) only", err=True)
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise InvalidInput(f"data directory {data_dir} does not exist")
    out = Path(out)
    budget = Budget(rounds=rounds, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    loaded = [load_scenario(name, data_dir, rows, seed) for name in scenarios]
    if "welding" in scenarios:
        write_welding_csv(out / "welding" / "data", rows, seed)
    ticker = _Ticker(sum(steps(s, budget) for s in loaded))
    started = time.monotonic()
    results = []
    try:
        for scenario in loaded:
            results.append(run_scenario(scenario, budget, platform_kind, tick=ticker))
    finally:
        ticker.close()
    command = "werkbund " + shlex.join(sys.argv[1:])
    report = write_report(results, out, command, time.monotonic() - started)
    console = Console(width=140)
    for result in results:
        console.print(console_table(result))
        difference = gap(result)
        if difference is not None:
            unit = "points of accuracy" if result.metric == "accuracy" else "cycles of RMSE"
            console.print(f"federated minus central (combined): {difference:+.2f} {unit}")
    click.echo(f"report: {report}")
