"""Pictures of a task's results: accuracy per round, clusters in two dimensions.

Every ``plot_*`` function writes a PNG to ``path`` and returns the path as a string; with
``path=None`` it returns the matplotlib Figure instead (what a notebook shows). Figures are made
with ``matplotlib.figure.Figure``, not pyplot: no global state, no GUI backend, safe in threads.
"""
from __future__ import annotations

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure


def plot_accuracy(history: list[dict], path, title: str = "accuracy per round") -> str:
    """Combined and per-participant test accuracy (and the aggregator's held-out accuracy) per round."""
    rounds = [h["round"] + 1 for h in history]
    fig, ax = _subplots(figsize=(7, 4.2), dpi=110)
    if any("accuracy" in h for h in history):
        ax.plot(rounds, [h.get("accuracy") for h in history], "o-", lw=2.5, color="black", label="all participants",
                zorder=3)
    _participant_lines(ax, history, "accuracy", rounds)
    if any("aggregator" in h for h in history):
        ax.plot(rounds, [h.get("aggregator", {}).get("accuracy") for h in history], "s:", label="aggregator held-out")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


MAX_NAMED_PARTICIPANTS = 12  # more than this (a simulation) are drawn as thin unnamed lines


def _participant_lines(ax, history: list[dict], metric: str, rounds: list[int]) -> None:
    """One line per participant: named in the legend for a few, thin and grey for many."""
    names = sorted({p for h in history for p in h.get("participants", {})})
    many = len(names) > MAX_NAMED_PARTICIPANTS
    for i, name in enumerate(names):
        values = [h.get("participants", {}).get(name, {}).get(metric) for h in history]
        if many:
            ax.plot(rounds, values, "-", lw=0.5, color="grey", alpha=0.25,
                    label=f"each of {len(names)} participants" if i == 0 else None)
        else:
            ax.plot(rounds, values, ".--", label=name, alpha=0.8)


def _projection(reference: np.ndarray, features: list[str]):
    """A map to 2-D and the axis names: the features themselves if there are at most two, else the
    first two principal components of the z-scored ``reference`` rows."""
    d = reference.shape[1]
    if d <= 2:
        names = list(features) + [""] * (2 - d)
        return (lambda a: np.column_stack([a, np.zeros((len(a), 2 - d))]) if d < 2 else a), names
    center = reference.mean(axis=0)
    spread = reference.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    _, _, vt = np.linalg.svd((reference - center) / spread, full_matrices=False)
    axes = np.zeros((2, d))
    axes[:len(vt[:2])] = vt[:2]
    names = []
    for axis, component in enumerate(axes, start=1):
        top = np.argsort(-np.abs(component))[:2]
        names.append(f"PC{axis} (mostly {', '.join(features[i] for i in top)})")
    return (lambda a: ((np.asarray(a, dtype=np.float64) - center) / spread) @ axes.T), names


def plot_clusters(path, centroids, features: list[str], x=None, labels=None, sizes=None,
                  title: str = "clusters") -> str:
    """Rows coloured by cluster (if given) and the centroids as stars, projected to two dimensions."""
    centroids = np.asarray(centroids, dtype=np.float64)
    reference = np.asarray(x, dtype=np.float64) if x is not None and len(x) > 2 else centroids
    reference = reference[~np.isnan(reference).any(axis=1)]
    project, names = _projection(reference if len(reference) > 1 else centroids, list(features))
    colours = matplotlib.colormaps["tab10"]
    fig, ax = _subplots(figsize=(6.4, 5.2), dpi=110)
    if x is not None and len(x):
        points = project(np.asarray(x, dtype=np.float64))
        ax.scatter(points[:, 0], points[:, 1], s=9, alpha=0.55,
                   c=[colours(int(c) % 10) for c in labels] if labels is not None else "grey")
    centres = project(centroids)
    marker_sizes = 260 if sizes is None else 120 + 400 * np.asarray(sizes) / max(float(np.max(sizes)), 1.0)
    ax.scatter(centres[:, 0], centres[:, 1], marker="*", s=marker_sizes, edgecolors="black", linewidths=1.2,
               c=[colours(i % 10) for i in range(len(centroids))], label="centroids", zorder=3)
    for i, (cx, cy) in enumerate(centres):
        ax.annotate(str(i), (cx, cy), textcoords="offset points", xytext=(7, 7), fontsize=9, weight="bold")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_metric(history: list[dict], metric: str, path, title: str | None = None) -> str:
    """Any per-round metric (``rmse``, ``mae``, ``loss``, ``accuracy``): combined, per participant and
    the aggregator's held-out figure, per round."""
    rounds = [h["round"] + 1 for h in history]
    fig, ax = _subplots(figsize=(7, 4.2), dpi=110)
    if any(metric in h for h in history):
        ax.plot(rounds, [h.get(metric) for h in history], "o-", lw=2.5, color="black", label="all participants",
                zorder=3)
    _participant_lines(ax, history, metric, rounds)
    if any(metric in h.get("aggregator", {}) for h in history):
        ax.plot(rounds, [h.get("aggregator", {}).get(metric) for h in history], "s:", label="aggregator held-out")
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{metric} per round")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion_matrix(confusion, classes: list, path, title: str = "confusion matrix") -> str:
    """A confusion matrix (rows: true class, columns: predicted class) with the counts written in."""
    matrix = np.asarray(confusion, dtype=np.int64)
    labels = [str(c) for c in classes] if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
    size = max(4.0, 0.55 * len(matrix) + 2.5)
    fig, ax = _subplots(figsize=(size, size * 0.85), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(matrix)), labels, rotation=45 if max(map(len, labels), default=0) > 3 else 0)
    ax.set_yticks(range(len(matrix)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(curves: dict[str, list], path, title: str, ylabel: str, watermark: str | None = None) -> str:
    """Several models' metric per round on one axis (e.g. local at each site, central, federated);
    ``watermark`` is written large across the plot (SYNTHETIC data says so on every picture). A
    logarithmic axis where the values span more than a factor of 20 (an error that explodes)."""
    fig, ax = _subplots(figsize=(7.5, 4.4), dpi=110)
    styles = {"federated": ("o-", 2.5, "black"), "central (pooled data)": ("s--", 2.0, "tab:purple")}
    for name, values in curves.items():
        if not values:
            continue
        marker, width, color = styles.get(name, (".:", 1.4, None))
        ax.plot(range(1, len(values) + 1), values, marker, lw=width, color=color, label=name, alpha=0.9)
    ax.set_xlabel("round (local and central: the same number of epochs)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    values = np.asarray([v for vs in curves.values() for v in vs if v is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if watermark:
        ax.text(0.5, 0.5, watermark, transform=ax.transAxes, fontsize=40, color="grey", alpha=0.25,
                ha="center", va="center", rotation=20)
    return _save(fig, path)


def _subplots(figsize, dpi):
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots()


def _save(fig, path):
    """Lay out a figure and write it to ``path`` (returns the path as a string), or return the
    figure itself when ``path`` is None."""
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path)
    return str(path)
