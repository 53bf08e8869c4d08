"""The Gaussian mechanism of analytics: sensitivities, calibration, the query's events."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant

from aidmp.analytics.mechanisms import (
    GaussianEvent,
    bounded_sum_sensitivity,
    centred_sum_sensitivity,
    centred_sumsq_sensitivity,
    count_sensitivity,
    draw,
    events_epsilon,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_mu,
    histogram_sensitivity,
    plan_query,
    query_events,
)
from aidmp.analytics.query import Query

ALL_KINDS = [
    {"name": "n", "count": {}},
    {"name": "old", "count": {"where": "age > 65"}},
    {"name": "total", "sum": {"column": "x", "bounds": [-3, 2]}},
    {"name": "mean_age", "mean": {"column": "age", "bounds": [17, 90]}},
    {"name": "var", "variance": {"column": "x", "bounds": [1, 99]}},
    {"name": "hist", "histogram": {"column": "x", "bins": [0, 1, 2, 5]}},
    {"name": "cat", "histogram": {"column": "s", "categories": ["a", "b"]}},
    {"name": "q", "quantiles": {"column": "x", "q": [0.5], "bounds": [0, 10], "grid": 20}},
    {
        "name": "tab",
        "crosstab": {
            "rows": "s",
            "columns": "t",
            "row_categories": ["a", "b"],
            "column_categories": ["u", "v", "w"],
        },
    },
]


def _query(epsilon=1.0, delta=1e-5, statistics=None) -> Query:
    return Query.model_validate(
        {"epsilon": epsilon, "delta": delta, "statistics": statistics or ALL_KINDS}
    )


def test_sensitivities():
    assert count_sensitivity() == 1
    assert histogram_sensitivity() == 1
    assert bounded_sum_sensitivity(-3, 2) == 3
    assert bounded_sum_sensitivity(17, 90) == 90
    assert centred_sum_sensitivity(17, 90) == 36.5
    assert centred_sumsq_sensitivity(17, 90) == 36.5**2
    # The centred sum never needs more noise than the raw bounded sum (same μ):
    # its variance h² + c² (via S + c·n) is (lo² + hi²)/2 ≤ max(lo², hi²).
    for lo, hi in [(17, 90), (-3, 2), (0, 1), (-5, -1), (-10, 10)]:
        h, c = (hi - lo) / 2, (hi + lo) / 2
        assert h * h + c * c <= bounded_sum_sensitivity(lo, hi) ** 2 + 1e-12

    plan = plan_query(_query())
    sens = {
        (s.name, c.part): (c.sensitivity, c.size) for s in plan.statistics for c in s.components
    }
    assert sens == {
        ("n", "count"): (1, 1),
        ("old", "count"): (1, 1),
        ("total", "count"): (1, 1),
        ("total", "sum"): (2.5, 1),
        ("mean_age", "count"): (1, 1),
        ("mean_age", "sum"): (36.5, 1),
        ("var", "count"): (1, 1),
        ("var", "sum"): (49, 1),
        ("var", "sumsq"): (49**2, 1),
        ("hist", "counts"): (1, 3),
        ("cat", "counts"): (1, 2),
        ("q", "counts"): (1, 20),
        ("tab", "counts"): (1, 6),
    }


def test_the_analytic_gaussian_mechanism():
    # One count at ε 1, δ 1e-5: Balle and Wang's analytic σ is about 3.73.
    mu = gaussian_mu(1.0, 1e-5)
    assert 1 / mu == pytest.approx(3.73, abs=0.01)
    assert gaussian_delta(mu, 1.0) == pytest.approx(1e-5, rel=1e-6)
    assert gaussian_epsilon(mu, 1e-5) == pytest.approx(1.0, rel=1e-6)
    # The same figure from dp_accounting's PLD for that one Gaussian.
    assert events_epsilon([GaussianEvent("n", 1 / mu, 1.0)], 1e-5, 1e-4) == pytest.approx(
        1.0, rel=1e-3
    )


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-5), (1.0, 1e-5), (3.0, 1e-6), (8, 1e-5)])
def test_the_composed_epsilon_of_a_querys_events_is_at_most_its_epsilon(epsilon, delta):
    plan = plan_query(_query(epsilon, delta))
    events = query_events(plan)
    assert len(events) == 13
    # dp_accounting's PLD accountant, composing the events one by one, as the brief says.
    for discretization in (1e-3, 1e-4):
        accountant = PLDAccountant(value_discretization_interval=discretization)
        accountant.compose(
            dp_accounting.ComposedDpEvent(
                [dp_accounting.GaussianDpEvent(e.noise_multiplier) for e in events]
            )
        )
        spent = accountant.get_epsilon(delta)
        assert spent <= epsilon
        assert spent >= 0.995 * epsilon  # calibrated, not wasted
    assert plan.spent() <= epsilon
    # The single equivalent event costs the same (one PLD instead of thirteen).
    composite = plan.composite_event()
    assert events_epsilon([composite], delta) <= epsilon
    assert events_epsilon([composite], delta) == pytest.approx(plan.spent(), rel=2e-3)
    # Gaussians compose exactly: the whole query is one Gaussian of μ² = Σ μ_j².
    mu = math.sqrt(sum(1 / e.noise_multiplier**2 for e in events))
    assert mu == pytest.approx(plan.mu, rel=1e-9)
    assert gaussian_epsilon(mu, delta) <= epsilon


def test_the_ledgers_own_accounting_agrees_when_it_knows_gaussian_releases():
    ledger = pytest.importorskip("aidmp.privacy.ledger")
    if not hasattr(ledger, "GaussianRelease"):
        pytest.skip("the ledger does not record plain Gaussian releases yet")
    plan = plan_query(_query(1.0, 1e-5))
    releases = [
        ledger.GaussianRelease(noise_std=e.noise_std, sensitivity=e.sensitivity)
        for e in plan.events()
    ]
    spent = ledger.epsilon_of(releases, 1e-5, "pld")
    assert 0.995 <= spent <= 1.0


def test_weights_split_the_budget_as_shares_of_mu_squared():
    stats = [
        {"name": "a", "count": {}},
        {"name": "b", "count": {}, "weight": 2},
        {"name": "m", "mean": {"column": "x", "bounds": [0, 10]}, "weight": 3},
    ]
    plan = plan_query(_query(1.0, 1e-5, stats))
    a, b, m = plan.statistics
    assert [a.share, b.share, m.share] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    # Twice the weight: σ divided by √2. Within a statistic, components share evenly.
    assert a.components[0].noise_std / b.components[0].noise_std == pytest.approx(math.sqrt(2))
    count, total = m.components
    assert count.noise_multiplier == pytest.approx(total.noise_multiplier)
    assert total.noise_std == pytest.approx(5 * count.noise_std)
    assert 1 / count.noise_multiplier**2 + 1 / total.noise_multiplier**2 == pytest.approx(
        plan.mu**2 * 3 / 6
    )
    # Each statistic's own ε is more than its share of ε (composition is sub-additive),
    # and an even split gives every statistic the same own ε.
    assert a.epsilon < b.epsilon < m.epsilon < 1.0
    assert a.epsilon + b.epsilon + m.epsilon > 1.0


def test_query_events_name_each_release():
    events = query_events(_query(1.0, 1e-5, ALL_KINDS[:4]))
    assert [e.name for e in events] == [
        "n.count", "old.count", "total.count", "total.sum", "mean_age.count", "mean_age.sum",
    ]  # fmt: skip
    for e in events:
        assert e.noise_std == pytest.approx(e.noise_multiplier * e.sensitivity)


def test_the_plan_is_deterministic():
    assert plan_query(_query()) == plan_query(_query())


def test_noise_comes_from_the_source_given():
    rng = np.random.default_rng(7)
    noise = draw(rng, 3.0, 200_000)
    assert noise.shape == (200_000,)
    assert noise.std() == pytest.approx(3.0, rel=0.01)
    assert abs(noise.mean()) < 0.03
    assert (
        draw(np.random.default_rng(1), 2.0, 5).tolist()
        == (np.random.default_rng(1).standard_normal(5) * 2.0).tolist()
    )
    assert draw(rng, 1.0, 0).shape == (0,)


def test_a_secure_source_fits_too():
    noise = pytest.importorskip("aidmp.privacy.noise")
    source = noise.SecureRandom()
    sample = draw(source, 2.0, 100_000)
    assert sample.dtype == np.float64 and sample.shape == (100_000,)
    assert sample.std() == pytest.approx(2.0, rel=0.02)
