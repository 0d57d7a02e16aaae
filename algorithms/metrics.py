"""Evaluation metrics that can be combined across participants without sharing predictions.

Each participant reports sufficient statistics next to its own figures: a classifier its
confusion matrix (rows: true class, columns: predicted class, in the task's class order), a
regressor its row count, sum of squared errors and sum of absolute errors. The aggregator sums
these over participants (:func:`combine`) and gets exactly the figures it would have computed on
the pooled test sets: accuracy, per-class precision and recall, RMSE and MAE.

Precision or recall of a class that was never predicted (or never occurs) is 0.0, as
scikit-learn reports it with ``zero_division=0``.
"""
from __future__ import annotations

import math

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
KINDS = (CLASSIFICATION, REGRESSION)
# for early stopping and plots: whether a larger value of a metric is better
HIGHER_IS_BETTER = {"accuracy": True, "loss": False, "rmse": False, "mae": False}


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) over class indices ``0..n_classes-1``."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    for name, values in (("true", y_true), ("predicted", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} class indices must lie in 0..{n_classes - 1}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_report(confusion) -> dict:
    """Accuracy, per-class precision and recall and the matrix itself, from a confusion matrix."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square, not of shape {matrix.shape}")
    total = int(matrix.sum())
    hits = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    return {"accuracy": float(hits.sum() / total) if total else 0.0,
            "precision": [float(v) for v in precision], "recall": [float(v) for v in recall],
            "confusion": matrix.tolist(), "n_test": total}


def classification_metrics(y_true, y_pred, n_classes: int) -> dict:
    return classification_report(confusion_matrix(y_true, y_pred, n_classes))


def regression_metrics(y_true, y_pred) -> dict:
    """RMSE and MAE, with the sums that let them be pooled (``sse``, ``sae``, ``n_test``)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} targets but {y_pred.size} predictions")
    error = y_pred - y_true
    return regression_report(int(y_true.size), float(np.sum(error * error)), float(np.sum(np.abs(error))))


def regression_report(n: int, sse: float, sae: float) -> dict:
    if n <= 0:
        return {"n_test": 0}
    return {"rmse": math.sqrt(sse / n), "mae": sae / n, "sse": sse, "sae": sae, "n_test": n}


def combine(evals: dict[str, dict]) -> dict:
    """The participants' test metrics pooled: summed confusion matrices or error sums, and the
    test-size weighted mean loss. Participants that reported nothing usable are left out."""
    usable = {p: e for p, e in evals.items() if isinstance(e, dict) and _count(e) > 0}
    total = sum(_count(e) for e in usable.values())
    if not total:
        return {}
    combined: dict = {}
    if all(isinstance(e.get("loss"), (int, float)) for e in usable.values()):
        combined["loss"] = sum(float(e["loss"]) * _count(e) for e in usable.values()) / total
    matrices = [_confusion_of(e) for e in usable.values()]
    if all(m is not None for m in matrices) and len({m.shape for m in matrices}) == 1:
        combined.update(classification_report(sum(matrices)))
    elif all(_error_sum(e.get("sse")) and _error_sum(e.get("sae")) for e in usable.values()):
        combined.update(regression_report(total, sum(float(e["sse"]) for e in usable.values()),
                                          sum(float(e["sae"]) for e in usable.values())))
    elif all(isinstance(e.get("accuracy"), (int, float)) for e in usable.values()):
        combined["accuracy"] = sum(float(e["accuracy"]) * _count(e) for e in usable.values()) / total
    combined["n_test"] = total
    return combined


def _confusion_of(evaluation: dict) -> np.ndarray | None:
    """A participant's confusion matrix if it is square, of non-negative counts summing to its n_test."""
    try:
        matrix = np.asarray(evaluation.get("confusion"), dtype=np.int64)
    except (ValueError, TypeError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or (matrix < 0).any():
        return None
    return matrix if int(matrix.sum()) == _count(evaluation) else None


def _error_sum(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _count(evaluation: dict) -> int:
    n = evaluation.get("n_test", evaluation.get("n"))
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def headline(metrics: dict) -> str:
    """A short text of the main figures: accuracy or RMSE/MAE, and the loss."""
    parts = [f"{k} {metrics[k]:.4f}" for k in ("accuracy", "rmse", "mae", "loss")
             if isinstance(metrics.get(k), (int, float))]
    return ", ".join(parts)


def describe_rounds(rounds: list[dict], classes: list | None = None) -> list[str]:
    """Lines for a terminal: each round record's combined, per-participant and held-out figures, an
    early stop, and the last round's combined confusion matrix with per-class precision and recall."""
    lines = []
    for r in rounds:
        m = r.get("metrics") or {}
        lines.append(f"round {r['round'] + 1}: {len(r.get('reported') or [])} updates"
                     + (f", all participants: {headline(m)}" if headline(m) else "")
                     + (f", rejected {r['rejected']}" if r.get("rejected") else "")
                     + (f", no answer from {', '.join(r['missing'])}" if r.get("missing") else ""))
        for name, figures in sorted((m.get("participants") or {}).items()):
            if isinstance(figures, dict) and headline(figures):
                lines.append(f"    {name}: {headline(figures)}")
        if headline(m.get("aggregator") or {}):
            lines.append(f"    aggregator held-out: {headline(m['aggregator'])}")
        if m.get("stopped"):
            lines.append(f"    {m['stopped']}")
    last = (rounds[-1].get("metrics") or {}) if rounds else {}
    matrix = last.get("confusion")
    if matrix:
        names = [str(c) for c in (classes if classes and len(classes) == len(matrix) else range(len(matrix)))]
        width = max(7, *(len(n) + 1 for n in names), *(len(str(v)) + 1 for row in matrix for v in row))
        label = max(9, *(len(n) for n in names))
        lines.append("confusion matrix of the last round, all participants (rows: true, columns: predicted)")
        lines.append(" " * label + "".join(f"{n:>{width}}" for n in names))
        lines.extend(f"{n:>{label}}" + "".join(f"{v:>{width}}" for v in row) for n, row in zip(names, matrix))
        for key in ("precision", "recall"):
            lines.append(f"{key:>{label}}" + "".join(f"{v:>{width}.3f}" for v in last.get(key, [])))
    return lines
