"""The use case's report: Markdown tables as in MUSKETEER D3.3, confusion matrices, PNG plots, CSV.

Everything made from generated data carries the word SYNTHETIC: section titles, file names,
CSV rows and plots.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from werkbund.usecases.data import SYNTHETIC
from werkbund.usecases.pdm import CENTRAL, COMBINED, FEDERATED, ScenarioResult

METRIC_TITLES = {"accuracy": "accuracy (%)", "macro_f1": "macro F1 (%)", "rmse": "RMSE (cycles)",
                 "mae": "MAE (cycles)"}


def _prefix(result: ScenarioResult) -> str:
    return f"{SYNTHETIC}_" if result.scenario.synthetic else ""


def _fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}" if metric in ("accuracy", "macro_f1") else f"{value:.2f}"


def metrics_of(result: ScenarioResult) -> list[str]:
    return ["accuracy", "macro_f1"] if result.scenario.kind == "classification" else ["rmse", "mae"]


def table_rows(result: ScenarioResult, metric: str) -> list[list[str]]:
    """One row per trained model: its metric on each site's test rows and on all of them."""
    rows = []
    for name, model in result.models.items():
        if model.error:
            rows.append([name] + ["failed"] * len(result.test_sets))
            continue
        rows.append([name] + [_fmt(metric, model.scores.get(t, {}).get(metric)) for t in result.test_sets])
    return rows


def gap(result: ScenarioResult) -> float | None:
    """Federated minus central on the combined test rows (points of accuracy, or RMSE units)."""
    fed, central = result.models.get(FEDERATED), result.models.get(CENTRAL)
    if not fed or fed.error or not central:
        return None
    metric = result.metric
    difference = fed.scores[COMBINED][metric] - central.scores[COMBINED][metric]
    return 100 * difference if metric == "accuracy" else difference


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _site_table(result: ScenarioResult) -> list[str]:
    s = result.scenario
    header = ["site", "train rows", "test rows"] + (["train class counts"] if s.kind == "classification"
                                                     else ["train mean target"])
    rows = []
    for site, (train, test) in s.sites.items():
        if s.kind == "classification":
            counts = {str(c): int(sum(str(v) == str(c) for v in train.y.tolist())) for c in s.classes}
            extra = ", ".join(f"{c}: {n}" for c, n in counts.items())
        else:
            extra = f"{float(train.y.mean()):.1f}"
        rows.append([site, str(len(train)), str(len(test)), extra])
    lines = _markdown_table(header, rows)
    lines[1] = "|---|---:|---:|---|"
    return lines


def write_scenario(result: ScenarioResult, out: Path) -> list[str]:
    """Write the scenario's plots and CSV under ``out/<name>/``; return its Markdown section."""
    from werkbund.algorithms.plots import plot_confusion_matrix, plot_curves

    s, b = result.scenario, result.budget
    folder = out / s.name
    folder.mkdir(parents=True, exist_ok=True)
    prefix, mark = _prefix(result), (SYNTHETIC if s.synthetic else None)
    title = f"{s.title}" + (" — SYNTHETIC DATA" if s.synthetic and SYNTHETIC not in s.title else "")
    lines = [f"## {title}", ""]
    lines += [f"- {note}" for note in s.notes]
    lines += [f"- model: the platform's default MLP (64-32 ReLU, standardized inputs), trained the same way "
              f"everywhere: {b.rounds} rounds x {b.epochs} epochs (local and central: {b.rounds * b.epochs} epochs), "
              f"batch {b.batch_size}, Adam {b.learning_rate}, seed {b.seed}",
              "- federated: FedAvg weighted by sample count through a werkbund platform, federated standardization",
              ""]
    lines += _site_table(result) + [""]
    header = ["trained on \\ tested on"] + result.test_sets
    for metric in metrics_of(result):
        lines += [f"**{METRIC_TITLES[metric]}**" + (f" ({SYNTHETIC})" if s.synthetic else ""), ""]
        lines += _markdown_table(header, table_rows(result, metric)) + [""]
    difference = gap(result)
    if difference is not None:
        unit = "percentage points of accuracy" if result.metric == "accuracy" else "cycles of RMSE"
        lines += [f"Federated minus central on the combined test rows: **{difference:+.2f}** {unit}.", ""]
    for name, model in result.models.items():
        if model.error:
            lines += [f"- {name}: not available: {model.error}"]
    lines += ["- wall time: " + ", ".join(f"{n} {m.wall_s:.1f} s" for n, m in result.models.items()), ""]
    curves = {name: model.curve for name, model in result.models.items() if not model.error}
    curve_png = folder / f"{prefix}{s.name}_{result.metric}_per_round.png"
    plot_curves(curves, curve_png, f"{prefix.replace('_', ' ')}{s.name}: {result.metric} on all sites' test rows per round",
                f"test {result.metric}", watermark=mark)
    lines += [f"![{result.metric} per round]({curve_png.relative_to(out)})", ""]
    if s.kind == "classification":
        lines += _confusion_sections(result, folder, out, prefix, plot_confusion_matrix)
    _write_csv(result, folder / f"{prefix}{s.name}_results.csv")
    return lines


def _confusion_sections(result: ScenarioResult, folder: Path, out: Path, prefix: str, plot) -> list[str]:
    s = result.scenario
    labels = [str(c) for c in s.classes]
    lines = [f"### Confusion matrices{' (' + SYNTHETIC + ')' if s.synthetic else ''}", "",
             "Rows: true class, columns: predicted class.", ""]
    for name, model in result.models.items():
        if model.error:
            continue
        slug = name.replace(" ", "_").replace("(", "").replace(")", "")
        png = folder / f"{prefix}{s.name}_confusion_{slug}.png"
        plot(model.confusion[COMBINED], labels, png,
             f"{'SYNTHETIC ' if s.synthetic else ''}{s.name}: trained {name}\ntested on all sites")
        lines += [f"#### trained {name}", "", f"![confusion, {name}]({png.relative_to(out)})", ""]
        for test_set in result.test_sets:
            matrix = model.confusion[test_set]
            lines += [f"tested on {test_set} ({model.scores[test_set]['n']} rows):", ""]
            lines += _markdown_table(["true \\ predicted"] + labels,
                                     [[labels[i]] + [f"{v:,}" for v in row] for i, row in enumerate(matrix)])
            lines += [""]
    return lines


def _write_csv(result: ScenarioResult, path: Path) -> None:
    s = result.scenario
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data", "scenario", "trained_on", "tested_on", "metric", "value", "n"])
        for name, model in result.models.items():
            for test_set, metrics in model.scores.items():
                for metric in metrics_of(result):
                    writer.writerow([SYNTHETIC if s.synthetic else "real", s.name, name, test_set, metric,
                                     f"{metrics[metric]:.6f}", metrics["n"]])


def summary(result: ScenarioResult) -> dict:
    """The figures as plain JSON (for benchmarks and tests)."""
    return {"scenario": result.scenario.name, "synthetic": result.scenario.synthetic, "metric": result.metric,
            "test_sets": result.test_sets, "gap_federated_minus_central": gap(result),
            "budget": vars(result.budget),
            "models": {name: {"scores": m.scores, "confusion": m.confusion, "curve": m.curve,
                              "wall_s": round(m.wall_s, 2), "error": m.error} for name, m in result.models.items()}}


def write_report(results: list[ScenarioResult], out: Path, command: str, wall_s: float) -> Path:
    """``out/report.md`` with every scenario, ``out/results.json`` with the figures."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# werkbund use case: cross-company predictive maintenance", "",
             "Local training at each site alone, central training on the pooled data, and federated training "
             "through a werkbund platform, with the same model and budget; every model tested on every "
             "site's test rows and on all of them together (as in MUSKETEER D3.3, tables 1-12).", "",
             f"Command: `{command}`  ", f"Wall time: {wall_s:.0f} s", ""]
    if any(r.scenario.synthetic for r in results):
        lines += [f"**Sections marked {SYNTHETIC} use generated data, not measurements.**", ""]
    for result in results:
        lines += write_scenario(result, out)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps([summary(r) for r in results], indent=2))
    return path


def console_table(result: ScenarioResult):
    """The main table for the terminal (rich)."""
    from rich.table import Table

    metric = result.metric
    table = Table(title=f"{result.scenario.title}: {METRIC_TITLES[metric]}", title_justify="left")
    table.add_column("trained on \\ tested on")
    for test_set in result.test_sets:
        table.add_column(test_set, justify="right")
    for row in table_rows(result, metric):
        table.add_row(*row)
    return table
