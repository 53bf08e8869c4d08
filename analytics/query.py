"""A federated statistics query: one YAML file, validated with pydantic.

    epsilon: 1.0          # what this query may spend at each institution, in total
    delta: 1.0e-5         # optional; the node's ledger δ is the usual choice
    min_count: 10         # optional; a node applies the larger of this and its policy's
    statistics:
      - {name: n, count: {}}
      - {name: n_over_65, count: {where: "age > 65"}}
      - {name: total_hours, sum: {column: hours-per-week, bounds: [1, 99]}}
      - {name: mean_age, mean: {column: age, bounds: [17, 90]}, weight: 2}
      - {name: var_hours, variance: {column: hours-per-week, bounds: [1, 99]}}
      - {name: hours, histogram: {column: hours-per-week, bins: [0, 20, 35, 40, 45, 60, 100]}}
      - {name: education, histogram: {column: education}}      # categories from the policy
      - {name: age_q, quantiles: {column: age, q: [0.25, 0.5, 0.75], bounds: [17, 90]}}
      - {name: sex_income, crosstab: {rows: sex, columns: income}}

Every statistic may carry a `where` filter (analytics/where.py) and a `weight`, its
share of the query's budget (even by default; analytics/mechanisms.py says what a share
is). Bounds, bins and categories are public metadata: the query states them, or
`resolve` takes them from a governance policy's schema; they are never read from the
data. Values outside the bounds are clipped to them; values outside the bins fall in
the first or last bin.

A query file is small and plain, like a policy (and loaded with the policy's loader):
at most `MAX_QUERY_BYTES`, a mapping at the top, no YAML aliases. A mistake is
reported with the YAML line and the key path, e.g.
`query.yaml line 7, statistics.2.mean.bounds: ...`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aidmp.analytics.where import WhereError, parse_where
from aidmp.errors import AidmpError, DeclineCode, snippet
from aidmp.governance.policy import (
    ColumnRule,
    Policy,
    _AliasRefused,
    _line_of,
    _NoAliasLoader,
    _plain,
)

MAX_QUERY_BYTES = 256 * 1024
MAX_STATISTICS = 64
MAX_CATEGORIES = 1024
MAX_BINS = 1024
DEFAULT_GRID = 32
DEFAULT_DELTA = 1e-5  # the project's default dp-delta

Kind = Literal["count", "sum", "mean", "variance", "histogram", "quantiles", "crosstab"]
KINDS: tuple[Kind, ...] = ("count", "sum", "mean", "variance", "histogram", "quantiles", "crosstab")


class QueryError(AidmpError):
    """The query is invalid, or asks for metadata that neither it nor the policy holds."""

    decline_code = DeclineCode.BAD_CONFIG


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Column = str
_COLUMN = Field(min_length=1, max_length=200)


class _Filtered(_Strict):
    where: str | None = Field(None, description="a filter, e.g. age > 65 and sex == 'Male'")

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_where(value)
            except WhereError as exc:
                raise ValueError(str(exc)) from None
        return value


def _check_bounds(value: tuple[float, float] | None) -> tuple[float, float] | None:
    if value is not None and not value[0] < value[1]:
        raise ValueError("bounds are [low, high] with low < high")
    return value


def _check_categories(value: list[str] | None) -> list[str] | None:
    if value is not None:
        if not 1 <= len(value) <= MAX_CATEGORIES:
            raise ValueError(f"categories are a list of 1 to {MAX_CATEGORIES} values")
        if len(set(value)) != len(value):
            raise ValueError("categories are listed once each")
    return value


class CountSpec(_Filtered):
    """The number of rows (that pass `where`)."""


class MomentSpec(_Filtered):
    """A bounded column's sum, mean or variance; values are clipped to `bounds`."""

    column: Column = _COLUMN
    bounds: tuple[float, float] | None = None

    _bounds = field_validator("bounds")(_check_bounds)


class HistogramSpec(_Filtered):
    """Counts per bin: numeric `bins` (edges, increasing) or `categories`."""

    column: Column = _COLUMN
    bins: list[float] | None = None
    categories: list[str] | None = None

    _categories = field_validator("categories")(_check_categories)

    @field_validator("bins")
    @classmethod
    def _edges(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not 2 <= len(value) <= MAX_BINS + 1:
                raise ValueError(f"bins are 2 to {MAX_BINS + 1} edges, e.g. [0, 20, 40, 100]")
            if any(b <= a for a, b in zip(value, value[1:], strict=False)):
                raise ValueError("bin edges increase strictly")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> HistogramSpec:
        if self.bins is not None and self.categories is not None:
            raise ValueError("a histogram has numeric bins or categories, not both")
        return self


class QuantilesSpec(_Filtered):
    """Quantiles `q` of a bounded column, read from a histogram over `grid` equal bins."""

    column: Column = _COLUMN
    q: list[float] = Field(min_length=1, max_length=99)
    bounds: tuple[float, float] | None = None
    grid: int = Field(DEFAULT_GRID, ge=2, le=MAX_BINS)

    _bounds = field_validator("bounds")(_check_bounds)

    @field_validator("q")
    @classmethod
    def _probabilities(cls, value: list[float]) -> list[float]:
        if any(not 0 < p < 1 for p in value):
            raise ValueError("each q is a probability strictly between 0 and 1, e.g. 0.5")
        return value


class CrosstabSpec(_Filtered):
    """Counts per (row category, column category) of two categorical columns."""

    rows: Column = _COLUMN
    columns: Column = _COLUMN
    row_categories: list[str] | None = None
    column_categories: list[str] | None = None

    _row_categories = field_validator("row_categories")(_check_categories)
    _column_categories = field_validator("column_categories")(_check_categories)

    @model_validator(mode="after")
    def _size(self) -> CrosstabSpec:
        rows, cols = self.row_categories, self.column_categories
        if rows is not None and cols is not None and len(rows) * len(cols) > MAX_BINS * 4:
            raise ValueError(f"a cross-tab has at most {MAX_BINS * 4} cells")
        return self


Spec = CountSpec | MomentSpec | HistogramSpec | QuantilesSpec | CrosstabSpec


class Statistic(_Strict):
    """One statistic: its name, exactly one kind with its settings, and its weight."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
    weight: float = Field(1.0, gt=0, le=1e6, description="share of the query's budget")
    count: CountSpec | None = None
    sum: MomentSpec | None = None
    mean: MomentSpec | None = None
    variance: MomentSpec | None = None
    histogram: HistogramSpec | None = None
    quantiles: QuantilesSpec | None = None
    crosstab: CrosstabSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Statistic:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            got = "none" if not given else ", ".join(given)
            raise ValueError(
                f"a statistic has exactly one of {', '.join(KINDS)} (got {got}), e.g. "
                "{name: n, count: {}}"
            )
        return self

    @property
    def kind(self) -> Kind:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def spec(self) -> Spec:
        spec: Spec = getattr(self, self.kind)
        return spec


class Query(_Strict):
    """What a query asks every institution for, and what it may spend there."""

    version: Literal[1] = 1
    description: str | None = Field(None, max_length=1000)
    epsilon: float = Field(gt=0, le=100, description="ε per institution, all statistics")
    delta: float = Field(DEFAULT_DELTA, gt=0, lt=1)
    min_count: int | None = Field(None, ge=0, description="the node uses max(this, policy's)")
    statistics: list[Statistic] = Field(min_length=1, max_length=MAX_STATISTICS)

    @model_validator(mode="after")
    def _unique_names(self) -> Query:
        seen: set[str] = set()
        for stat in self.statistics:
            if stat.name in seen:
                raise ValueError(f"two statistics are named {snippet(stat.name)}")
            seen.add(stat.name)
        return self

    def shares(self) -> dict[str, float]:
        """Each statistic's share of the budget: its weight over the sum of weights."""
        total = math.fsum(s.weight for s in self.statistics)
        return {s.name: s.weight / total for s in self.statistics}

    def canonical(self) -> dict[str, Any]:
        """The query as plain JSON data: what travels to the nodes."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: nodes and coordinator name a query by it."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# --- loading -----------------------------------------------------------------------


def _compose(text: str, source: str) -> tuple[yaml.Node, Any]:
    loader = _NoAliasLoader(text)
    try:
        root = loader.get_single_node()
        if not isinstance(root, yaml.MappingNode):
            raise QueryError(
                f"{source}: a query is a YAML mapping with epsilon and statistics, e.g. "
                "'epsilon: 1.0' then 'statistics: [{name: n, count: {}}]'"
            )
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise QueryError(f"{source}{where}: YAML syntax error: {_plain(problem)}") from None
    except _AliasRefused as exc:
        raise QueryError(
            f"{source} line {exc.line}: YAML aliases (*name) are not allowed in a query; "
            "write the value out in full"
        ) from None
    except RecursionError:
        raise QueryError(f"{source}: nested too deeply to be a query") from None
    finally:
        loader.dispose()
    return root, data


def parse_query(text: str, source: str = "query") -> Query:
    """A query from YAML (or JSON) text; `source` names it in messages."""
    if len(text.encode("utf-8", errors="replace")) > MAX_QUERY_BYTES:
        raise QueryError(f"{source} is over {MAX_QUERY_BYTES:,} bytes; is it a query?")
    root, data = _compose(text, source)
    try:
        return Query.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line = _line_of(root, loc)
        where = ".".join(_plain(str(p)) for p in loc)
        at = f" line {line}," if line else ""
        raise QueryError(f"{source}{at} {where or '(top level)'}: {first['msg']}") from None


def load_query(path: Path) -> tuple[Query, str]:
    """The validated query in `path` and its canonical digest."""
    if not path.is_file():
        raise QueryError(f"no query file at {path}")
    if path.stat().st_size > MAX_QUERY_BYTES:
        raise QueryError(f"{path} is over {MAX_QUERY_BYTES:,} bytes; is it a query?")
    raw = path.read_bytes()[: MAX_QUERY_BYTES + 1]
    query = parse_query(raw.decode("utf-8", errors="replace"), str(path))
    return query, query.digest()


# --- public metadata from a policy ------------------------------------------------------


def effective_min_count(query: Query, policy: Policy | None) -> int:
    """The suppression threshold a node applies: the stricter of the query's and its own."""
    own = policy.min_count if policy is not None else 0
    return max(own, query.min_count or 0)


def _rule(policy: Policy, stat: str, column: str) -> ColumnRule:
    rule = policy.columns.get(column)
    if rule is None:
        raise QueryError(f"{stat}: column {snippet(column)} is not in the policy's schema")
    if rule.tag == "identifier" or rule.pii in ("drop", "hash"):
        raise QueryError(
            f"{stat}: column {snippet(column)} is an identifier or dropped/hashed by the "
            "policy; it cannot be queried"
        )
    return rule


def _policy_bounds(policy: Policy, stat: str, column: str) -> tuple[float, float]:
    rule = _rule(policy, stat, column)
    if rule.min is None or rule.max is None or not rule.min < rule.max:
        raise QueryError(
            f"{stat}: bounds are public metadata; give bounds: [low, high] in the query, or "
            f"min and max for {snippet(column)} in the policy"
        )
    return (rule.min, rule.max)


def _policy_categories(policy: Policy, stat: str, column: str) -> list[str]:
    rule = _rule(policy, stat, column)
    if not rule.categories:
        raise QueryError(
            f"{stat}: categories are public metadata; list them in the query, or under "
            f"categories for {snippet(column)} in the policy"
        )
    return list(rule.categories)


def resolve(query: Query, policy: Policy) -> Query:
    """The query with every omitted bound and category list taken from `policy`, and
    every column it names (filters included) checked against the policy's schema.

    The coordinator resolves a query once (against the shared schema) and sends the
    resolved one, so every institution computes with the same public metadata.
    """
    out: list[Statistic] = []
    for stat in query.statistics:
        spec = stat.spec
        name = stat.name
        update: dict[str, Any] = {}
        if spec.where is not None:
            for column in sorted(parse_where(spec.where).columns()):
                _rule(policy, name, column)
        if isinstance(spec, MomentSpec | QuantilesSpec):
            _rule(policy, name, spec.column)
            if spec.bounds is None:
                update["bounds"] = _policy_bounds(policy, name, spec.column)
        elif isinstance(spec, HistogramSpec):
            rule = _rule(policy, name, spec.column)
            if spec.bins is None and spec.categories is None:
                if rule.type in ("int", "float"):
                    raise QueryError(
                        f"{name}: a numeric histogram needs its bins (edges) in the query"
                    )
                update["categories"] = _policy_categories(policy, name, spec.column)
        elif isinstance(spec, CrosstabSpec):
            for column, key in ((spec.rows, "row_categories"), (spec.columns, "column_categories")):
                _rule(policy, name, column)
                if getattr(spec, key) is None:
                    update[key] = _policy_categories(policy, name, column)
        if update:
            stat = stat.model_copy(update={stat.kind: spec.model_copy(update=update)})
        out.append(stat)
    resolved = query.model_copy(update={"statistics": out}).model_dump(mode="json")
    try:
        return Query.model_validate(resolved)  # what the policy lent is checked too
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise QueryError(f"resolved against the policy, {where}: {first['msg']}") from None
