"""The pure side of federated k-means (analytics/clustering.py): recovery of known
centres, the noise calibration against an independent accountant, the Lloyd step,
suppression and bad input."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from dp_accounting.pld import PLDAccountant

from aidmp.analytics.clustering import (
    ClusterError,
    Feature,
    combine_round,
    exact_stats,
    feature_matrix,
    make_job,
    parse_job,
    plan_clustering,
    release_round,
    simulate_lloyd,
)

CENTRES = np.array([[0.2, 0.2], [0.8, 0.3], [0.5, 0.8]])
FEATURES = [Feature("x", 0.0, 1.0), Feature("y", 0.0, 1.0)]
# At eps 3 (per institution, all rounds) with 3 institutions of 1,500 rows, each
# recovered centre lies within this distance of the true one (scaled space; the blobs'
# own spread is 0.03 per coordinate).
EPS3_TOLERANCE = 0.03


def _blobs(seed: int, per_centre: int = 500, spread: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(
        np.vstack([c + rng.normal(0, spread, size=(per_centre, 2)) for c in CENTRES]), 0, 1
    )


def _institutions() -> list[np.ndarray]:
    """Three institutions with skewed shares of the blobs."""
    points = _blobs(0)
    rng = np.random.default_rng(1)
    owner = rng.choice(3, size=len(points), p=[0.5, 0.3, 0.2])
    return [points[owner == i] for i in range(3)]


def _match(found: np.ndarray) -> float:
    """The largest distance from a true centre to its nearest found centroid."""
    d = np.linalg.norm(CENTRES[:, None, :] - found[None, :, :], axis=2)
    return float(d.min(axis=1).max())


def test_recovers_the_centres_without_noise() -> None:
    job = make_job(FEATURES, k=3, epsilon=1.0, rounds=5, seed=3)
    centroids, sizes = simulate_lloyd(_institutions(), job, rng=None)
    assert _match(centroids) < 0.005
    assert sorted(np.round(sizes).astype(int)) == [500, 500, 500]


def test_recovers_the_centres_within_tolerance_at_epsilon_3() -> None:
    job = make_job(FEATURES, k=3, epsilon=3.0, rounds=5, seed=3)
    for seed in range(3):
        centroids, _ = simulate_lloyd(_institutions(), job, rng=np.random.default_rng(seed))
        assert _match(centroids) < EPS3_TOLERANCE


def test_noise_is_calibrated_to_the_job_epsilon_by_an_independent_accountant() -> None:
    job = make_job(FEATURES * 1 + [Feature("z", 0, 10)], k=4, epsilon=1.0, rounds=6)
    plan = plan_clustering(job)
    # Each round: counts (sensitivity 1) and centred sums (sensitivity sqrt(d)/2), as
    # two Gaussian mechanisms; the job is six rounds of both.
    z_count = plan.count_std / 1.0
    z_sum = plan.sum_std / (math.sqrt(job.dimensions) / 2)
    accountant = PLDAccountant(value_discretization_interval=1e-4)
    events = [dp_accounting.GaussianDpEvent(z) for z in (z_count, z_sum)] * job.rounds
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    epsilon = float(accountant.get_epsilon(job.delta))
    assert 0.97 * job.epsilon < epsilon <= job.epsilon
    assert plan.spent() <= job.epsilon


def test_lloyd_step_and_small_clusters() -> None:
    points = np.array([[0.1, 0.1], [0.2, 0.1], [0.9, 0.9]])
    counts, sums = exact_stats(points, np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    assert counts.tolist() == [2, 1, 0]
    new = combine_round(np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), counts, sums)
    assert np.allclose(new, [[0.15, 0.1], [0.9, 0.9], [0.0, 1.0]])  # empty: kept
    plan = plan_clustering(make_job(FEATURES, k=1, epsilon=1.0))
    release = release_round(
        points, np.array([[0.0, 0.0], [1.0, 1.0]]), plan, np.random.default_rng(0), min_count=10**6
    )
    assert release.withheld.all() and not release.counts.any() and not release.sums.any()


def test_features_are_clipped_to_public_bounds_and_missing_rows_left_out() -> None:
    frame = pd.DataFrame({"x": [-5.0, 0.5, 7.0, None], "y": [0.0, 0.25, 1.0, 0.5]})
    points = feature_matrix(frame, (Feature("x", 0.0, 1.0), Feature("y", 0.0, 0.5)))
    assert points.tolist() == [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 2, "rounds": 1}, "rounds must be"),
        ({"k": 2, "epsilon": 0.0}, "epsilon must be"),
        ({"k": 2, "features": [Feature("x", 1.0, 1.0)]}, "low < high"),
        ({"k": 2, "features": []}, "at least one numeric feature"),
    ],
)
def test_bad_jobs_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    args = {"epsilon": 1.0} | kwargs
    features = args.pop("features", FEATURES)
    with pytest.raises(ClusterError, match=message):
        make_job(features, **args)


def test_a_job_round_trips_through_its_text_and_garbage_does_not_parse() -> None:
    job = make_job(FEATURES, k=3, epsilon=2.0, seed=7)
    assert parse_job(job.text()) == job and parse_job(job.text()).digest() == job.digest()
    with pytest.raises(ClusterError, match="not a clustering job"):
        parse_job('{"format": 1, "features": 3}')
