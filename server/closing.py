"""What a coordinator is told when a training job ends: the rounds aggregated and
skipped, the final figures, each site's ε, and where the files are. The ServerApp logs
these lines (under `aidmp run` they reach the coordinator's console) and writes
`summary.json` and `metrics.png` beside `report.json`, as `aidmp simulate` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The files a job leaves in its out-dir beside report.json and checkpoint.npz, simulated
# or deployed.
SUMMARY_NAME = "summary.json"
PLOT_NAME = "metrics.png"


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A figure, or "-" when there is none (withheld, or never measured)."""
    return "-" if value is None else format(value, spec)


def fmt_noisy(value: float | None, std: float | None) -> str:
    """A figure, with its noise std when nodes sent it noisy (under DP): "0.8412 ± 0.0100
    (DP)"; an exact one as `fmt` writes it."""
    if value is None or std is None:
        return fmt(value)
    return f"{value:.4f} ± {std:.4f} (DP)"


def final_figure(final: dict[str, Any], key: str) -> str:
    """`key` ("accuracy", "loss") of a report's or summary's `final`, with its noise."""
    return fmt_noisy(final.get(key), final.get(f"{key}_std"))


def charged_in_skipped_rounds(rounds: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Each round nobody aggregated, and the sites charged ε for it anyway (they trained
    under DP and replied; too few others did)."""
    return {
        r["round"]: sorted(r.get("privacy", {})) for r in rounds if not r.get("aggregated", True)
    }


def skipped_rounds(rounds: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """The rounds nobody aggregated, and every site charged for any of them."""
    by_round = charged_in_skipped_rounds(rounds)
    return list(by_round), sorted({n for sites in by_round.values() for n in sites})


def closing_lines(report: dict[str, Any], files: Mapping[str, Path | str]) -> list[str]:
    """The job's closing summary, a line per fact. `files`: what was written, by name."""
    rounds = report["per_round"]
    skipped, charged = skipped_rounds(rounds)
    lines = [
        f"job {report['job_id']} ({report['task']}, {report['strategy']}): "
        f"{len(rounds) - len(skipped)} of {len(rounds)} round(s) aggregated"
        + (f", {len(skipped)} skipped (round {', '.join(map(str, skipped))})" if skipped else "")
    ]
    if charged:
        lines.append(
            f"warning: {', '.join(charged)} spent privacy budget on skipped round(s) whose "
            "updates nobody aggregated"
        )
    final = report["final"]
    if final.get("accuracy") is None and final.get("loss") is None:
        lines.append(
            "no final figures: the last round ran no evaluation (under HE only the sites can "
            "evaluate: set fraction-evaluate above 0)"
        )
    else:
        lines.append(
            f"final accuracy {final_figure(final, 'accuracy')}, loss {final_figure(final, 'loss')} "
            f"({final['source']})"
        )
    privacy = report["privacy"]
    if privacy.get("dp"):
        spent = privacy.get("epsilon_by_institution", {})
        lines.append(
            "eps spent per site: "
            + (", ".join(f"{name} {eps:.2f}" for name, eps in spent.items()) or "none reported")
            + f" (delta {privacy.get('delta')})"
        )
    lines += [f"{name}: {path}" for name, path in files.items()]
    return lines


def deployment_summary(report: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """summary.json for a deployed job: the report's figures in the shape `aidmp simulate`
    writes (no centralized baseline: the coordinator holds no data), plus the
    institutions that took part and the skipped rounds' charged sites."""
    rounds = report["per_round"]
    institutions = sorted(
        {name for r in rounds for name in (*r.get("privacy", {}), *r.get("governance", {}))}
    )
    skipped, charged = skipped_rounds(rounds)
    return {
        "task": report["task"],
        "institutions": len(institutions),
        "institution_names": institutions,
        "rounds": len(rounds),
        "strategy": report["strategy"],
        "run_config": report["run_config"],
        "job_id": report["job_id"],
        "per_round": rounds,
        "skipped_rounds": skipped,
        "charged_in_skipped_rounds": charged,
        "privacy": report["privacy"],
        "he": report["he"],
        "governance": report["governance"],
        "final": report["final"],
        "resumed_from_round": report["resumed_from_round"],
        "wall_seconds": wall_seconds,
    }
