"""Analytics end to end, without Flower: a fixed table split over five institutions,
noisy partials at each, the coordinator's combination; many seeded repetitions check
that every estimate is unbiased (or its bias is small and stated) and that its
reported std_error is its actual spread. And min_count suppression."""

import json

import numpy as np
import pandas as pd
import pytest

from aidmp.analytics.combine import CombineError, combine, isotonic
from aidmp.analytics.local import exact_components, exact_partials, local_partials, release
from aidmp.analytics.mechanisms import plan_query
from aidmp.analytics.query import Query

SIZES = [600, 900, 1200, 1500, 1800]
REPS = 1000
HOURS_BINS = [0, 20, 35, 40, 45, 60, 100]
EDUCATION = ["Bachelors", "HS-grad", "Masters"]  # "Doctorate" is in the data, in no bin
Q = [0.1, 0.25, 0.5, 0.75, 0.9]

STATISTICS = [
    {"name": "n", "count": {}},
    {"name": "n_over_65", "count": {"where": "age > 65"}},
    {"name": "hours_total", "sum": {"column": "hours-per-week", "bounds": [1, 99]}},
    {"name": "mean_age", "mean": {"column": "age", "bounds": [17, 90]}},
    {"name": "var_hours", "variance": {"column": "hours-per-week", "bounds": [1, 99]}},
    {"name": "hours", "histogram": {"column": "hours-per-week", "bins": HOURS_BINS}},
    {"name": "education", "histogram": {"column": "education", "categories": EDUCATION}},
    {"name": "age_q", "quantiles": {"column": "age", "q": Q, "bounds": [17, 90]}},
    {
        "name": "sex_income",
        "crosstab": {
            "rows": "sex",
            "columns": "income",
            "row_categories": ["Female", "Male"],
            "column_categories": ["<=50K", ">50K"],
        },
    },
]


def _table() -> pd.DataFrame:
    r = np.random.default_rng(20260101)
    n = sum(SIZES)
    age = np.clip(17 + r.gamma(3.0, 7.0, n).round(), 17, 95)  # a few above 90: clipped
    age[r.random(n) < 0.02] = np.nan  # missing: in no statistic on age
    return pd.DataFrame(
        {
            "age": age,
            "hours-per-week": np.clip(r.normal(40, 12, n).round(), 1, 99),
            "sex": r.choice(["Male", "Female"], n, p=[0.6, 0.4]),
            "income": r.choice(["<=50K", ">50K"], n, p=[0.75, 0.25]),
            "education": r.choice(EDUCATION + ["Doctorate"], n),
        }
    )


def _sites(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    cuts = np.cumsum([0, *SIZES])
    return {f"site-{i}": frame.iloc[cuts[i] : cuts[i + 1]] for i in range(len(SIZES))}


def _plan(epsilon: float = 1.0, statistics=None, min_count=None):
    query = Query.model_validate(
        {"epsilon": epsilon, "min_count": min_count, "statistics": statistics or STATISTICS}
    )
    return plan_query(query)


class _NoNoise:
    def standard_normal(self, n):
        return np.zeros(n)


def _truth(frame: pd.DataFrame) -> dict:
    """Every statistic computed directly with pandas on the pooled rows."""
    age = frame["age"].dropna().clip(17, 90)
    hours = frame["hours-per-week"].clip(1, 99)
    return {
        "n": len(frame),
        "n_over_65": int((frame["age"] > 65).sum()),
        "hours_total": hours.sum(),
        "mean_age": age.mean(),
        "var_hours": hours.var(ddof=1),
        "hours": np.histogram(hours, HOURS_BINS)[0],
        "education": frame["education"].value_counts().reindex(EDUCATION).to_numpy(),
        "sex_income": pd.crosstab(frame["sex"], frame["income"]).to_numpy(),
        "age_pooled_quantiles": np.quantile(age, Q),
    }


@pytest.fixture(scope="module")
def runs():
    """REPS independent noisy releases of the query, combined, and the truth."""
    frame = _table()
    plan = _plan()
    exact = {site: exact_partials(rows, plan) for site, rows in _sites(frame).items()}
    rng = np.random.default_rng(1)
    results = [
        combine(plan, {s: release(e, plan, rng, min_count=0) for s, e in exact.items()})
        for _ in range(REPS)
    ]
    noise_free = combine(
        plan, {s: release(e, plan, _NoNoise(), min_count=0) for s, e in exact.items()}
    )
    return plan, results, _truth(frame), noise_free


def _series(results, name, field="value"):
    return np.array([np.ravel(r["statistics"][name][field]) for r in results], dtype=float)


@pytest.mark.parametrize(
    "name", ["n", "n_over_65", "hours_total", "mean_age", "var_hours", "hours", "education",
             "sex_income"],
)  # fmt: skip
def test_each_estimate_is_unbiased_and_its_std_error_is_its_spread(runs, name):
    """Counts, sums and cells are exactly unbiased; the mean's and the variance's bias
    (ratios of noisy sums) is of order (σ_n/n)², far inside this tolerance. Every
    std_error is the estimate's real spread over repetitions (within sampling error)
    and the 95% interval covers the truth 95% of the time."""
    plan, results, truth, _ = runs
    est, se = _series(results, name), _series(results, name, "std_error")
    exact = np.ravel(truth[name]).astype(float)
    spread = est.std(axis=0, ddof=1)
    # Unbiased: the mean of REPS estimates is within 4 standard errors of the truth.
    assert np.all(np.abs(est.mean(axis=0) - exact) <= 4 * spread / np.sqrt(REPS)), (
        est.mean(axis=0) - exact
    )
    # The reported std_error is the empirical spread (σ of an SD estimate: ~2.2%).
    assert np.all(np.abs(spread / se.mean(axis=0) - 1) < 0.1), spread / se.mean(axis=0)
    ci = np.array([np.reshape(r["statistics"][name]["ci95"], (-1, 2)) for r in results])
    covered = ((ci[..., 0] <= exact) & (exact <= ci[..., 1])).mean(axis=0)
    assert np.all((covered > 0.925) & (covered < 0.975)), covered
    stat = plan.statistic(name)
    assert results[0]["statistics"][name]["epsilon"] == pytest.approx(stat.epsilon)
    assert results[0]["statistics"][name]["institutions"] == len(SIZES)


def test_linear_error_bars_follow_from_sigma_alone(runs):
    plan, results, _, _ = runs
    k = len(SIZES)
    sigma = plan.statistic("n").component("count").noise_std
    assert results[0]["statistics"]["n"]["std_error"] == pytest.approx(np.sqrt(k) * sigma)
    hist = plan.statistic("hours").component("counts").noise_std
    assert results[0]["statistics"]["hours"]["std_error"] == pytest.approx(
        [np.sqrt(k) * hist] * (len(HOURS_BINS) - 1)
    )
    total = plan.statistic("hours_total")
    c = 50.0  # the midpoint of [1, 99]
    sigma_sum, sigma_n = total.component("sum").noise_std, total.component("count").noise_std
    var = k * (sigma_sum**2 + c**2 * sigma_n**2)
    assert results[0]["statistics"]["hours_total"]["std_error"] == pytest.approx(np.sqrt(var))


def test_quantiles_bias_is_small_and_their_error_bars_honest(runs):
    """Quantiles from the summed noisy grid histogram: without noise, within one grid bin
    of the pooled rows' quantiles; with noise, a bias under a quarter of the spread (the
    isotonic fit and the inversion are not linear), a std_error within 15% of the real
    spread, and an interval (±half a bin on top) that covers the grid quantile at least
    95% of the time."""
    plan, results, truth, noise_free = runs
    resolution = noise_free["statistics"]["age_q"]["resolution"]
    assert resolution == pytest.approx((90 - 17) / 32)
    grid_q = np.array(noise_free["statistics"]["age_q"]["value"])
    assert np.all(np.abs(grid_q - truth["age_pooled_quantiles"]) <= resolution)
    est, se = _series(results, "age_q"), _series(results, "age_q", "std_error")
    spread = est.std(axis=0, ddof=1)
    assert np.all(np.abs(est.mean(axis=0) - grid_q) <= 0.25 * spread), est.mean(0) - grid_q
    assert np.all(np.abs(spread / se.mean(axis=0) - 1) < 0.15), spread / se.mean(axis=0)
    ci = np.array([r["statistics"]["age_q"]["ci95"] for r in results])
    covered = ((ci[..., 0] <= grid_q) & (grid_q <= ci[..., 1])).mean(axis=0)
    assert np.all(covered >= 0.95), covered
    assert np.all((ci[..., 0] >= 17) & (ci[..., 1] <= 90))
    assert np.all(np.diff(est, axis=1) >= 0)  # monotone in q


def test_the_result_is_json_and_shaped_for_analysis_json(runs):
    plan, results, _, _ = runs
    result = combine(
        plan,
        {f"site-{i}": local_partials(rows, plan, np.random.default_rng(i), min_count=10)
         for i, rows in enumerate(_sites(_table()).values())},
        declined={"site-9": "budget"},
    )  # fmt: skip
    json.dumps(result, allow_nan=False)
    assert set(result) == {"query", "statistics", "privacy"}
    assert result["query"] == {"digest": plan.digest, "epsilon": 1.0, "delta": 1e-5}
    for name, stat in result["statistics"].items():
        assert {"value", "std_error", "ci95", "epsilon", "institutions", "withheld"} <= set(stat)
        assert stat["institutions"] == 5, name
    assert result["statistics"]["sex_income"]["rows"] == ["Female", "Male"]
    assert np.shape(result["statistics"]["sex_income"]["value"]) == (2, 2)
    assert np.shape(result["statistics"]["sex_income"]["ci95"]) == (2, 2, 2)
    assert result["statistics"]["hours"]["bins"] == HOURS_BINS
    assert "stddev" in result["statistics"]["var_hours"]
    privacy = result["privacy"]
    assert privacy["declined"] == {"site-9": "budget"}
    assert privacy["delta"] == 1e-5
    assert 0.99 <= privacy["epsilon_per_institution"] <= 1.0
    assert sorted(privacy["epsilon_by_institution"]) == [f"site-{i}" for i in range(5)]


def test_exact_components_follow_the_documented_rules():
    frame = pd.DataFrame(
        {
            "x": [1.0, 5.0, np.nan, 12.0, -3.0, 5.0],
            "s": ["a", "b", "a", None, "c", " a"],
            "t": ["u", "u", "v", "v", "u", "w"],
        }
    )
    stats = [
        {"name": "n", "count": {"where": "x >= 5"}},
        {"name": "m", "variance": {"column": "x", "bounds": [0, 10]}},
        {"name": "h", "histogram": {"column": "x", "bins": [0, 2, 5, 8]}},
        {"name": "c", "histogram": {"column": "s", "categories": ["a", "b"]}},
        {"name": "q", "quantiles": {"column": "x", "q": [0.5], "bounds": [0, 10], "grid": 5}},
        {
            "name": "t",
            "crosstab": {
                "rows": "s",
                "columns": "t",
                "row_categories": ["a", "b"],
                "column_categories": ["u", "v"],
            },
        },
    ]
    plan = _plan(statistics=stats)
    got = {s.name: exact_components(frame, s) for s in plan.statistics}
    assert got["n"]["count"].tolist() == [3]  # the missing x fails the filter
    clipped = np.array([1, 5, 10, 0, 5]) - 5.0  # missing left out, clipped, centred
    assert got["m"]["count"].tolist() == [5]
    assert got["m"]["sum"].tolist() == [clipped.sum()]
    assert got["m"]["sumsq"].tolist() == [(clipped**2).sum()]
    # [0,2) [2,5) [5,8]: 12 falls in the last bin, -3 in the first.
    assert got["h"]["counts"].tolist() == [2, 0, 3]
    assert got["c"]["counts"].tolist() == [3, 1]  # " a" is "a"; "c" and None in no bin
    assert got["q"]["counts"].tolist() == [2, 0, 2, 0, 1]  # 10 lands in the closed last bin
    assert got["t"]["counts"].tolist() == [1, 1, 1, 0]  # a-w is not a cell


def test_min_count_suppression_never_releases_a_small_count():
    frame = pd.DataFrame({"age": [70.0] * 3 + [30.0] * 200, "sex": ["F"] * 3 + ["M"] * 200})
    stats = [
        {"name": "old", "count": {"where": "age > 65"}},
        {"name": "old_age", "mean": {"column": "age", "bounds": [0, 100], "where": "age > 65"}},
        {"name": "sex", "histogram": {"column": "sex", "categories": ["F", "M"]}},
        {
            "name": "tab",
            "crosstab": {
                "rows": "sex",
                "columns": "sex",
                "row_categories": ["F", "M"],
                "column_categories": ["F", "M"],
            },
        },
    ]
    min_count = 10
    for epsilon, never in ((1.0, False), (20.0, True)):
        plan = _plan(epsilon, stats)
        exact = exact_partials(frame, plan)
        rng = np.random.default_rng(3)
        for _ in range(300):
            partial = release(exact, plan, rng, min_count=min_count)
            old = partial["statistics"]["old"]
            value = old["components"]["count"]["value"]
            assert value is None or value >= min_count
            assert old["withheld"] == (value is None)
            mean = partial["statistics"]["old_age"]["components"]
            if mean["count"]["value"] is None:
                assert mean["sum"]["value"] is None  # a sum over few rows goes too
            else:
                assert mean["count"]["value"] >= min_count
            for name in ("sex", "tab"):
                cells = partial["statistics"][name]["components"]["counts"]["value"]
                assert all(c is None or c >= min_count for c in cells)
                assert partial["statistics"][name]["withheld"] == sum(c is None for c in cells)
            if never:  # σ well under the gap: the 3 rows are never released
                assert value is None and mean["count"]["value"] is None
                assert partial["statistics"]["sex"]["components"]["counts"]["value"][0] is None


def test_a_withheld_value_is_missing_in_the_combination():
    big = pd.DataFrame({"age": [70.0] * 500})
    small = pd.DataFrame({"age": [70.0] * 2})
    stats = [
        {"name": "n", "count": {}},
        {"name": "m", "mean": {"column": "age", "bounds": [0, 100]}},
        {"name": "h", "histogram": {"column": "age", "bins": [0, 50, 100]}},
    ]
    plan = _plan(30.0, stats)
    rng = np.random.default_rng(0)
    partials = {
        "a": local_partials(big, plan, rng, min_count=10),
        "b": local_partials(big, plan, rng, min_count=10),
        "c": local_partials(small, plan, rng, min_count=10),
    }
    result = combine(plan, partials)["statistics"]
    n = result["n"]
    assert (n["institutions"], n["withheld"]) == (2, 1)
    assert n["value"] == pytest.approx(
        sum(partials[s]["statistics"]["n"]["components"]["count"]["value"] for s in "ab")
    )
    assert (result["m"]["institutions"], result["m"]["withheld"]) == (2, 1)
    assert result["m"]["value"] == pytest.approx(70, abs=0.5)
    h = result["h"]  # the first bin is empty everywhere: withheld by all three
    assert h["value"][0] is None and h["std_error"][0] is None and h["ci95"][0] is None
    assert h["cell_institutions"] == [0, 2]
    assert h["withheld"] == 4 and h["institutions"] == 2


def test_combine_refuses_foreign_or_malformed_partials():
    plan = _plan(1.0, STATISTICS[:3])
    frame = _table().iloc[:500]
    good = local_partials(frame, plan, np.random.default_rng(0), min_count=0)
    combine(plan, {"a": good})

    def broken(edit):
        partial = json.loads(json.dumps(good))
        edit(partial)
        return partial

    other = _plan(2.0, STATISTICS[:3])
    cases = {
        "another query": local_partials(frame, other, np.random.default_rng(0), min_count=0),
        "not a finite": broken(
            lambda p: p["statistics"]["n"]["components"]["count"].update(value="12")
        ),
        "σ must be": broken(
            lambda p: p["statistics"]["n"]["components"]["count"].update(sigma=-1.0)
        ),
        "no statistic": broken(lambda p: p["statistics"].pop("hours_total")),
        "format": broken(lambda p: p.update(format=99)),
        "missing": broken(lambda p: p["statistics"]["hours_total"]["components"].pop("sum")),
    }
    for words, partial in cases.items():
        with pytest.raises(CombineError, match=words):
            combine(plan, {"a": good, "b": partial})
    hist = _plan(1.0, [STATISTICS[5]])
    wrong = local_partials(frame, hist, np.random.default_rng(0), min_count=0)
    wrong["statistics"]["hours"]["components"]["counts"]["value"].append(1.0)
    with pytest.raises(CombineError, match="expected 6"):
        combine(hist, {"a": wrong})


def test_no_institution_answered():
    result = combine(_plan(1.0, STATISTICS), {})
    for stat in result["statistics"].values():
        assert stat["value"] is None and stat["institutions"] == 0
    json.dumps(result, allow_nan=False)


def test_isotonic_regression():
    assert isotonic(np.array([0.0, 3, 1, 2, 5])).tolist() == [0, 2, 2, 2, 5]
    assert isotonic(np.array([3.0, 2, 1])).tolist() == [2, 2, 2]
    y = np.random.default_rng(0).normal(size=200).cumsum()
    fit = isotonic(y)
    assert np.all(np.diff(fit) >= -1e-12) and fit.sum() == pytest.approx(y.sum())


def test_a_secure_noise_source_works_end_to_end():
    noise = pytest.importorskip("aidmp.privacy.noise")
    plan = _plan(1.0, STATISTICS)
    partial = local_partials(_table(), plan, noise.SecureRandom(), min_count=10)
    result = combine(plan, {"a": partial})
    assert result["statistics"]["n"]["value"] == pytest.approx(sum(SIZES), abs=100)
