"""A task's results as objects a notebook shows: round tables, figures, the final model.

:class:`Result` is what ``task.aggregate()`` and ``task.participate()`` return (and what
``task.results()`` gives for a task that ran elsewhere). Its tables come from the round records
the aggregator stored on the platform, so the creator and every participant see the same rounds.
Rounds are numbered from 1 in tables and figures, as the CLI prints them.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

METRICS = ("accuracy", "loss", "rmse", "mae", "n_test")


def rounds_frame(records: list[dict]) -> "pandas.DataFrame":
    """One row per round: who reported, who was rejected and why, who did not answer, the
    participants' combined test metrics, the aggregator's held-out metrics, privacy spent, time."""
    import pandas as pd

    rows = []
    for record in records:
        m = record.get("metrics") or {}
        row = {"round": record["round"] + 1, "n_reported": len(record.get("reported") or []),
               "reported": ", ".join(record.get("reported") or []),
               "rejected": "; ".join(f"{p}: {why}" for p, why in sorted((record.get("rejected") or {}).items())),
               "missing": ", ".join(record.get("missing") or [])}
        row.update({k: m.get(k) for k in METRICS if isinstance(m.get(k), (int, float))})
        row.update({f"aggregator_{k}": v for k, v in (m.get("aggregator") or {}).items()
                    if k in METRICS and isinstance(v, (int, float))})
        dp = m.get("dp") or {}
        if isinstance(dp.get("epsilon"), (int, float)):
            row["epsilon"] = dp["epsilon"]
        if isinstance(m.get("duration_s"), (int, float)):
            row["duration_s"] = m["duration_s"]
        if m.get("stopped"):
            row["stopped"] = m["stopped"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame(
        columns=["n_reported", "reported", "rejected", "missing"]).rename_axis("round")


def participants_frame(records: list[dict]) -> "pandas.DataFrame":
    """One row per round and participant: reported, rejected (with the reason) or missing, its
    training loss and sample count, and its test metrics of that round's aggregate."""
    import pandas as pd

    rows = []
    for record in records:
        m = record.get("metrics") or {}
        evals, train = m.get("participants") or {}, m.get("train") or {}
        rejected = record.get("rejected") or {}
        names = sorted(set(record.get("reported") or []) | set(rejected) | set(record.get("missing") or [])
                       | set(evals))
        for name in names:
            status = ("rejected" if name in rejected else "missing" if name in (record.get("missing") or [])
                      else "reported")
            row = {"round": record["round"] + 1, "participant": name, "status": status,
                   "reason": rejected.get(name, "")}
            t = train.get(name) or {}
            row["train_loss"], row["n_train"] = t.get("loss"), t.get("n_train")
            figures = evals.get(name) or {}
            row.update({k: figures.get(k) for k in METRICS if isinstance(figures.get(k), (int, float))})
            rows.append(row)
    columns = ["round", "participant", "status", "reason", "train_loss", "n_train"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def engine_history(records: list[dict]) -> list[dict]:
    """The round records in the form the plotting functions take (the engine's history)."""
    return [{"round": r["round"], **(r.get("metrics") or {})} for r in records]


def load_model_bytes(data: bytes, meta: dict | None = None) -> Any:
    """The final model from its stored bytes: a Keras model (``.keras``, loaded in safe mode: no
    Lambda layers, no pickles), a dict of NumPy arrays (safetensors) or a dict (a JSON report)."""
    meta = meta or {}
    if data[:2] == b"PK":  # a .keras file is a zip archive
        import keras

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            with open(path, "wb") as handle:
                handle.write(data)
            return keras.saving.load_model(path, safe_mode=True, compile=False)
    if data[:1] in (b"{", b"["):
        return json.loads(data)
    from safetensors.numpy import load

    return load(bytes(data))


class FinalModel:
    """The final model of a COMPLETE task, as stored on the platform.

    - ``model``: loaded (a ``keras.Model``; for k-means and the linear models a dict of NumPy
      arrays; for ``statistics`` the report as a dict);
    - ``meta``: what the aggregator stored with it (classes, features, the per-round history, ...);
    - ``sha256`` and ``size`` of the stored bytes; ``save(path)`` writes them;
    - ``ledger``: the ``task_finished`` entry that names this model's sha256 on the task's ledger and
      whether it matches (``ledger_matches``), once ``check_ledger()`` ran (``task.model()`` runs it).
    """

    def __init__(self, task: str, data: bytes, info: dict):
        self.task = task
        self.bytes = bytes(data)
        self.info = info
        self.meta: dict = info.get("meta") or {}
        self.sha256 = hashlib.sha256(self.bytes).hexdigest()
        self.size = len(self.bytes)
        self.ledger: dict | None = None
        self.ledger_matches: bool | None = None
        self._model = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model_bytes(self.bytes, self.meta)
        return self._model

    @property
    def classes(self) -> list | None:
        return self.meta.get("classes")

    def save(self, path: str | Path) -> Path:
        """Write the model bytes to ``path`` and its metadata to ``path`` + ``.json``."""
        path = Path(path).expanduser()
        path.write_bytes(self.bytes)
        Path(f"{path}.json").write_text(json.dumps(self.meta, indent=2, default=str))
        return path

    def check_ledger(self, bundle: dict, report=None) -> bool:
        """Find the ``task_finished`` entry in a ledger bundle and compare its sha256 with this model's."""
        finished = [item["entry"] for item in bundle.get("entries", [])
                    if (item.get("entry") or {}).get("type") == "task_finished"]
        if not finished:
            self.ledger, self.ledger_matches = None, False
            return False
        entry = finished[-1]
        cp = bundle["latest"]["checkpoint"]
        self.ledger = {"seq": entry["seq"], "model_sha256": entry["payload"].get("model_sha256"),
                       "timestamp": entry.get("timestamp"), "checkpoint_size": cp["size"],
                       "checkpoint_root": cp["root"], "included": entry["seq"] < cp["size"],
                       "log_verifies": None if report is None else bool(report.ok)}
        self.ledger_matches = (self.ledger["model_sha256"] == self.sha256 and self.ledger["included"]
                               and (report is None or bool(report.ok)))
        return self.ledger_matches

    def __repr__(self) -> str:
        proof = ("" if self.ledger_matches is None else
                 ", matches the ledger" if self.ledger_matches else ", DOES NOT match the ledger")
        return f"<werkbund.FinalModel of {self.task!r}: {self.size} bytes, sha256 {self.sha256[:16]}...{proof}>"


class Result:
    """What a finished run (or a finished task) gives a notebook.

    - ``history``: a DataFrame, one row per round (see :func:`rounds_frame`);
    - ``participants``: a DataFrame, one row per round and participant (see :func:`participants_frame`);
    - ``plot(metric=None)``: a matplotlib Figure of a metric per round (accuracy, or RMSE for a
      regression; ``"loss"``, ``"mae"`` ...), combined, per participant and the aggregator's held-out;
    - ``plot_confusion()``: the last round's combined confusion matrix (classification);
    - ``plot_clusters(data=None)``: for k-means, the global clusters over your own rows;
    - ``final``: the :class:`FinalModel` (loaded on first use), ``model`` its loaded model;
    - ``evaluation``: for a participant, the final model's figures on its own test rows;
    - ``model_path``: for a participant, where its copy of the final model was written;
    - ``save(folder)``: ``history.csv``, ``participants.csv`` and the figures as PNG files.
    """

    def __init__(self, task, role: str, outcome: dict | None = None, records: list[dict] | None = None,
                 local_data=None, model_path: str | None = None):
        self._task = task
        self.task: str = task.name
        self.role = role
        self.outcome = outcome or {}
        self._records = records
        self.local_data = local_data  # a participant's own Dataset (for plot_clusters)
        self.model_path = model_path  # where a participant's copy of the final model was written
        self._final: FinalModel | None = None

    @property
    def records(self) -> list[dict]:
        """The round records on the platform (asked again until the task has ended)."""
        if self._records is not None:
            return self._records
        records = self._task.rounds()
        if self._task.info()["status"] in ("COMPLETE", "FAILED"):
            self._records = records
        return records

    @property
    def history(self) -> "pandas.DataFrame":
        return rounds_frame(self.records)

    @property
    def participants(self) -> "pandas.DataFrame":
        return participants_frame(self.records)

    @property
    def evaluation(self) -> dict:
        """A participant's figures of the final model on its own test rows ({} for the aggregator)."""
        return dict(self.outcome.get("eval") or {})

    @property
    def final(self) -> FinalModel:
        if self._final is None:
            self._final = self._task.model()
        return self._final

    @property
    def model(self) -> Any:
        return self.final.model

    @property
    def classes(self) -> list | None:
        return (self._task.info().get("schema") or {}).get("classes") or self.final.classes

    def _main_metric(self) -> str:
        history = engine_history(self.records)
        for metric in ("accuracy", "rmse", "loss"):
            if any(isinstance(h.get(metric), (int, float)) for h in history):
                return metric
        raise ValueError(f"task {self.task!r} has no per-round metric to plot (no round was recorded)")

    def plot(self, metric: str | None = None, path: str | Path | None = None) -> "Figure":
        """A metric per round (default: accuracy, or RMSE for a regression) as a Figure (or a PNG at ``path``)."""
        from werkbund.algorithms.plots import plot_accuracy, plot_metric

        metric = metric or self._main_metric()
        history = engine_history(self.records)
        if metric == "accuracy":
            return plot_accuracy(history, path, f"{self.task}: test accuracy per round")
        label = metric.upper() if metric in ("rmse", "mae") else metric
        return plot_metric(history, metric, path, f"{self.task}: test {label} per round")

    def plot_confusion(self, path: str | Path | None = None) -> "Figure":
        """The last round's combined confusion matrix (all participants' test rows)."""
        from werkbund.algorithms.plots import plot_confusion_matrix

        with_matrix = [r for r in self.records if (r.get("metrics") or {}).get("confusion")]
        if not with_matrix:
            raise ValueError(f"task {self.task!r} recorded no confusion matrix (not a classification?)")
        last = with_matrix[-1]
        return plot_confusion_matrix(last["metrics"]["confusion"], self.classes or [], path,
                                     f"{self.task}: confusion matrix, all participants, round {last['round'] + 1}")

    def plot_clusters(self, data=None, path: str | Path | None = None) -> "Figure":
        """k-means: the global centroids (stars, sized by cluster size) over rows coloured by their
        nearest centroid: ``data`` (a Dataset or an array of rows), else a participant's own rows."""
        import numpy as np

        from werkbund.algorithms.builtin.kmeans import assign
        from werkbund.algorithms.plots import plot_clusters
        from werkbund.algorithms.standardization import standardized

        arrays = self.final.model
        if not isinstance(arrays, dict) or "centroids" not in arrays:
            raise ValueError(f"task {self.task!r} is not a k-means task")
        data = data if data is not None else self.local_data
        x = labels = None
        if data is not None:
            x = np.asarray(getattr(data, "x", data), dtype=np.float64)
            labels, _ = assign(standardized(x, arrays["mean"], arrays["scale"]), arrays["centroids_standardized"])
        features = self.final.meta.get("features") or [f"x{i}" for i in range(arrays["centroids"].shape[1])]
        return plot_clusters(path, arrays["centroids"], features, x=x, labels=labels, sizes=arrays.get("sizes"),
                             title=f"{self.task}: {len(arrays['centroids'])} federated clusters")

    def save(self, folder: str | Path) -> list[str]:
        """Write the tables and the figures into ``folder``; returns the paths written.

        ``history.json`` (the round records' metrics, as the engine keeps them), ``history.csv``,
        ``participants.csv``, a PNG per metric recorded (``accuracy``, ``rmse``, ``mae``) and
        ``confusion.png`` for a classification.
        """
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        history = engine_history(self.records)
        (folder / "history.json").write_text(json.dumps(history, indent=2))
        self.history.to_csv(folder / "history.csv")
        self.participants.to_csv(folder / "participants.csv", index=False)
        written = [str(folder / name) for name in ("history.json", "history.csv", "participants.csv")]
        for metric in ("accuracy", "rmse", "mae"):
            if any(metric in h for h in history):
                written.append(self.plot(metric, path=folder / f"{metric}.png"))
        if history and history[-1].get("confusion"):
            written.append(self.plot_confusion(path=folder / "confusion.png"))
        return written

    def __repr__(self) -> str:
        from werkbund.algorithms.metrics import headline

        last = (self.records[-1].get("metrics") or {}) if self.records else {}
        figures = headline(last)
        return (f"<werkbund.Result of {self.task!r} ({self.role}): {len(self.records)} rounds"
                + (f", last round {figures}" if figures else "") + ">")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.history.to_html(max_rows=30)
