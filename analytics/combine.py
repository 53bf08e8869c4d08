"""The coordinator's side of a query: combine institutions' noisy partials.

`combine(plan, partials)` adds up what the institutions released
(analytics/local.py) and reports every statistic as JSON data under
`statistics.<name>`: `value`, `std_error`, `ci95`, `epsilon` and `institutions`, plus
a few fields of its kind.

What the error bars mean. `std_error` is the standard deviation of the released
figure around the exact statistic of the contributing institutions' governed rows,
caused by the DP noise; it follows from the σ each institution reported (σ is
public) and from nothing else. It is not a sampling error: the rows are taken as they
are, not as a sample of a larger population. `ci95` is value ± 1.96 std_error.

- count, sum, histogram and cross-tab cells are sums of Gaussian noise: unbiased, and
  the error bar is exact.
- mean = c + ΣS/Σn (S the centred sums), variance = (ΣS₂ − (ΣS² − var ΣS)/Σn)/(Σn − 1)
  (the sample variance of the clipped values, ddof 1, with the noise's own contribution
  to ΣS² taken out): ratios of noisy sums, with delta-method error bars. Their bias is
  of relative order (σ_n/Σn)², far below the error bar once Σn is in the hundreds;
  the tests measure it.
- quantiles: the summed noisy histogram over the fine grid is cumulated and made
  monotone (isotonic regression), and each quantile is read off by linear
  interpolation within a grid bin. `std_error` is the delta-method noise error: the
  noise's standard deviation in the cumulative count at the quantile (against q times
  the noisy total), over the density there: the count of the grid bin it falls in,
  per unit, from the same monotone histogram (a window of ±`grid`/16 bins where that
  bin is flat). Even without noise, the grid reading can be off the exact quantile by up to
  one grid bin (`resolution`), half a bin or less when values spread evenly within a
  bin; `ci95` therefore widens by half a bin on each side, and stays within the
  bounds. Where the data are sparse (density near zero) the delta method fails and
  the error bar is only indicative.

Withheld values (min_count suppression) are missing: a sum covers the institutions
that released the value (`institutions`, and per cell `cell_institutions`), the
statistic's `withheld` counts them, and quantiles count withheld grid bins as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from aidmp.analytics.local import PARTIAL_FORMAT
from aidmp.analytics.mechanisms import QueryPlan, StatisticPlan
from aidmp.errors import AidmpError, snippet

Z95 = NormalDist().inv_cdf(0.975)

# One institution's statistic: part -> (values, NaN where withheld; σ).
_Parts = dict[str, tuple[np.ndarray, float]]


class CombineError(AidmpError):
    """A partial that does not answer the plan's query, or is malformed."""


def _num(x: float | np.floating | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _ci(value: float | None, se: float | None) -> list[float | None] | None:
    if value is None or se is None:
        return None
    return [_num(value - Z95 * se), _num(value + Z95 * se)]


# --- checking what arrived -------------------------------------------------------------


def _values(raw: Any, size: int, where: str) -> np.ndarray:
    items = raw if isinstance(raw, list) else [raw]
    if len(items) != size:
        raise CombineError(f"{where}: {len(items)} value(s), expected {size}")
    out = np.full(size, np.nan)
    for i, item in enumerate(items):
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise CombineError(f"{where}: not a finite number ({snippet(item)})")
        out[i] = float(item)
    return out


def _checked(plan: QueryPlan, institution: str, partial: Mapping[str, Any]) -> dict[str, _Parts]:
    who = f"partial from {snippet(institution)}"
    if not isinstance(partial, Mapping) or partial.get("format") != PARTIAL_FORMAT:
        raise CombineError(f"{who}: not a partial of format {PARTIAL_FORMAT}")
    if partial.get("query") != plan.digest:
        raise CombineError(f"{who}: answers another query (digest {snippet(partial.get('query'))})")
    statistics = partial.get("statistics")
    if not isinstance(statistics, Mapping):
        raise CombineError(f"{who}: no statistics")
    out: dict[str, _Parts] = {}
    for stat in plan.statistics:
        got = statistics.get(stat.name)
        components = got.get("components") if isinstance(got, Mapping) else None
        if not isinstance(components, Mapping):
            raise CombineError(f"{who}: no statistic {snippet(stat.name)}")
        parts: _Parts = {}
        for c in stat.components:
            where = f"{who}, {stat.name}.{c.part}"
            comp = components.get(c.part)
            if not isinstance(comp, Mapping):
                raise CombineError(f"{where}: missing")
            sigma = comp.get("sigma")
            if isinstance(sigma, bool) or not isinstance(sigma, int | float):
                raise CombineError(f"{where}: no σ")
            if not (math.isfinite(sigma) and sigma > 0):
                raise CombineError(f"{where}: σ must be a positive number")
            parts[c.part] = (_values(comp.get("value"), c.size, where), float(sigma))
        out[stat.name] = parts
    return out


# --- one statistic -------------------------------------------------------------------


def _count(stat: StatisticPlan, rows: list[_Parts]) -> dict[str, Any]:
    released = [p["count"] for p in rows if not np.isnan(p["count"][0][0])]
    if not released:
        return {"value": None, "std_error": None, "institutions": 0}
    value = math.fsum(v[0] for v, _ in released)
    se = math.sqrt(math.fsum(s * s for _, s in released))
    return {"value": value, "std_error": se, "institutions": len(released)}


def _moments(stat: StatisticPlan, rows: list[_Parts]) -> dict[str, Any]:
    released = [p for p in rows if not any(np.isnan(v[0]) for v, _ in p.values())]
    empty = {"value": None, "std_error": None, "institutions": len(released)}
    if not released:
        return empty

    def total(part: str) -> tuple[float, float]:
        return (
            math.fsum(p[part][0][0] for p in released),
            math.fsum(p[part][1] ** 2 for p in released),
        )

    (n, var_n), (s, var_s) = total("count"), total("sum")
    c = stat.centre
    out: dict[str, Any] = {"institutions": len(released), "n": n, "n_std_error": math.sqrt(var_n)}
    if stat.kind == "sum":
        return out | {"value": s + c * n, "std_error": math.sqrt(var_s + c * c * var_n)}
    if stat.kind == "mean":
        if n <= 0:
            return empty
        m = s / n
        return out | {"value": c + m, "std_error": math.sqrt(var_s + m * m * var_n) / n}
    s2, var_s2 = total("sumsq")
    if n <= 1:
        return empty
    v = (s2 - (s * s - var_s) / n) / (n - 1)
    grad_s2, grad_s, grad_n = 1 / (n - 1), -2 * s / (n * (n - 1)), (s * s / n**2 - v) / (n - 1)
    se = math.sqrt(var_s2 * grad_s2**2 + var_s * grad_s**2 + var_n * grad_n**2)
    sd = math.sqrt(max(v, 0.0))
    return out | {
        "value": v,
        "std_error": se,
        "stddev": sd,
        "stddev_std_error": se / (2 * sd) if sd > 0 else None,
    }


def _withheld(stat: StatisticPlan, rows: list[_Parts]) -> int:
    """How many values were withheld: cells, or institutions' scalar statistics."""
    if stat.kind in ("histogram", "crosstab", "quantiles"):
        return sum(int(np.isnan(p["counts"][0]).sum()) for p in rows)
    return sum(int(any(np.isnan(v[0]) for v, _ in p.values())) for p in rows)


def _contributing(rows: list[_Parts]) -> int:
    """How many institutions released at least one cell."""
    return sum(int(not np.isnan(p["counts"][0]).all()) for p in rows)


def _cells(rows: list[_Parts]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: the sum over institutions that released it, its noise variance, and
    how many did."""
    values = np.stack([p["counts"][0] for p in rows])
    sigmas = np.array([p["counts"][1] for p in rows])
    released = ~np.isnan(values)
    total = np.where(released, values, 0.0).sum(axis=0)
    var = (released * (sigmas**2)[:, None]).sum(axis=0)
    return total, var, released.sum(axis=0)


def _histogram(stat: StatisticPlan, rows: list[_Parts]) -> dict[str, Any]:
    total, var, k = _cells(rows)
    value = [float(t) if n else None for t, n in zip(total, k, strict=True)]
    se = [math.sqrt(v) if n else None for v, n in zip(var, k, strict=True)]
    out: dict[str, Any] = {
        "value": value,
        "std_error": se,
        "institutions": _contributing(rows),
        "ci95": [_ci(v, e) for v, e in zip(value, se, strict=True)],
        "cell_institutions": k.tolist(),
    }
    if stat.kind == "crosstab":
        assert stat.row_categories is not None and stat.column_categories is not None
        width = len(stat.column_categories)

        def grid(flat: list[Any]) -> list[list[Any]]:
            return [flat[i : i + width] for i in range(0, len(flat), width)]

        out = {key: grid(val) if isinstance(val, list) else val for key, val in out.items()}
        out |= {"rows": list(stat.row_categories), "columns": list(stat.column_categories)}
    elif stat.edges is not None:
        out["bins"] = list(stat.edges)
    else:
        assert stat.categories is not None
        out["categories"] = list(stat.categories)
    return out


def isotonic(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `y` in least squares (pool adjacent
    violators)."""
    sums: list[float] = []
    sizes: list[int] = []
    for v in y.tolist():
        sums.append(v)
        sizes.append(1)
        while len(sums) > 1 and sums[-2] / sizes[-2] > sums[-1] / sizes[-1]:
            last_sum, last_size = sums.pop(), sizes.pop()
            sums[-1] += last_sum
            sizes[-1] += last_size
    return np.repeat([s / n for s, n in zip(sums, sizes, strict=True)], sizes)


def _quantiles(stat: StatisticPlan, rows: list[_Parts]) -> dict[str, Any]:
    assert stat.bounds is not None and stat.edges is not None and stat.q is not None
    lo, hi = stat.bounds
    edges = np.asarray(stat.edges)
    grid = len(edges) - 1
    width = (hi - lo) / grid
    counts, var, k = _cells(rows)
    cumulative = np.clip(isotonic(np.concatenate([[0.0], np.cumsum(counts)])), 0.0, None)
    total = cumulative[-1]
    out: dict[str, Any] = {
        "q": list(stat.q),
        "resolution": width,
        "institutions": _contributing(rows),
        "cell_institutions": k.tolist(),
    }
    if total <= 0:
        return out | {"value": None, "std_error": None, "ci95": None}
    reach = max(1, round(grid / 16)) * width
    values, errors, intervals = [], [], []
    for q in stat.q:
        target = q * total
        j = int(np.clip(np.searchsorted(cumulative, target, side="left"), 1, grid))
        c0, c1 = cumulative[j - 1], cumulative[j]
        f = (target - c0) / (c1 - c0) if c1 > c0 else 0.5
        x = float(edges[j - 1] + f * width)
        b = j - 1  # the grid bin holding x, and x's fraction f of the way through it
        var_d = (1 - q) ** 2 * var[:b].sum() + (f - q) ** 2 * var[b] + q**2 * var[b + 1 :].sum()
        # dx/dD is 1 / the density where x is read off: within bin b, the estimate is a
        # straight line through it, so the bin's own (monotone) count sets the slope.
        # A flat bin (no rows, or pooled flat by the isotonic fit) borrows the density
        # over a window of ±grid/16 bins instead.
        density = (c1 - c0) / width
        if density <= 0:
            left, right = max(lo, x - reach), min(hi, x + reach)
            density = (np.interp(right, edges, cumulative) - np.interp(left, edges, cumulative)) / (
                right - left
            )
        se = math.sqrt(var_d) / density if density > 0 else (hi - lo) / 2
        values.append(x)
        errors.append(se)
        intervals.append([max(lo, x - Z95 * se - width / 2), min(hi, x + Z95 * se + width / 2)])
    return out | {"value": values, "std_error": errors, "ci95": intervals}


_KINDS = {
    "count": _count,
    "sum": _moments,
    "mean": _moments,
    "variance": _moments,
    "histogram": _histogram,
    "crosstab": _histogram,
    "quantiles": _quantiles,
}


def combine(
    plan: QueryPlan,
    partials: Mapping[str, Mapping[str, Any]],
    *,
    declined: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The query's result from the partials of the institutions that answered.

    `partials`: institution id -> what `local_partials` returned there. `declined`:
    institution id -> its reason, for those that did not answer (reported as given).
    Returns JSON data: `query` (digest, ε, δ), `statistics.<name>` (value, std_error,
    ci95, epsilon, institutions, withheld, kind, and the kind's own fields), and
    `privacy` (ε per institution, δ, epsilon_by_institution, declined).
    """
    checked = {inst: _checked(plan, inst, p) for inst, p in partials.items()}
    statistics: dict[str, Any] = {}
    for stat in plan.statistics:
        rows = [checked[inst][stat.name] for inst in checked]
        if rows:
            result = _KINDS[stat.kind](stat, rows)
        else:
            result = {"value": None, "std_error": None, "institutions": 0}
        if "ci95" not in result:
            result["ci95"] = _ci(result.get("value"), result.get("std_error"))
        statistics[stat.name] = {
            "kind": stat.kind,
            "value": result.pop("value"),
            "std_error": result.pop("std_error"),
            "ci95": result.pop("ci95"),
            "epsilon": stat.epsilon,
            "institutions": int(result.pop("institutions")),
            "withheld": _withheld(stat, rows),
            **result,
        }
    spent = plan.spent()
    return _plain(
        {
            "query": {"digest": plan.digest, "epsilon": plan.epsilon, "delta": plan.delta},
            "statistics": statistics,
            "privacy": {
                "epsilon_per_institution": spent,
                "delta": plan.delta,
                "epsilon_by_institution": {inst: spent for inst in sorted(checked)},
                "declined": dict(declined or {}),
            },
        }
    )


def _plain(obj: Any) -> Any:
    """JSON data: numpy numbers to Python ones, non-finite numbers to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(obj)
    return obj
