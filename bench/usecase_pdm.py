"""The predictive-maintenance use case as a benchmark: local vs central vs federated, and the gap.

    .venv/bin/python bench/usecase_pdm.py --data-dir "$WERKBUND_DATA_DIR"        # all scenarios, all rows
    .venv/bin/python bench/usecase_pdm.py --data-dir "$WERKBUND_DATA_DIR" --scenario ai4i --rounds 10 --epochs 2
    .venv/bin/python bench/usecase_pdm.py --scenario welding --rows 3000             # generated (SYNTHETIC) data only

The same runs as ``werkbund usecase pdm`` (``usecases/pdm.py``): for every scenario the
platform's default MLP is trained locally at each site, centrally on the pooled rows and
federated through a local platform server, with the same budget. Prints the D3.3-style table of
every scenario, the federated-minus-central gap on the combined test rows (issue 4, benchmark c:
the AI4I gap) and the wall times, and writes the report to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SCENARIOS = ("ai4i", "ai4i_type", "cmapss", "welding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("WERKBUND_DATA_DIR") or None,
                        help="folder with ai4i2020/ and cmapss/ "
                             "(default: $WERKBUND_DATA_DIR; without it: welding only)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--platform", choices=["local", "inproc"], default="local")
    parser.add_argument("--out", default="out/bench-usecase-pdm")
    args = parser.parse_args()

    from rich.console import Console

    from werkbund.usecases.data import load_scenario
    from werkbund.client.cli.common import setup_logging
    from werkbund.usecases.pdm import Budget, run_scenario
    from werkbund.usecases.report import console_table, gap, metrics_of, table_rows, write_report

    setup_logging()
    import logging

    logging.getLogger("werkbund").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    scenarios = args.scenario or (SCENARIOS if args.data_dir else ("welding",))
    budget = Budget(args.rounds, args.epochs, args.batch_size, args.learning_rate, args.seed)
    console = Console(width=150)
    console.print(f"bench/usecase_pdm.py: scenarios {', '.join(scenarios)}; rows {args.rows or 'all'}; "
                  f"{budget.rounds} rounds x {budget.epochs} epochs, batch {budget.batch_size}, "
                  f"Adam {budget.learning_rate}; platform {args.platform}; {os.cpu_count()} CPU(s)")
    started = time.monotonic()
    results = []
    for name in scenarios:
        scenario = load_scenario(name, args.data_dir, args.rows, args.seed)
        t0 = time.monotonic()
        result = run_scenario(scenario, budget, args.platform,
                              tick=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
        results.append(result)
        console.print(console_table(result))
        for metric in metrics_of(result)[1:]:
            console.print(f"{metric}: " + "; ".join(f"{row[0]} {' / '.join(row[1:])}"
                                                    for row in table_rows(result, metric)))
        difference = gap(result)
        if difference is not None:
            unit = "points of accuracy" if result.metric == "accuracy" else "cycles of RMSE"
            console.print(f"[bold]{name}: federated minus central (combined test rows): {difference:+.2f} {unit}[/]")
        console.print("wall: " + ", ".join(f"{n} {m.wall_s:.1f} s" for n, m in result.models.items())
                      + f"; scenario {time.monotonic() - t0:.1f} s")
        for n, m in result.models.items():
            if m.error:
                console.print(f"{n}: {m.error}")
    command = "python bench/usecase_pdm.py " + " ".join(sys.argv[1:])
    report = write_report(results, Path(args.out), command, time.monotonic() - started)
    console.print(f"report: {report}; total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
