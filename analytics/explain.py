"""Which features drive a model: permutation importance per original column, central
and as a DP release from an institution's rows (DESIGN.md, "Differential privacy":
explanations are releases like any other).

Original columns. A task's model sees encoded features (Adult: six scaled numbers and
one one-hot block per categorical column). A feature named `column=category` belongs to
`column`; any other name is its own column (`feature_groups`). Permuting a column moves
its whole block, so the importance is that of the source column, not of one category.

Permutation importance of column j on rows (x_i, y_i): the mean over rows of
ℓ(f(x_i with column j taken from another row), y_i) − ℓ(f(x_i), y_i), with ℓ the
cross-entropy. "Another row" is the next row in a random cyclic order: row i takes
column j from its successor. `repeats` such orders are averaged.

The release. An institution releases, for its validation rows,

    n        the count                                     (L2 sensitivity 1)
    S_j      Σ_i clip(d_ij, −B, B), d_ij the row's loss difference for column j,
             averaged over the repeats                      (L2 sensitivity 3B·√m)

for the m columns, each with Gaussian noise. Why 3B per column: adding or removing row r
removes (or adds) its own term (≤ B) and changes the term of its predecessor in the cycle,
which took column j from r and now takes it from r's successor (≤ 2B); every other row
keeps its successor. The order is uniform, and a uniform order of the rows without r is
the order of the rows with r with r taken out, so the two datasets' releases can be
coupled order by order; each coupled pair is a Gaussian mechanism of that sensitivity,
and a mixture of mechanisms each dominated by one Gaussian pair is dominated by it too
(the hockey-stick divergence is jointly convex). The repeats are averaged, so they cost
nothing. B is public (the job states it): clipping biases large differences toward ±B,
never their sign.

Count and sums together are one Gaussian mechanism with μ² = μ_count² + μ_sum² (Dong,
Roth and Su 2019): the job's ε at δ fixes μ (analytics/mechanisms.py), calibrated so that
the ledger's PLD figure is at most ε, as for an analytics query. The split gives the sums
the share Δ_S/(Δ_S + B) of μ² (the importance S/n has error variance σ_S²/n² +
(S/n)²σ_n²/n², and |S/n| is at most B: √ of the coefficients' ratio).

The coordinator adds the K institutions' releases: importance_j = ΣS_j / Σn, with the
standard error of the noise by the delta method, √(K·σ_S² + importance_j²·K·σ_n²)/Σn.
It is the error of the mechanism, not of the rows' sampling.

This module is a library: numpy and torch, no Flower, no ledger; the node charges its
ledger (privacy/explain_release.py) before it hands a release to be sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aidmp.analytics.mechanisms import (
    CALIBRATION_SLACK,
    PLD_DISCRETIZATION,
    GaussianEvent,
    NormalSource,
    draw,
    events_epsilon,
    gaussian_mu,
)
from aidmp.errors import AidmpError

JOB_FORMAT = 1
MAX_REPEATS = 20
MAX_COLUMNS = 256
# What the cycle argument costs: a row's own term and its predecessor's (two bounds).
TERMS_PER_ROW = 3


class ExplainError(AidmpError):
    """An explanation job that cannot run as stated."""


@dataclass(frozen=True)
class ExplainJob:
    """What an explanation asks of every institution: all of it public."""

    task: str
    columns: tuple[str, ...]  # the original columns, in the task's feature order
    bound: float  # B: each row's loss difference is clipped to [−B, B]
    epsilon: float  # the job's ε at each institution
    delta: float
    repeats: int  # random cyclic orders averaged (free: the sensitivity is the same)
    seed: int  # the simulated institutions' orders (a node with its own data: secret)

    def __post_init__(self) -> None:
        check_job(self)

    def canonical(self) -> dict[str, Any]:
        return {
            "format": JOB_FORMAT,
            "task": self.task,
            "columns": list(self.columns),
            "bound": self.bound,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "repeats": self.repeats,
            "seed": self.seed,
        }

    def text(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()


def check_job(job: ExplainJob) -> None:
    """Name the first thing wrong with `job`, and the fix."""
    if not job.columns or len(set(job.columns)) != len(job.columns):
        raise ExplainError("an explanation names at least one column, each once")
    if len(job.columns) > MAX_COLUMNS:
        raise ExplainError(f"an explanation names at most {MAX_COLUMNS} columns")
    if not (isinstance(job.bound, int | float) and math.isfinite(job.bound) and job.bound > 0):
        raise ExplainError(f"the loss-difference bound must be a positive number, not {job.bound}")
    if not (math.isfinite(job.epsilon) and job.epsilon > 0):
        raise ExplainError(f"the explanation's eps must be positive, not {job.epsilon}")
    if not 0 < job.delta < 1:
        raise ExplainError(f"the explanation's delta must lie in (0, 1), not {job.delta}")
    if not isinstance(job.repeats, int) or not 1 <= job.repeats <= MAX_REPEATS:
        raise ExplainError(f"repeats must be 1 to {MAX_REPEATS}, not {job.repeats}")


def parse_job(text: str) -> ExplainJob:
    """The job from its canonical JSON (what a node receives)."""
    try:
        raw = json.loads(text)
        if raw.get("format") != JOB_FORMAT:
            raise ExplainError(f"explanation job format {raw.get('format')}, not {JOB_FORMAT}")
        return ExplainJob(
            task=str(raw["task"]),
            columns=tuple(str(c) for c in raw["columns"]),
            bound=float(raw["bound"]),
            epsilon=float(raw["epsilon"]),
            delta=float(raw["delta"]),
            repeats=int(raw["repeats"]),
            seed=int(raw["seed"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExplainError(f"the explanation job does not parse ({type(exc).__name__})") from None


# --- original columns ------------------------------------------------------------------


def column_of(feature: str) -> str:
    """`column=category` belongs to `column`; any other feature is its own column."""
    return feature.split("=", 1)[0]


def feature_groups(feature_names: Sequence[str]) -> dict[str, list[int]]:
    """Each original column and the indices of its encoded features, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(feature_names):
        groups.setdefault(column_of(name), []).append(i)
    return groups


def feature_names_of(task: Any, width: int) -> list[str]:
    """The task's encoded feature names, or x0, x1, ... where it names none."""
    names = getattr(task, "feature_names", None)
    if names is not None and len(names) == width:
        return list(names)
    return [f"x{i}" for i in range(width)]


# --- noise -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainPlan:
    """The job's noise: the same at every institution."""

    job: ExplainJob
    mu: float
    count_std: float
    sum_std: float

    @property
    def sum_sensitivity(self) -> float:
        return TERMS_PER_ROW * self.job.bound * math.sqrt(len(self.job.columns))

    def event(self) -> GaussianEvent:
        """The release as one Gaussian (noise multiplier 1/μ, Δ 1): what the ledger charges."""
        return GaussianEvent("explanation", 1 / self.mu, 1.0)

    def spent(self) -> float:
        return events_epsilon([self.event()], self.job.delta, PLD_DISCRETIZATION)


def plan_explanation(job: ExplainJob) -> ExplainPlan:
    """Calibrate σ so that the ledger's PLD figure for the release is at most ε.
    Deterministic: the coordinator and every node find the same σ."""
    target = job.epsilon * (1 - CALIBRATION_SLACK)
    for _ in range(20):
        mu = gaussian_mu(target, job.delta)
        spent = events_epsilon([GaussianEvent("explanation", 1 / mu, 1.0)], job.delta)
        if spent <= job.epsilon:
            break
        target -= 1.05 * (spent - job.epsilon) + 1e-9 * job.epsilon
    else:  # pragma: no cover
        raise ExplainError("could not calibrate the explanation's noise to its eps")
    sensitivity = TERMS_PER_ROW * job.bound * math.sqrt(len(job.columns))
    share = sensitivity / (sensitivity + job.bound)
    return ExplainPlan(
        job=job,
        mu=mu,
        count_std=1 / (mu * math.sqrt(1 - share)),
        sum_std=sensitivity / (mu * math.sqrt(share)),
    )


# --- permutation importance ---------------------------------------------------------------


@torch.no_grad()
def row_losses(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Each row's cross-entropy under `model`."""
    model.eval()
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    ys = torch.as_tensor(np.asarray(y), dtype=torch.long)
    out = [
        nn.functional.cross_entropy(model(xs[s : s + batch]), ys[s : s + batch], reduction="none")
        for s in range(0, len(xs), batch)
    ]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def cycle_differences(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    groups: dict[str, list[int]],
    rng: np.random.Generator,
    repeats: int,
) -> np.ndarray:
    """(repeats, rows, columns): each row's loss with the column taken from its successor
    in a random cyclic order, less its own loss."""
    x = np.asarray(x, dtype=np.float32)
    base = row_losses(model, x, y)
    n = len(x)
    out = np.zeros((repeats, n, len(groups)))
    for r in range(repeats):
        order = rng.permutation(n)
        successor = np.empty(n, dtype=np.int64)
        successor[order] = np.roll(order, -1)
        for j, idx in enumerate(groups.values()):
            moved = x.copy()
            moved[:, idx] = x[successor][:, idx]
            out[r, :, j] = row_losses(model, moved, y) - base
    return out


def permutation_importance(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    groups: dict[str, list[int]],
    *,
    seed: int,
    repeats: int = 5,
    bound: float | None = None,
) -> dict[str, dict[str, float]]:
    """Central permutation importance (no clipping, no noise): per column, the mean loss
    increase and its standard deviation over the repeats; with `bound`, also the mean of
    the differences clipped to [−bound, bound] (what a release estimates, without noise)."""
    diffs = cycle_differences(model, x, y, groups, np.random.default_rng(seed), repeats)
    per_repeat = diffs.mean(axis=1)  # (repeats, columns)
    clipped = None if bound is None else np.clip(diffs, -bound, bound).mean(axis=(0, 1))
    out: dict[str, dict[str, float]] = {}
    for j, column in enumerate(groups):
        out[column] = {
            "importance": float(per_repeat[:, j].mean()),
            "std_over_repeats": float(per_repeat[:, j].std()),
        }
        if clipped is not None:
            out[column]["importance_clipped"] = float(clipped[j])
    return out


# --- the institution's release ------------------------------------------------------------


@dataclass(frozen=True)
class ExplainRelease:
    """One institution's noisy count and per-column noisy clipped sums."""

    count: float
    sums: np.ndarray


def clipped_sums(diffs: np.ndarray, bound: float) -> np.ndarray:
    """Per column: Σ over rows of the repeats' mean of the clipped differences."""
    return np.clip(diffs, -bound, bound).mean(axis=0).sum(axis=0)


def release_explanation(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    groups: dict[str, list[int]],
    plan: ExplainPlan,
    *,
    order_rng: np.random.Generator,
    noise: NormalSource,
) -> ExplainRelease:
    """One institution's release on its validation rows (never sent un-noised)."""
    if list(groups) != list(plan.job.columns):
        raise ExplainError("the model's columns differ from the job's")
    diffs = cycle_differences(model, x, y, groups, order_rng, plan.job.repeats)
    sums = clipped_sums(diffs, plan.job.bound)
    m = len(groups)
    return ExplainRelease(
        count=float(len(x) + draw(noise, plan.count_std, 1)[0]),
        sums=sums + draw(noise, plan.sum_std, m),
    )


# --- the coordinator's side ----------------------------------------------------------------


def combine_releases(
    releases: Sequence[ExplainRelease], plan: ExplainPlan
) -> dict[str, dict[str, float]]:
    """Per column: the importance ΣS/Σn and the noise's standard error (delta method)."""
    k = len(releases)
    m = len(plan.job.columns)
    if k == 0:
        return {}
    total_n = float(sum(r.count for r in releases))
    total_s = np.sum([r.sums for r in releases], axis=0).reshape(m)
    out: dict[str, dict[str, float]] = {}
    for j, column in enumerate(plan.job.columns):
        if total_n <= 0:
            out[column] = {"importance": math.nan, "std_error": math.nan}
            continue
        value = float(total_s[j] / total_n)
        se = math.sqrt(k * plan.sum_std**2 + value**2 * k * plan.count_std**2) / total_n
        out[column] = {"importance": value, "std_error": se}
    return out
