"""The figures of report.html, drawn with matplotlib and returned as PNG bytes (the page
embeds them as data: URIs, so it needs no network and no chart library)."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from aidmp.errors import DeclineCode  # noqa: E402

PRIVACY_CODES = (DeclineCode.BUDGET_EXHAUSTED, DeclineCode.PRIVACY_POLICY)


def png(fig: Figure, dpi: int = 80) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


# --- one run ------------------------------------------------------------------------------


def epsilon_per_round(per_round: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """ε each institution had spent by the end of each round (training and evaluation)."""
    names = sorted(
        {n for rec in per_round for key in ("privacy", "metrics_privacy") for n in rec.get(key, {})}
    )
    series: dict[str, list[float | None]] = {name: [] for name in names}
    last: dict[str, float | None] = dict.fromkeys(names)
    for rec in per_round:
        for key in ("privacy", "metrics_privacy"):  # evaluation is charged after training
            for name, spend in rec.get(key, {}).items():
                last[name] = spend.get("epsilon-spent")
        for name in names:
            series[name].append(last[name])
    return series


def outcomes_per_round(per_round: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per round: institutions that trained, declined over privacy or governance, failed."""
    counts: dict[str, list[int]] = {
        "trained": [], "declined: privacy": [], "declined: governance": [], "other failure": []
    }  # fmt: skip
    for rec in per_round:
        failures = [f.get("code") for f in rec.get("train_failures", [])]
        counts["trained"].append(int(rec.get("train_replies") or 0))
        counts["declined: privacy"].append(sum(c in PRIVACY_CODES for c in failures))
        counts["declined: governance"].append(sum(c == DeclineCode.GOVERNANCE for c in failures))
        counts["other failure"].append(
            sum(c not in (*PRIVACY_CODES, DeclineCode.GOVERNANCE) for c in failures)
        )
    return counts


def run_figure(summary: dict[str, Any]) -> bytes:
    """Four panels: accuracy and loss, ε per institution, round outcomes, HE bytes."""
    per_round = summary["per_round"]
    rounds = [rec["round"] for rec in per_round]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax_acc, ax_eps, ax_out, ax_he = axes.flat

    # The held-out accuracy when there is one. Federated figures that nodes under DP sent
    # noised can lie far outside [0, 1] and would flatten it; they are drawn only when
    # they are all there is (HE runs), with their noise std as error bars.
    central = [rec.get("central_accuracy") for rec in per_round]
    if any(v is not None for v in central):
        ax_acc.plot(rounds, _nan(central), "-o", label="accuracy (held-out)")
    else:
        federated = [rec.get("federated_accuracy") for rec in per_round]
        spread = [rec.get("federated_accuracy_std") or 0.0 for rec in per_round]
        ax_acc.errorbar(
            rounds, _nan(federated), yerr=spread, fmt="--s", capsize=3,
            label="accuracy (federated" + (", noised under DP)" if any(spread) else ")"),
        )  # fmt: skip
    baseline = summary.get("centralized_baseline", {}).get("accuracy")
    if baseline is not None:
        ax_acc.axhline(baseline, color="grey", linestyle=":", label="centralized baseline")
    ax_loss = ax_acc.twinx()
    losses = [rec.get("loss") for rec in per_round]
    if any(v is not None for v in losses):
        ax_loss.plot(rounds, _nan(losses), color="tab:red", alpha=0.6, marker="x", label="loss")
    ax_loss.set_ylabel("loss", color="tab:red")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy and loss per round")
    handles = ax_acc.get_legend_handles_labels()
    extra = ax_loss.get_legend_handles_labels()
    ax_acc.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8)

    series = epsilon_per_round(per_round)
    for name, values in series.items():
        ax_eps.plot(rounds, _nan(values), marker=".", label=name)
    budget = summary.get("privacy", {}).get("epsilon_budget")
    if budget is not None:
        ax_eps.axhline(budget, color="black", linestyle="--", label=f"budget ε={budget:g}")
    ax_eps.set(xlabel="round", ylabel="ε spent", title="ε per institution")
    if series:
        ax_eps.legend(fontsize=7, ncol=2)
    else:
        ax_eps.text(0.5, 0.5, "no DP", ha="center", va="center", transform=ax_eps.transAxes)

    bottom: list[int] = [0] * len(rounds)
    colours = ("tab:green", "tab:orange", "tab:purple", "tab:red")
    for (label, counts), colour in zip(outcomes_per_round(per_round).items(), colours, strict=True):
        ax_out.bar(rounds, counts, bottom=bottom, label=label, color=colour)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax_out.set(xlabel="round", ylabel="institutions", title="Declines and governance")
    ax_out.legend(fontsize=7)

    received = [rec.get("he_bytes_received") for rec in per_round]
    broadcast = [rec.get("he_bytes_broadcast") for rec in per_round]
    if any(received) or any(broadcast):
        ax_he.plot(rounds, [(v or 0) / 1e6 for v in received], "-o", label="received (updates)")
        ax_he.plot(rounds, [(v or 0) / 1e6 for v in broadcast], "--s", label="broadcast (model)")
        ax_he.legend(fontsize=8)
    else:
        ax_he.text(0.5, 0.5, "HE off", ha="center", va="center", transform=ax_he.transAxes)
    ax_he.set(xlabel="round", ylabel="MB", title="HE ciphertext bytes")
    for ax in (ax_acc, ax_eps, ax_out, ax_he):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return png(fig)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# --- a sweep ------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def privacy_utility_figure(
    curves: dict[str, dict[float, list[float]]], baseline: float | None
) -> bytes:
    """ε (log scale; ∞ = no DP at the right) against final accuracy, one line per curve,
    the mean over seeds with its standard deviation as error bars and a band."""
    finite = sorted({e for c in curves.values() for e in c if math.isfinite(e)})
    inf_x = (finite[-1] * 4) if finite else 1.0
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, points in curves.items():
        eps = sorted(points)
        xs = [e if math.isfinite(e) else inf_x for e in eps]
        stats = [mean_spread(points[e]) for e in eps]
        means, spreads = [m for m, _ in stats], [s for _, s in stats]
        line = ax.errorbar(xs, means, yerr=spreads, marker="o", capsize=4, label=label)
        ax.fill_between(
            xs,
            [m - s for m, s in stats],
            [m + s for m, s in stats],
            alpha=0.12,
            color=line[0].get_color(),
        )
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", label="centralized, no DP")
    ax.set_xscale("log")
    has_inf = any(math.isinf(e) for c in curves.values() for e in c)
    ax.set_xticks([*finite, *([inf_x] if has_inf else [])])
    ax.set_xticklabels([*(f"{e:g}" for e in finite), *(["∞"] if has_inf else [])])
    ax.minorticks_off()
    ax.set(
        xlabel="ε per institution (∞: no DP)",
        ylabel="final accuracy (mean ± sd over seeds)",
        title="Privacy–utility",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig, dpi=90)


def bars_figure(groups: dict[str, list[float]], ylabel: str, title: str) -> bytes:
    """Mean ± sd over seeds for each configuration (a grid without ε)."""
    labels = list(groups)
    stats = [mean_spread(v) for v in groups.values()]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 1.2), 4.5))
    ax.bar(range(len(labels)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return png(fig, dpi=90)


def rounds_figure(curves: dict[str, list[list[float | None]]]) -> bytes:
    """Accuracy per round, the mean over seeds, one line per configuration."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, runs in curves.items():
        length = max(len(r) for r in runs)
        means = []
        for i in range(length):
            values = [v for r in runs if i < len(r) and (v := r[i]) is not None]
            means.append(statistics.fmean(values) if values else math.nan)
        ax.plot(range(1, length + 1), means, marker=".", label=label)
    ax.set(xlabel="round", ylabel="accuracy (mean over seeds)", title="Accuracy per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return png(fig, dpi=90)
