"""The ``statistics`` algorithm: federated descriptive statistics as a task of its own.

Two exchanges, no row ever leaves a site:

1. ``stats``: every participant sends, per column it shares, the count of values, the count of
   missing ones (NaN), min, max, mean and M2 (sum of squared deviations from its own mean), and
   its class counts. The aggregator merges them exactly: counts add up, min and max of the
   extremes, mean and variance with the parallel-variance formula (``merge_moments``).
2. round 0 (the only round): the aggregator broadcasts histogram edges agreed from the merged
   min and max (``bins`` equal bins per column, default 10; the last bin includes the maximum)
   and every participant returns its counts per bin, which must add up to the count it reported
   in the first exchange.

A participant may hold back columns (``hold_back``; ``werkbund participate --hold-back a,b``); a
column held back by anyone is left out of the result entirely, so the report never mixes pooled
figures with a subset of the sites; holding back the target leaves the class counts out. The
result, a JSON report (its standard deviations are population deviations, ddof=0), is the task's
final model: ``werkbund model --task T --out report.json``. The aggregator and the participants
also write it as Markdown.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights
from werkbund.algorithms.data.dataset import DataError
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.model_files import write_local_result
from werkbund.algorithms.moments import merge_moments
from werkbund.algorithms.registry import Algorithm, Field

DEFAULT_BINS = 10


class StatisticsRefused(DataError):
    """A participant option that cannot be honoured (e.g. holding back a column the data lacks)."""


# ------------------------------------------------------------------------ local computation
def column_summary(values: np.ndarray) -> dict:
    """Count, missing, min, max, mean and M2 of one column (None where there are no values)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return {"count": 0, "missing": int(len(values)), "min": None, "max": None, "mean": None, "m2": 0.0}
    if not np.isfinite(present).all():
        raise ValueError("the data holds infinite values; statistics need finite numbers or NaN")
    mean = present.mean()
    return {"count": int(len(present)), "missing": int(len(values) - len(present)), "min": float(present.min()),
            "max": float(present.max()), "mean": float(mean), "m2": float(((present - mean) ** 2).sum())}


def histogram_edges(minimum: float, maximum: float, bins: int) -> np.ndarray:
    if minimum == maximum:  # one value: a bin of width 1 around it
        minimum, maximum = minimum - 0.5, maximum + 0.5
    return np.linspace(minimum, maximum, bins + 1)


def histogram_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (NaN left out; values outside the edges are not counted)."""
    values = np.asarray(values, dtype=np.float64)
    return np.histogram(values[~np.isnan(values)], bins=edges)[0].astype(np.int64)


# ----------------------------------------------------------------------------- aggregator
class StatisticsAggregator(RoundAggregator):
    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        # one histogram round is all this task needs, whatever the definition's default says
        self.definition = dict(self.definition, rounds=1)

    def setup(self):
        if not self.schema or not self.schema.get("features"):
            raise TaskFailure("the participants reported no data schema; statistics need their column names")
        self.kind = self.schema.get("kind")
        self.allowed = list(self.schema["features"])
        if self.kind == "regression" and self.schema.get("target"):
            self.allowed.append(self.schema["target"])
        self.bins = int(self.definition.get("bins") or DEFAULT_BINS)
        self.summaries: dict[str, dict] = {}
        collected = self.exchange("stats", expect="stats", number=-1, handler=self._take_summary)
        sites = [self.summaries[p] for p in collected.accepted]
        self.columns = [c for c in self.allowed if all(c in s["columns"] for s in sites)]
        self.withheld = [c for c in self.allowed if c not in self.columns]
        self.merged = {c: self._merge_column(c, sites) for c in self.columns}
        self.class_counts = self._merge_classes(sites)
        self.rows = sum(s["rows"] for s in sites)
        self.summary_sites = sorted(collected.accepted)
        self.hist_columns = [c for c in self.columns if self.merged[c]["count"] > 0]
        self.edges = np.array([histogram_edges(self.merged[c]["min"], self.merged[c]["max"], self.bins)
                               for c in self.hist_columns]).reshape(len(self.hist_columns), self.bins + 1)
        self.report: dict | None = None
        held = f", {len(self.withheld)} held back" if self.withheld else ""
        self.progress.message(f"statistics over {self.rows} rows from {', '.join(self.summary_sites)}: "
                              f"{len(self.columns)} columns{held}")

    def _take_summary(self, message) -> None:
        columns, rows = message.get("columns"), message.get("rows")
        if not isinstance(columns, list) or len(set(map(str, columns))) != len(columns):
            raise UpdateRejected("statistics: 'columns' must list distinct column names")
        unknown = [c for c in columns if c not in self.allowed]
        if unknown:
            raise UpdateRejected(f"statistics: columns {unknown[:5]} are not in the task's schema")
        if not _whole(rows):
            raise UpdateRejected("statistics: 'rows' must be a non-negative whole number")
        n = len(columns)
        fields = {name: message.get(name) for name in ("count", "missing", "min", "max", "mean", "m2")}
        for name, values in fields.items():
            if not isinstance(values, list) or len(values) != n:
                raise UpdateRejected(f"statistics: {name} must list {n} values")
        per_column = {}
        for i, column in enumerate(columns):
            entry = {name: values[i] for name, values in fields.items()}
            if not _whole(entry["count"]) or not _whole(entry["missing"]) or entry["count"] + entry["missing"] != rows:
                raise UpdateRejected(f"statistics: counts of {column!r} do not add up to {rows} rows")
            if entry["count"] and not _ordered(entry["min"], entry["mean"], entry["max"]):
                raise UpdateRejected(f"statistics: min, mean and max of {column!r} are not finite and in order")
            if not _finite(entry["m2"]) or entry["m2"] < 0:
                raise UpdateRejected(f"statistics: m2 of {column!r} must be a finite number, at least 0")
            per_column[column] = entry
        classes = message.get("class_counts")
        if classes is not None:
            known = {str(c) for c in self.schema.get("classes") or []}
            if (not isinstance(classes, dict) or not set(classes) <= known
                    or not all(_whole(v) for v in classes.values()) or sum(classes.values()) != rows):
                raise UpdateRejected("statistics: class_counts must give whole counts of the task's classes, "
                                     f"adding up to {rows}")
        self.summaries[message.sender] = {"columns": per_column, "rows": rows, "class_counts": classes}

    @staticmethod
    def _merge_column(column: str, sites: list[dict]) -> dict:
        entries = [s["columns"][column] for s in sites]
        count = sum(e["count"] for e in entries)
        result = {"count": count, "missing": sum(e["missing"] for e in entries)}
        present = [e for e in entries if e["count"]]
        if not present:
            return dict(result, min=None, max=None, mean=None, std=None, variance=None)
        moments = merge_moments([{"count": e["count"], "mean": [e["mean"]], "m2": [e["m2"]]} for e in present])
        return dict(result, min=min(e["min"] for e in present), max=max(e["max"] for e in present),
                    mean=float(moments["mean"][0]), std=float(moments["std"][0]),
                    variance=float(moments["variance"][0]))

    def _merge_classes(self, sites: list[dict]) -> dict | None:
        if self.kind != "classification" or any(s["class_counts"] is None for s in sites):
            return None
        classes = [str(c) for c in self.schema.get("classes") or []]
        return {c: sum(int(s["class_counts"].get(c, 0)) for s in sites) for c in classes}

    def global_payload(self):
        if self.report is not None:
            return json.dumps(self.report, indent=2).encode("utf-8"), {"phase": "report"}
        return encode_weights([self.edges]), {"phase": "histogram", "columns": self.hist_columns}

    def begin_round(self, number):
        self._histograms = np.zeros((len(self.hist_columns), self.bins), dtype=np.int64)
        self._histogram_sites = []

    def accept_update(self, message):
        summary = self.summaries.get(message.sender)
        if summary is None:
            raise UpdateRejected("histogram counts without the summary of the first exchange")
        (counts,) = decode_weights(message.payload, [((len(self.hist_columns), self.bins), "int64")])
        if (counts < 0).any():
            raise UpdateRejected("histogram counts cannot be negative")
        for i, column in enumerate(self.hist_columns):
            expected = summary["columns"][column]["count"] if column in summary["columns"] else 0
            if int(counts[i].sum()) != expected:
                raise UpdateRejected(f"the histogram of {column!r} counts {int(counts[i].sum())} values, "
                                     f"the summary said {expected}")
        self._histograms += counts
        self._histogram_sites.append(message.sender)

    def aggregate(self, number):
        columns = {}
        for column in self.columns:
            columns[column] = dict(self.merged[column])
            if column in self.hist_columns:
                i = self.hist_columns.index(column)
                columns[column]["histogram"] = {"edges": self.edges[i].tolist(),
                                                "counts": self._histograms[i].tolist()}
        self.report = {
            "task": self.channel.task, "rows": self.rows, "participants": self.summary_sites,
            "histogram_participants": sorted(self._histogram_sites), "bins": self.bins,
            "kind": self.kind, "target": self.schema.get("target"), "columns": columns,
            "withheld": self.withheld, "class_counts": self.class_counts,
            "note": "std and variance are population figures (ddof=0) over the pooled non-missing values",
        }

    def final_model(self):
        payload, _ = self.global_payload()
        meta = {"algorithm": "statistics", "format": "json", "features": self.columns, "withheld": self.withheld,
                "target": self.schema.get("target"), "classes": self.schema.get("classes"), "rows": self.rows}
        return payload, meta

    def write_results(self, directory) -> list[str]:
        directory = Path(directory)
        (directory / "statistics.json").write_text(json.dumps(self.report, indent=2))
        (directory / "statistics.md").write_text(report_markdown(self.report))
        return [str(directory / "statistics.json"), str(directory / "statistics.md")]


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ordered(low, middle, high) -> bool:
    if not all(_finite(v) for v in (low, middle, high)):
        return False
    slack = 1e-9 * max(abs(low), abs(high), 1.0)
    return low <= high and low - slack <= middle <= high + slack


# ---------------------------------------------------------------------------- participant
class StatisticsParticipant(RoundParticipant):
    def __init__(self, channel, train, test, *args, hold_back=None, **kwargs):
        super().__init__(channel, train, test, *args, **kwargs)
        self.hold_back = [c.strip() for c in (hold_back or []) if c.strip()]
        known = list(train.features) + [train.target]
        unknown = [c for c in self.hold_back if c not in known]
        if unknown:
            raise StatisticsRefused(f"cannot hold back {', '.join(unknown)}: the data has no such column "
                                    f"(its columns: {', '.join(known)})")
        # statistics describe all local rows, the test split included
        self.x = np.concatenate([train.x, test.x]).astype(np.float64)
        self.y = np.concatenate([train.y, test.y])
        self.columns = [f for f in train.features if f not in self.hold_back]
        self.values = {f: self.x[:, i] for i, f in enumerate(train.features) if f not in self.hold_back}
        if train.kind == "regression" and train.target not in self.hold_back:
            self.columns.append(train.target)
            self.values[train.target] = self.y.astype(np.float64)

    def moments(self):
        summaries = [column_summary(self.values[c]) for c in self.columns]
        header = {"columns": self.columns, "rows": int(len(self.x))}
        for name in ("count", "missing", "min", "max", "mean", "m2"):
            header[name] = [s[name] for s in summaries]
        header["class_counts"] = None
        if self.train_data.kind == "classification" and self.train_data.target not in self.hold_back:
            labels, counts = np.unique(np.asarray(self.y).astype(str), return_counts=True)
            header["class_counts"] = {str(label): int(n) for label, n in zip(labels, counts)}
        if self.hold_back:
            self.progress.message(f"holding back {', '.join(self.hold_back)}")
        return header

    def configure(self, message):
        pass

    def evaluate_global(self, message):
        return {}

    def train(self, message):
        columns = message.get("columns")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError("the aggregator's histogram request has no list of column names")
        missing = sorted(set(columns) - set(self.values))
        if missing:
            raise ValueError(f"the aggregator asks for histograms of columns this site did not share: {missing}")
        (edges,) = self.global_weights(message)
        if edges.ndim != 2 or edges.shape[0] != len(columns) or not np.isfinite(edges).all():
            raise ValueError("the aggregator's histogram edges do not fit its column list")
        counts = np.array([histogram_counts(self.values[c], e) for c, e in zip(columns, edges)],
                          dtype=np.int64).reshape(len(columns), edges.shape[1] - 1)
        self.progress.message(f"histograms of {len(columns)} columns over {edges.shape[1] - 1} bins sent")
        return [counts], {"n_samples": int(len(self.x))}

    def keep_final(self, message):
        report = json.loads(message.payload.decode("utf-8"))
        result = {"eval": {}, "report": report}
        if self.out_model:
            meta = {"task": self.channel.task, "algorithm": "statistics", "held_back": self.hold_back}
            result["model_path"] = write_local_result(self.out_model, message.payload, meta)
            Path(f"{self.out_model}.md").write_text(report_markdown(report))
        return result


def _column_names(value, definition) -> None:
    if not all(isinstance(c, str) and c.strip() for c in value):
        raise ValueError("must list column names")


# ------------------------------------------------------------------------------- Markdown
def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def report_markdown(report: dict) -> str:
    lines = [f"# Federated statistics of task {report.get('task')}", "",
             f"{report['rows']} rows from {len(report['participants'])} participants "
             f"({', '.join(report['participants'])}).", ""]
    if report.get("withheld"):
        lines += [f"Held back by at least one participant, so not reported: {', '.join(report['withheld'])}.", ""]
    lines += ["| column | count | missing | min | max | mean | std |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in report["columns"].items():
        lines.append(f"| {name} | {c['count']} | {c['missing']} | {_number(c['min'])} | {_number(c['max'])} | "
                     f"{_number(c['mean'])} | {_number(c['std'])} |")
    lines += ["", f"Standard deviations are population figures (ddof=0). Histograms: {report['bins']} equal bins "
              "between the pooled min and max.", ""]
    for name, c in report["columns"].items():
        if "histogram" in c:
            edges, counts = c["histogram"]["edges"], c["histogram"]["counts"]
            bins = ", ".join(f"[{_number(a)}, {_number(b)}{']' if i == len(counts) - 1 else ')'}: {n}"
                             for i, (a, b, n) in enumerate(zip(edges, edges[1:], counts)))
            lines.append(f"- **{name}**: {bins}")
    if report.get("class_counts"):
        lines += ["", f"## Classes of {report.get('target')}", "", "| class | rows |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["class_counts"].items()]
    return "\n".join(lines) + "\n"


ALGORITHM = Algorithm(
    name="statistics",
    aggregator=StatisticsAggregator,
    participant=StatisticsParticipant,
    description="federated statistics: count, missing, min, max, mean, std, histograms, class counts",
    fields=(Field("bins", int, DEFAULT_BINS, "histogram bins per column", minimum=1, maximum=1000),),
    privacy_modes=frozenset({1}),  # its updates are summaries and histogram counts, not weights to average
    model_suffix=".json",
    participant_options=(Field("hold_back", list, None, "columns to keep to yourself; a column held back by "
                               "anyone is left out of the report", check=_column_names),),
    missing_values="keep",  # the report counts missing values per column
)
