"""The Gaussian mechanism behind every statistic: sensitivities, calibration, noise.

Privacy unit and neighbours: one row of an institution's data, added or removed (as
for DP-SGD and the ledger). Every statistic is released as one or more *components*,
each a vector with Gaussian noise N(0, σ²) per coordinate and L2 sensitivity Δ:

| statistic | components (Δ)                                                           |
|-----------|--------------------------------------------------------------------------|
| count     | count (1)                                                                |
| sum, mean | count (1); sum of x − c (h)                                              |
| variance  | count (1); sum of x − c (h); sum of (x − c)² (h²)                        |
| histogram | one count per bin or category (1: a row changes one bin)                 |
| crosstab  | one count per cell (1: a row changes one cell)                           |
| quantiles | one count per bin of a fine public grid over the bounds (1)              |

with x clipped to the public bounds [lo, hi], c = (lo + hi)/2 their midpoint and
h = (hi − lo)/2. Centring is free (c is public) and never worse than the raw bounded
sum of Δ = max(|lo|, |hi|) (`bounded_sum_sensitivity`): the sum is then S + c·n, whose
noise variance σ_S² + c²σ_n² is at most the raw sum's for the same budget. A sum or
mean also releases its count, which the coordinator needs for the mean and a node
needs for `min_count` suppression.

Calibration. A Gaussian release with noise multiplier z = σ/Δ is μ-GDP with μ = 1/z,
and Gaussian releases compose exactly: the query's events together are one Gaussian
mechanism with μ² = Σ μ_j² (Dong, Roth and Su, 2019). So the query's ε at δ fixes one
μ (the analytic Gaussian mechanism, Balle and Wang 2018), and the budget is split as
shares of μ²: statistic i gets wᵢ/Σw of it (`weight`, even by default), and within a
statistic its components share evenly. Doubling a statistic's weight divides its σ by
√2. A statistic's "own" ε (alone, at δ) is more than its share of ε: composition is
sub-additive, and the query's total is what the ledger charges.

The noise multipliers are then checked with dp_accounting's PLD accountant, as the
node's ledger composes them (pessimistic rounding on a grid of `PLD_DISCRETIZATION`),
and shrunk until that figure is at most the query's ε: `events_epsilon(query_events
(plan), δ) ≤ ε`. They aim 0.2 % below ε (`CALIBRATION_SLACK`), so that the ledger's
own PLD figure, which rounds up by less than that, stays within ε too.

Noise: `draw` takes a `NormalSource`, anything with `standard_normal(n)`: a
`numpy.random.Generator` (simulations, tests), or `aidmp.privacy.noise.SecureRandom`
(ChaCha20, for a node with its own data; DESIGN.md: noise at deployed nodes comes
from a cryptographically secure source).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple, Protocol, TextIO

import numpy as np

from aidmp.analytics.query import (
    CountSpec,
    CrosstabSpec,
    HistogramSpec,
    Kind,
    MomentSpec,
    QuantilesSpec,
    Query,
    QueryError,
    resolve,
)
from aidmp.analytics.where import Node, parse_where
from aidmp.governance.policy import Policy

# The ledger's PLD grid (privacy/ledger.py, PLD_DISCRETIZATION): calibrating against the
# same pessimistic rounding keeps the ledger's figure for a query within its ε.
PLD_DISCRETIZATION = 1e-3

# The events are calibrated to this fraction below the query's ε (exactly, then checked
# with the PLD), so that an accountant that rounds up by less than it still finds the
# query within its ε: the node's ledger refines its PLD grid until ε settles to 0.1 %.
CALIBRATION_SLACK = 2e-3

# Within a statistic, the components share its part of μ² evenly. The best split
# depends on the data (a mean's count matters in proportion to its unknown centred
# mean), so no split is best for every column; even is the simple, stated choice.
PARTS: dict[Kind, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("count", "sum"),
    "mean": ("count", "sum"),
    "variance": ("count", "sum", "sumsq"),
    "histogram": ("counts",),
    "quantiles": ("counts",),
    "crosstab": ("counts",),
}

_PHI = NormalDist().cdf


# --- sensitivities ---------------------------------------------------------------------


def count_sensitivity() -> float:
    """A count under add/remove-one: 1."""
    return 1.0


def bounded_sum_sensitivity(lo: float, hi: float) -> float:
    """A raw sum of values clipped to [lo, hi]: max(|lo|, |hi|)."""
    return max(abs(lo), abs(hi))


def centred_sum_sensitivity(lo: float, hi: float) -> float:
    """A sum of x − (lo + hi)/2 for x clipped to [lo, hi]: (hi − lo)/2."""
    return (hi - lo) / 2


def centred_sumsq_sensitivity(lo: float, hi: float) -> float:
    """A sum of (x − (lo + hi)/2)² for x clipped to [lo, hi]: ((hi − lo)/2)²."""
    return ((hi - lo) / 2) ** 2


def histogram_sensitivity() -> float:
    """Counts per bin (or cross-tab cell): a row moves one count by one, so L2 is 1."""
    return 1.0


# --- Gaussian privacy ------------------------------------------------------------------


def gaussian_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of a μ-GDP (Gaussian) mechanism: Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""
    if mu <= 0:
        return 0.0
    return max(0.0, _PHI(-epsilon / mu + mu / 2) - math.exp(epsilon) * _PHI(-epsilon / mu - mu / 2))


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The largest μ for which the Gaussian mechanism is (ε, δ)-DP (bisection)."""
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) < delta:
        hi *= 2
        if hi > 1e6:
            raise QueryError(f"ε {epsilon} at δ {delta} needs no noise at all")
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, epsilon) <= delta else (lo, mid)
    return lo


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The ε at δ of the Gaussian mechanism with μ = 1/noise multiplier (bisection)."""
    if mu <= 0:
        return 0.0
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if gaussian_delta(mu, mid) <= delta else (mid, hi)
    return hi


class GaussianEvent(NamedTuple):
    """One release for the ledger: N(0, (z·Δ)²) noise on a statistic of L2 sensitivity Δ.

    For privacy/ledger.py: `GaussianRelease(noise_std=e.noise_std,
    sensitivity=e.sensitivity)`; for dp_accounting: `GaussianDpEvent(e.noise_multiplier)`.
    """

    name: str
    noise_multiplier: float
    sensitivity: float

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.sensitivity


@functools.lru_cache(maxsize=256)
def _pld_epsilon(multipliers: tuple[float, ...], delta: float, discretization: float) -> float:
    """The larger of two PLD figures for Gaussians of these noise multipliers composed:
    dp_accounting's `PLDAccountant`, composing one `GaussianDpEvent` per release, and
    the node's ledger's way (privacy/ledger.py: one PLD per distinct multiplier,
    self-composed as often as it occurs, the results composed), whose pessimistic
    rounding accumulates a little differently."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.pld import privacy_loss_distribution as pld

    accountant = PLDAccountant(value_discretization_interval=discretization)
    accountant.compose(
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in multipliers])
    )
    composed = None
    for z in sorted(set(multipliers)):
        one = pld.from_gaussian_mechanism(
            standard_deviation=z, sampling_prob=1.0, value_discretization_interval=discretization
        ).self_compose(multipliers.count(z))
        composed = one if composed is None else composed.compose(one)
    assert composed is not None
    return max(float(accountant.get_epsilon(delta)), float(composed.get_epsilon_for_delta(delta)))


def events_epsilon(
    events: list[GaussianEvent], delta: float, discretization: float = PLD_DISCRETIZATION
) -> float:
    """ε at `delta` of `events` composed, by privacy loss distributions (add or remove
    one row; pessimistic rounding on a grid of `discretization`): the larger of
    dp_accounting's `PLDAccountant` and the node ledger's own composition."""
    if not events:
        return 0.0
    if any(e.noise_multiplier <= 0 for e in events):
        return math.inf
    return _pld_epsilon(tuple(sorted(e.noise_multiplier for e in events)), delta, discretization)


# --- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One released vector of a statistic: `size` coordinates, each with N(0, σ²)."""

    part: str  # count, sum, sumsq, counts
    sensitivity: float
    noise_std: float
    size: int

    @property
    def noise_multiplier(self) -> float:
        return self.noise_std / self.sensitivity


@dataclass(frozen=True)
class StatisticPlan:
    """A statistic with its public metadata resolved and its noise calibrated."""

    name: str
    kind: Kind
    share: float  # of the query's μ²
    epsilon: float  # this statistic alone, at the query's δ
    components: tuple[Component, ...]
    where: Node | None = None
    column: str | None = None
    bounds: tuple[float, float] | None = None  # sum, mean, variance, quantiles
    edges: tuple[float, ...] | None = None  # numeric histogram; quantiles' grid
    categories: tuple[str, ...] | None = None  # categorical histogram
    rows: str | None = None  # cross-tab
    columns: str | None = None
    row_categories: tuple[str, ...] | None = None
    column_categories: tuple[str, ...] | None = None
    q: tuple[float, ...] | None = None

    @property
    def centre(self) -> float:
        assert self.bounds is not None
        return (self.bounds[0] + self.bounds[1]) / 2

    def component(self, part: str) -> Component:
        return next(c for c in self.components if c.part == part)

    def meta(self) -> dict[str, Any]:
        """The public metadata, as JSON: what a partial and a result name."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in (
            "column", "bounds", "edges", "categories", "rows", "columns", "row_categories",
            "column_categories", "q",
        ):  # fmt: skip
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class QueryPlan:
    """A query made ready to run: every statistic's components and their σ."""

    query: Query
    digest: str
    epsilon: float  # the query's budget per institution
    delta: float
    mu: float  # the composed Gaussian's μ
    statistics: tuple[StatisticPlan, ...]

    def statistic(self, name: str) -> StatisticPlan:
        return next(s for s in self.statistics if s.name == name)

    def events(self) -> list[GaussianEvent]:
        return [
            GaussianEvent(f"{s.name}.{c.part}", c.noise_multiplier, c.sensitivity)
            for s in self.statistics
            for c in s.components
        ]

    def composite_event(self) -> GaussianEvent:
        """The same releases as one event: Gaussians compose exactly, so the query is
        one Gaussian of noise multiplier 1/μ (sensitivity 1). A ledger may charge this
        instead of `events()`: the same privacy, accounted with a single PLD."""
        return GaussianEvent("query", 1 / self.mu, 1.0)

    def spent(self, discretization: float = PLD_DISCRETIZATION) -> float:
        """ε at δ of the whole query, composed by the PLD accountant (≤ `epsilon`)."""
        return events_epsilon(self.events(), self.delta, discretization)


def _resolved(spec_stat: Any, name: str) -> dict[str, Any]:
    """A statistic's metadata and its components' (part, Δ, size), from a resolved spec."""
    spec = spec_stat
    where = parse_where(spec.where) if spec.where is not None else None
    if isinstance(spec, CountSpec):
        return {"where": where, "parts": [("count", count_sensitivity(), 1)]}
    if isinstance(spec, MomentSpec):
        if spec.bounds is None:
            raise QueryError(f"{name}: bounds are missing; resolve the query with a policy")
        lo, hi = spec.bounds
        sens = {
            "count": count_sensitivity(),
            "sum": centred_sum_sensitivity(lo, hi),
            "sumsq": centred_sumsq_sensitivity(lo, hi),
        }
        return {"where": where, "column": spec.column, "bounds": (lo, hi), "sens": sens}
    if isinstance(spec, HistogramSpec):
        if spec.bins is not None:
            size = len(spec.bins) - 1
            meta: dict[str, Any] = {"edges": tuple(spec.bins)}
        elif spec.categories is not None:
            size = len(spec.categories)
            meta = {"categories": tuple(spec.categories)}
        else:
            raise QueryError(f"{name}: bins or categories are missing; resolve with a policy")
        parts = [("counts", histogram_sensitivity(), size)]
        return {"where": where, "column": spec.column, "parts": parts, **meta}
    if isinstance(spec, QuantilesSpec):
        if spec.bounds is None:
            raise QueryError(f"{name}: bounds are missing; resolve the query with a policy")
        lo, hi = spec.bounds
        edges = tuple(float(e) for e in np.linspace(lo, hi, spec.grid + 1))
        return {
            "where": where, "column": spec.column, "bounds": (lo, hi), "edges": edges,
            "q": tuple(spec.q), "parts": [("counts", histogram_sensitivity(), spec.grid)],
        }  # fmt: skip
    if isinstance(spec, CrosstabSpec):
        if spec.row_categories is None or spec.column_categories is None:
            raise QueryError(f"{name}: categories are missing; resolve the query with a policy")
        size = len(spec.row_categories) * len(spec.column_categories)
        return {
            "where": where, "rows": spec.rows, "columns": spec.columns,
            "row_categories": tuple(spec.row_categories),
            "column_categories": tuple(spec.column_categories),
            "parts": [("counts", histogram_sensitivity(), size)],
        }  # fmt: skip
    raise QueryError(f"{name}: unknown statistic")  # pragma: no cover


def plan_query(
    query: Query,
    policy: Policy | None = None,
    *,
    discretization: float = PLD_DISCRETIZATION,
) -> QueryPlan:
    """Resolve `query` (against `policy`, if given), split its budget and calibrate σ.

    Deterministic: the coordinator and every node compute the same σ from the same
    query, and a node reports them with its partials.
    """
    if policy is not None:
        query = resolve(query, policy)
    shares = query.shares()
    resolved = {s.name: _resolved(s.spec, s.name) for s in query.statistics}
    parts: dict[str, list[tuple[str, float, int]]] = {}
    for stat in query.statistics:
        info = resolved[stat.name]
        if "parts" in info:
            parts[stat.name] = info["parts"]
        else:
            parts[stat.name] = [(p, info["sens"][p], 1) for p in PARTS[stat.kind]]

    def build(mu: float) -> list[StatisticPlan]:
        plans = []
        for stat in query.statistics:
            mu_stat = mu * math.sqrt(shares[stat.name])
            mu_part = mu_stat / math.sqrt(len(parts[stat.name]))
            components = tuple(
                Component(part, sens, sens / mu_part, size) for part, sens, size in parts[stat.name]
            )
            info = {k: v for k, v in resolved[stat.name].items() if k not in ("parts", "sens")}
            plans.append(
                StatisticPlan(
                    name=stat.name,
                    kind=stat.kind,
                    share=shares[stat.name],
                    epsilon=gaussian_epsilon(mu_stat, query.delta),
                    components=components,
                    **info,
                )
            )
        return plans

    target = query.epsilon * (1 - CALIBRATION_SLACK)
    for _ in range(20):
        mu = gaussian_mu(target, query.delta)
        plans = build(mu)
        events = [
            GaussianEvent(f"{s.name}.{c.part}", c.noise_multiplier, c.sensitivity)
            for s in plans
            for c in s.components
        ]
        spent = events_epsilon(events, query.delta, discretization)
        if spent <= query.epsilon:
            break
        # The PLD's pessimistic rounding costs a little ε: aim that much lower.
        target -= 1.05 * (spent - query.epsilon) + 1e-9 * query.epsilon
    else:  # pragma: no cover
        raise QueryError("could not calibrate the query's noise to its ε")
    return QueryPlan(
        query=query,
        digest=query.digest(),
        epsilon=query.epsilon,
        delta=query.delta,
        mu=mu,
        statistics=tuple(plans),
    )


def query_events(query: Query | QueryPlan, policy: Policy | None = None) -> list[GaussianEvent]:
    """The query's releases as (name, noise multiplier, sensitivity), for the ledger."""
    plan = query if isinstance(query, QueryPlan) else plan_query(query, policy)
    return plan.events()


# --- noise ----------------------------------------------------------------------------


class NormalSource(Protocol):
    """Where noise comes from: `standard_normal(n)` gives n N(0, 1) draws (array-like).

    `numpy.random.Generator` and `aidmp.privacy.noise.SecureRandom` both fit.
    """

    def standard_normal(self, size: int, /) -> Any: ...


def draw(rng: NormalSource, sigma: float, size: int) -> np.ndarray:
    """`size` draws of N(0, σ²) in float64 from `rng`."""
    if size == 0:
        return np.zeros(0)
    z = np.asarray(rng.standard_normal(size), dtype=np.float64).reshape(size)
    return z * sigma


# --- the budget, said before anything runs ---------------------------------------------


def budget_table(plan: QueryPlan) -> str:
    """The split of the query's budget, one line per statistic and component."""
    lines = [
        f"query {plan.digest[:12]}: ε {plan.epsilon:g} per institution at δ {plan.delta:g}, "
        f"{len(plan.statistics)} statistic(s)",
        f"{'statistic':<20} {'kind':<10} {'share':>6} {'ε alone':>8}  "
        f"{'component':<10} {'Δ':>10} {'σ':>10} {'σ/Δ':>7}",
    ]
    for stat in plan.statistics:
        for i, c in enumerate(stat.components):
            head = (
                f"{stat.name[:20]:<20} {stat.kind:<10} {stat.share:>6.1%} {stat.epsilon:>8.3f}"
                if i == 0
                else " " * 47
            )
            size = f"{c.part}×{c.size}" if c.size > 1 else c.part
            lines.append(
                f"{head}  {size[:10]:<10} {c.sensitivity:>10.4g} {c.noise_std:>10.4g} "
                f"{c.noise_multiplier:>7.3f}"
            )
    lines.append(
        f"composed (PLD accountant): ε {plan.spent():.6f} ≤ {plan.epsilon:g} at δ "
        f"{plan.delta:g}; the statistics' own ε add up to more, since composition is "
        "sub-additive"
    )
    return "\n".join(lines)


def print_budget(plan: QueryPlan, file: TextIO | None = None) -> None:
    """Print `budget_table(plan)` (to stdout by default), before any node is asked."""
    print(budget_table(plan), file=file or sys.stdout)
