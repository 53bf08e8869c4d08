"""Federated statistics: a query file, the Gaussian mechanism, a node's noisy partials
and the coordinator's combination (DESIGN.md, "Analytics").

How the pieces fit, for the node and the coordinator:

    query, digest = load_query(path)              # or parse_query(text) at a node
    plan = plan_query(query, policy)              # resolve metadata, split ε, calibrate σ
    print_budget(plan)                            # before anything runs
    plan.events()                                 # [(name, noise_multiplier, Δ)]: the ledger
    partial = local_partials(frame, plan, rng, min_count=effective_min_count(query, policy))
    result = combine(plan, {"site-a": partial, ...}, declined={...})

This package is a library: it never imports the server, the client, simulations or the
command line.
"""

from aidmp.analytics.combine import CombineError, combine
from aidmp.analytics.local import exact_components, exact_partials, local_partials, release
from aidmp.analytics.mechanisms import (
    GaussianEvent,
    NormalSource,
    QueryPlan,
    budget_table,
    events_epsilon,
    plan_query,
    print_budget,
    query_events,
)
from aidmp.analytics.query import (
    Query,
    QueryError,
    effective_min_count,
    load_query,
    parse_query,
    resolve,
)
from aidmp.analytics.where import WhereError, parse_where

__all__ = [
    "CombineError",
    "GaussianEvent",
    "NormalSource",
    "Query",
    "QueryError",
    "QueryPlan",
    "WhereError",
    "budget_table",
    "combine",
    "effective_min_count",
    "events_epsilon",
    "exact_components",
    "exact_partials",
    "load_query",
    "local_partials",
    "parse_query",
    "parse_where",
    "plan_query",
    "print_budget",
    "query_events",
    "release",
    "resolve",
]
