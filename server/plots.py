"""Accuracy and loss per round, as a PNG next to summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(summary: dict[str, Any], path: Path) -> None:
    rounds = [r["round"] for r in summary["per_round"]]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (
        ("central_accuracy", "held-out (central)", "-o"),
        ("federated_accuracy", "federated (local validation)", "--s"),
    ):
        values = [r.get(key) for r in summary["per_round"]]
        if any(v is not None for v in values):
            ax_acc.plot(rounds, values, style, label=label)
    baseline = summary.get("centralized_baseline", {}).get("accuracy")
    if baseline is not None:
        ax_acc.axhline(baseline, color="grey", linestyle=":", label="centralized baseline")
    for key, label, style in (
        ("central_loss", "held-out (central)", "-o"),
        ("federated_loss", "federated (local validation)", "--s"),
        ("train_loss", "training", ":^"),
    ):
        values = [r.get(key) for r in summary["per_round"]]
        if any(v is not None for v in values):
            ax_loss.plot(rounds, values, style, label=label)
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an encrypted job without evaluation has none
            ax.legend()
    # A simulation names its split; deployed sites hold their own rows (no partition).
    split = f"{summary['partition']}, " if summary.get("partition") else ""
    fig.suptitle(
        f"{summary['task']}: {summary['institutions']} institutions, {split}{summary['strategy']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
