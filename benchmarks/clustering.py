"""Federated k-means under DP against scikit-learn's KMeans on the pooled rows.

Adult's training rows, split among institutions (Dirichlet label skew by default), in
the job's feature space (by default every numeric column the bundled governance policy
bounds on both sides, clipped and scaled to [0, 1]; analytics/clustering.py). The peer
is scikit-learn's `KMeans` (k-means++, 10 restarts) on the pooled rows, without DP. The
score is the inertia (mean squared distance to the nearest centroid) on the held-out
split (adult.test), which no institution holds.

For each ε in {0.5, 1, 3, ∞} and each repeat (a seed: its own split, random candidates
and noise), the federated job runs through the same release and combination functions
the nodes and the coordinator run (`simulate_lloyd`: without Flower, ledgers or
governance, which do not change the figures); ε = ∞ is the same loop without noise. One
more run at ε 1 (`--stack`, on by default) goes through the real coordinator and
ClientApps in process (governance, ledgers, audit logs), on the governed rows.

    .venv/bin/python benchmarks/clustering.py [--institutions 5] [--k 4] [--repeats 10]
        [--partition dirichlet:0.5] [--rounds 6] [--no-stack]

Prints the central inertia and, per ε, the median held-out inertia over the repeats and
its ratio to the central one (the issue's goal: ≤ 1.1 without DP, ≤ 1.3 at ε 1).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aidmp.analytics.clustering import (  # noqa: E402
    feature_matrix,
    inertia,
    make_job,
    policy_features,
    simulate_lloyd,
)
from aidmp.config import RunConfig  # noqa: E402
from aidmp.governance.policy import load_policy  # noqa: E402
from aidmp.simulations.runner import bundled_policy  # noqa: E402
from aidmp.tasks import get_task, load_dataset  # noqa: E402
from aidmp.tasks.partition import partition_indices  # noqa: E402

EPSILONS = (0.5, 1.0, 3.0, math.inf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--institutions", type=int, default=5)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--no-stack", action="store_true", help="skip the run through the real ClientApps"
    )
    args = parser.parse_args(argv)
    from sklearn.cluster import KMeans

    logging.getLogger("aidmp").setLevel(logging.WARNING)
    task = get_task("adult")
    assert task.raw_train is not None and task.raw_test is not None
    policy = load_policy(bundled_policy("adult"))[0]
    features = policy_features(policy)
    print(f"features (public bounds from the policy): "
          f"{', '.join(f'{f.column} [{f.low:g}, {f.high:g}]' for f in features)}")  # fmt: skip
    raw = task.raw_train()
    pooled = feature_matrix(raw, tuple(features))
    heldout = feature_matrix(task.raw_test(), tuple(features))
    if len(pooled) != len(raw):
        raise SystemExit("a training row lacks a feature: the split below would not line up")
    started = time.process_time()
    central = KMeans(args.k, n_init=10, random_state=0).fit(pooled)
    central_inertia = inertia(heldout, central.cluster_centers_)
    cpu = time.process_time() - started
    print(f"central (scikit-learn KMeans, k-means++ x10, pooled {len(pooled)} rows, no DP): "
          f"held-out inertia {central_inertia:.5f} ({cpu:.1f} s CPU)")  # fmt: skip
    labels = load_dataset("adult").y_train
    print(f"\n{args.institutions} institutions, {args.partition}, k {args.k}, {args.rounds} "
          f"rounds, {args.repeats} repeats (seed = repeat)")  # fmt: skip
    print(f"{'eps':>6} {'median inertia':>15} {'ratio':>7} {'ratio range':>15} {'CPU s/run':>10}")
    for epsilon in EPSILONS:
        ratios, values, seconds = [], [], []
        for seed in range(args.repeats):
            split = partition_indices(labels, args.institutions, args.partition, seed)
            parts = [pooled[rows] for rows in split]
            job = make_job(features, k=args.k, epsilon=epsilon if math.isfinite(epsilon) else 1.0,
                           rounds=args.rounds, seed=seed)  # fmt: skip
            rng = np.random.default_rng(1000 + seed) if math.isfinite(epsilon) else None
            t0 = time.process_time()
            centroids, _ = simulate_lloyd(parts, job, rng)
            seconds.append(time.process_time() - t0)
            values.append(inertia(heldout, centroids))
            ratios.append(values[-1] / central_inertia)
        label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
        print(f"{label:>6} {np.median(values):>15.5f} {np.median(ratios):>7.3f} "
              f"{spread:>15} {np.median(seconds):>10.2f}")  # fmt: skip
    if not args.no_stack:
        _stack_run(args, features, central_inertia)
    return 0


def _stack_run(args: argparse.Namespace, features: list, central_inertia: float) -> None:
    """One job at ε 1 through the real coordinator and ClientApps, in process."""
    from aidmp.simulations.clustering import cluster

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.from_flower(
            {
                "task": "adult",
                "partition": args.partition,
                "out-dir": tmp,
                "governance-policy": str(bundled_policy("adult")),
                "dp": True,
                "dp-epsilon": 1.0,
                "central-eval": False,
            }
        )
        job = make_job(features, k=args.k, epsilon=1.0, rounds=args.rounds, seed=0)
        t0 = time.perf_counter()
        result = cluster(cfg, job, args.institutions, engine="inprocess")
        wall = time.perf_counter() - t0
    value = result["inertia_heldout"]
    spent = sorted(
        {round(v["epsilon_job"], 4) for v in result["privacy"]["by_institution"].values()}
    )
    print(f"\nthrough the real ClientApps (in process, governed rows, ledgers), eps 1: held-out "
          f"inertia {value:.5f}, ratio {value / central_inertia:.3f}; each ledger charged eps "
          f"{spent}; {wall:.0f} s wall")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
