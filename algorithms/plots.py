"""Pictures of a task's results: accuracy per round."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(history: list[dict], path, title: str = "accuracy per round") -> str:
    """Combined and per-participant test accuracy (and the aggregator's held-out accuracy) per round."""
    rounds = [h["round"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if any("accuracy" in h for h in history):
        ax.plot(rounds, [h.get("accuracy") for h in history], "o-", lw=2.5, color="black", label="all participants")
    names = sorted({p for h in history for p in h.get("participants", {})})
    for name in names:
        ax.plot(rounds, [h.get("participants", {}).get(name, {}).get("accuracy") for h in history], ".--",
                label=name, alpha=0.8)
    if any("aggregator" in h for h in history):
        ax.plot(rounds, [h.get("aggregator", {}).get("accuracy") for h in history], "s:", label="aggregator held-out")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
