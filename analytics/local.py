"""One institution's side of a query: noisy partials on its governed rows.

`local_partials(frame, plan, rng, min_count=m)` computes every statistic's components
(analytics/mechanisms.py) on `frame`, the rows governance admitted, adds N(0, σ²) noise
to each coordinate from `rng`, then withholds small figures, and returns what the node
would release: plain JSON data, with the σ and Δ of every component (both public, and
the coordinator's error bars follow from them).

Missing values: a row whose value is missing (or not a number, for a numeric column)
is left out of every statistic on that column; a sum's or mean's count is the count of
rows it summed. Values outside the bounds are clipped to them; outside the bins, they
fall in the first or last bin. A categorical value not among the categories is counted
in no bin.

`min_count` suppression, on top of the noise (post-processing: it costs no ε). A node
applies the larger of the query's and its policy's threshold (query.effective_min_count):

- count: a noisy count below `min_count` is withheld;
- sum, mean, variance: if the statistic's noisy count is below `min_count`, all its
  components are withheld (a sum over a handful of rows is a figure about them);
- histogram, quantiles, cross-tab: each bin or cell whose noisy count is below
  `min_count` is withheld on its own.

A withheld value is `None` in the partial, and the statistic's `withheld` says how many
there are. The coordinator (analytics/combine.py) treats a withheld value as missing:
it sums what the other institutions released, and reports how many institutions
contributed and how many values were withheld. The combined figure then covers only the
institutions that released it, and is biased low by the withheld rows (each fewer than
about `min_count`, give or take the noise). Quantiles count a withheld grid bin as zero,
which pulls them slightly towards the denser bins.

Nothing here is sent anywhere or charged to a ledger: the node charges
`plan.events()` to its ledger before it calls this, and audits the release after.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aidmp.analytics.mechanisms import NormalSource, QueryPlan, StatisticPlan, draw
from aidmp.analytics.query import QueryError
from aidmp.analytics.where import as_texts, evaluate

PARTIAL_FORMAT = 1


def _column(frame: pd.DataFrame, stat: str, column: str | None) -> pd.Series:
    if column is None or column not in frame.columns:
        raise QueryError(f"{stat}: the governed data has no column {column!r}")
    return frame[column]


def _numbers(series: pd.Series) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _bin_counts(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Counts per bin [e_i, e_i+1) (the last closed); values outside go to the end bins."""
    size = len(edges) - 1
    index = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.bincount(np.clip(index, 0, size - 1), minlength=size).astype(np.float64)


def _category_counts(series: pd.Series, categories: tuple[str, ...]) -> np.ndarray:
    texts = as_texts(series).dropna()
    counts = texts.value_counts()
    return np.array([float(counts.get(c, 0)) for c in categories])


def exact_components(frame: pd.DataFrame, stat: StatisticPlan) -> dict[str, np.ndarray]:
    """The noise-free value of each of `stat`'s components on `frame`, as float vectors.

    For the noisy release and for tests; never send these.
    """
    rows = frame if stat.where is None else frame[evaluate(stat.where, frame).to_numpy()]
    if stat.kind == "count":
        return {"count": np.array([float(len(rows))])}
    if stat.kind in ("sum", "mean", "variance"):
        assert stat.bounds is not None
        lo, hi = stat.bounds
        x = np.clip(_numbers(_column(rows, stat.name, stat.column)), lo, hi) - stat.centre
        out = {"count": np.array([float(x.size)]), "sum": np.array([float(x.sum())])}
        if stat.kind == "variance":
            out["sumsq"] = np.array([float(np.square(x).sum())])
        return out
    if stat.kind in ("histogram", "quantiles"):
        series = _column(rows, stat.name, stat.column)
        if stat.edges is not None:
            return {"counts": _bin_counts(_numbers(series), stat.edges)}
        assert stat.categories is not None
        return {"counts": _category_counts(series, stat.categories)}
    if stat.kind == "crosstab":
        assert stat.row_categories is not None and stat.column_categories is not None
        a = as_texts(_column(rows, stat.name, stat.rows))
        b = as_texts(_column(rows, stat.name, stat.columns))
        both = a.notna() & b.notna()
        pairs = pd.DataFrame({"a": a[both], "b": b[both]}).value_counts()
        cells = [
            float(pairs.get((r, c), 0)) for r in stat.row_categories for c in stat.column_categories
        ]
        return {"counts": np.array(cells)}
    raise QueryError(f"{stat.name}: unknown statistic {stat.kind!r}")  # pragma: no cover


def _suppress(kind: str, noisy: dict[str, np.ndarray], min_count: int) -> tuple[dict, int]:
    """The values to release (None where withheld) and how many were withheld."""
    if min_count <= 0:
        return {p: v.tolist() for p, v in noisy.items()}, 0
    if "counts" in noisy:
        cells = [None if v < min_count else float(v) for v in noisy["counts"]]
        return {"counts": cells}, sum(c is None for c in cells)
    small = float(noisy["count"][0]) < min_count
    released = {p: [None] if small else v.tolist() for p, v in noisy.items()}
    return released, int(small)


def exact_partials(frame: pd.DataFrame, plan: QueryPlan) -> dict[str, dict[str, np.ndarray]]:
    """Every statistic's noise-free components on `frame`. Never send these."""
    return {stat.name: exact_components(frame, stat) for stat in plan.statistics}


def release(
    exact: dict[str, dict[str, np.ndarray]],
    plan: QueryPlan,
    rng: NormalSource,
    *,
    min_count: int,
) -> dict[str, Any]:
    """`exact` (from `exact_partials`) with noise from `rng`, small values withheld.

    Each call draws fresh noise: one call is one release, charged once to the ledger.
    """
    statistics: dict[str, Any] = {}
    for stat in plan.statistics:
        noisy = {
            c.part: np.asarray(exact[stat.name][c.part], dtype=np.float64).reshape(c.size)
            + draw(rng, c.noise_std, c.size)
            for c in stat.components
        }
        released, withheld = _suppress(stat.kind, noisy, min_count)
        statistics[stat.name] = {
            "kind": stat.kind,
            "withheld": withheld,
            "components": {
                c.part: {
                    "value": released[c.part] if c.part == "counts" else released[c.part][0],
                    "sigma": c.noise_std,
                    "sensitivity": c.sensitivity,
                }
                for c in stat.components
            },
        }
    return {
        "format": PARTIAL_FORMAT,
        "query": plan.digest,
        "min_count": int(min_count),
        "statistics": statistics,
    }


def local_partials(
    frame: pd.DataFrame, plan: QueryPlan, rng: NormalSource, *, min_count: int
) -> dict[str, Any]:
    """What one institution releases for `plan`: noisy, suppressed partials as JSON data.

    `frame`: the governed rows, columns named as in the query. `rng`: the noise source
    (a CSPRNG at a node with its own data). `min_count`: the suppression threshold
    (the larger of the query's and the policy's; 0 suppresses nothing).

    Returns `{"format", "query" (the plan's digest), "min_count", "statistics": {name:
    {"kind", "withheld", "components": {part: {"value", "sigma", "sensitivity"}}}}}`,
    where a scalar component's value is a number (or None) and a vector's a list of
    them (a cross-tab's cells row by row). Noise is drawn in the plan's order of
    statistics and components.
    """
    return release(exact_partials(frame, plan), plan, rng, min_count=min_count)
