"""A sweep's results: one row per run (its options, then its final figures), written as
DIR/results.csv and DIR/results.parquet, and read back by `aidmp report`.

ε is a number in every row: `inf` for a run without DP, so that the column sorts and
plots as the privacy axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidmp.errors import AidmpError, DeclineCode
from aidmp.simulations.sweep import (
    ERROR_NAME,
    OPTIONS_NAME,
    RUNS_DIR,
    SUMMARY_NAME,
    SWEEP_NAME,
    read_json,
)

RESULTS_CSV = "results.csv"
COORDINATOR_REPORT = "report.json"  # server/report.py REPORT_NAME (not imported: Flower)
RESULTS_PARQUET = "results.parquet"
FIGURES = (
    "final_accuracy", "final_accuracy_std", "final_loss", "final_source", "heldout_accuracy",
    "baseline_accuracy", "epsilon_spent_max", "epsilon_spent_mean", "declined_rounds",
    "governance_declines", "rounds_completed", "he_bytes_per_round", "wall_seconds",
)  # fmt: skip


@dataclass
class RunRecord:
    """One run folder as found on disk."""

    id: str
    folder: Path
    options: dict[str, Any]
    grid_point: dict[str, Any]
    summary: dict[str, Any] | None
    error: str | None

    @property
    def status(self) -> str:
        if self.summary is not None:
            return "done"
        return "failed" if self.error is not None else "not run"


def read_run(folder: Path) -> RunRecord:
    """A run folder of a sweep (options.json) or of a plain `aidmp simulate`."""
    meta = read_json(folder / OPTIONS_NAME) or {}
    # A deployed run's folder (`aidmp run`) has the coordinator's report.json only: the
    # same rounds, privacy, governance and HE figures, without the baseline.
    summary = read_json(folder / SUMMARY_NAME) or read_json(folder / COORDINATOR_REPORT)
    failure = read_json(folder / ERROR_NAME)
    options = meta.get("options") or _options_of_summary(summary)
    return RunRecord(
        id=str(meta.get("id", folder.name)),
        folder=folder,
        options={k: _number(k, v) for k, v in options.items()},
        grid_point={k: _number(k, v) for k, v in (meta.get("grid_point") or {}).items()},
        summary=summary,
        error=None if summary is not None or failure is None else str(failure.get("error")),
    )


def _options_of_summary(summary: dict[str, Any] | None) -> dict[str, Any]:
    if summary is None:
        return {}
    cfg = summary.get("run_config", {})
    return {
        "task": summary.get("task"),
        "institutions": summary.get("institutions"),
        "rounds": summary.get("rounds"),
        "partition": summary.get("partition"),
        "strategy": summary.get("strategy"),
        "dp-epsilon": cfg.get("dp-epsilon") if cfg.get("dp", True) else math.inf,
        "dp-mode": cfg.get("dp-mode"),
        "he": cfg.get("he"),
        "seed": summary.get("seed"),
    }


def _number(key: str, value: Any) -> Any:
    if key == "dp-epsilon" and value in ("inf", None):
        return math.inf
    return value


def read_sweep(out: Path) -> tuple[dict[str, Any], list[RunRecord]]:
    """sweep.json and every run it lists, in the sweep's order."""
    meta = read_json(out / SWEEP_NAME)
    if meta is None:
        raise AidmpError(f"no {SWEEP_NAME} in {out}: give a folder written by `aidmp sweep`")
    return meta, [read_run(out / RUNS_DIR / run_id) for run_id in meta.get("runs", [])]


def figures(summary: dict[str, Any] | None) -> dict[str, Any]:
    """A finished run's final figures (all None for a failed run)."""
    if summary is None:
        return dict.fromkeys(FIGURES)
    final, privacy, per_round = summary["final"], summary["privacy"], summary["per_round"]
    spent = list(privacy.get("epsilon_by_institution", {}).values())
    governance = sum(
        1
        for rec in per_round
        for f in rec.get("train_failures", [])
        if f.get("code") == DeclineCode.GOVERNANCE
    )
    return {
        "final_accuracy": final.get("accuracy"),
        "final_accuracy_std": final.get("accuracy_std"),
        "final_loss": final.get("loss"),
        "final_source": final.get("source"),
        "heldout_accuracy": heldout_accuracy(summary),
        "baseline_accuracy": summary.get("centralized_baseline", {}).get("accuracy"),
        "epsilon_spent_max": max(spent) if spent else None,
        "epsilon_spent_mean": sum(spent) / len(spent) if spent else None,
        "declined_rounds": len(privacy.get("declined", [])),
        "governance_declines": governance,
        "rounds_completed": len(per_round),
        "he_bytes_per_round": summary.get("he", {}).get("bytes_sent_per_round"),
        "wall_seconds": summary.get("wall_seconds"),
    }


def heldout_accuracy(summary: dict[str, Any]) -> float | None:
    """The final model's accuracy on the task's held-out split, where anyone measured it:
    the coordinator (plaintext runs), or the researcher after decrypting the final model
    (HE runs). Under DP, federated figures are noised and not comparable across runs."""
    final = summary["final"]
    if final.get("source") == "central":
        return final.get("accuracy")
    held_out = summary.get("he", {}).get("held_out_by_researcher") or {}
    return held_out.get("accuracy")


def utility(summary: dict[str, Any] | None) -> float | None:
    """The accuracy a sweep compares: held-out where measured, else the final figure."""
    if summary is None:
        return None
    measured = heldout_accuracy(summary)
    return measured if measured is not None else summary["final"].get("accuracy")


def result_rows(keys: list[str], records: list[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        row: dict[str, Any] = {"id": rec.id, "status": rec.status, "error": rec.error}
        row |= {key: rec.options.get(key) for key in keys}
        row |= figures(rec.summary)
        rows.append(row)
    return rows


def write_results(out: Path, keys: list[str], records: list[RunRecord]) -> list[Path]:
    """DIR/results.csv and DIR/results.parquet."""
    import pandas as pd

    frame = pd.DataFrame(result_rows(keys, records))
    for key in keys:  # Parquet wants one type per column: `govern: [true, x.yaml]`
        kinds = {type(v) for v in frame[key] if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[key] = frame[key].map(lambda v: None if v is None else str(v))
    paths = [out / RESULTS_CSV, out / RESULTS_PARQUET]
    frame.to_csv(paths[0], index=False)
    frame.to_parquet(paths[1], index=False)
    return paths


def option_keys(meta: dict[str, Any]) -> list[str]:
    """The options a sweep sets (sweep.json's base and grid keys), seed last."""
    base, grid = list(meta.get("base", {})), list(meta.get("grid", {}))
    return [*base, *(k for k in grid if k not in base), "seed"]
