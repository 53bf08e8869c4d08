"""How close federated statistics come to the exact pooled figures, at a given ε.

Adult, split among institutions (Dirichlet label skew by default), every institution
running the bundled governance policy. For each repeat (a seed: its own split and its
own noise), the example query (simulations/queries/adult.yaml, at --epsilon per
institution) runs through the real coordinator and ClientApps in process, with real
ledgers; the exact pooled value of each statistic is computed from the same governed
rows without noise. Beside it, where `opendp` is installed, OpenDP's central-DP
estimate of the scalar statistics on the pooled rows at the same (ε, δ) (zCDP Gaussian,
the ρ whose ε at δ is the query's, split evenly over its measurements: each count, and
each mean's sum and count). OpenDP spends the whole ε on the scalars only; the federated
query spends it on all its statistics, histograms and quantiles included, at every
institution, and each institution's noise adds up in the pooled figure.

    .venv/bin/python benchmarks/analytics_accuracy.py [--institutions 5] [--epsilon 1]
        [--partition dirichlet:0.5] [--repeats 3]

Prints, per statistic: the exact pooled value (first repeat), the mean absolute error of
the federated figure over the repeats (for a histogram or quantiles: the largest cell's),
the standard error it reported, and OpenDP's mean absolute error.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aidmp.analytics import combine, exact_partials, load_query, plan_query, release  # noqa: E402
from aidmp.client.governed import governed_data  # noqa: E402
from aidmp.config import RunConfig  # noqa: E402
from aidmp.governance.policy import load_policy  # noqa: E402
from aidmp.round_config import RoundConfig  # noqa: E402
from aidmp.server.analysis import run_analysis  # noqa: E402
from aidmp.server.round_settings import round_config_for  # noqa: E402
from aidmp.simulations.inprocess import InProcessGrid  # noqa: E402
from aidmp.simulations.runner import bundled_policy, prepare  # noqa: E402

QUERY = ROOT / "simulations" / "queries" / "adult.yaml"


class _Zero:
    """A noise source that adds none: the exact figures, through the same code."""

    def standard_normal(self, size: int) -> np.ndarray:
        return np.zeros(size)


def _governed_frames(cfg: RunConfig, institutions: int) -> list[pd.DataFrame]:
    config = RoundConfig.from_record(round_config_for(cfg, 1))
    frames = []
    for i in range(institutions):
        node = {"partition-id": i, "num-partitions": institutions}
        governed = governed_data(node, config, None)
        assert governed is not None and governed.frame is not None
        frames.append(governed.frame)
    return frames


def _as_list(value: Any) -> list[float | None]:
    if isinstance(value, list):
        flat = [x for row in value for x in row] if value and isinstance(value[0], list) else value
        return [None if x is None else float(x) for x in flat]
    return [None if value is None else float(value)]


def _error(estimate: Any, exact: Any) -> float:
    pairs = [
        abs(e - x)
        for e, x in zip(_as_list(estimate), _as_list(exact), strict=True)
        if e is not None and x is not None
    ]
    return max(pairs) if pairs else math.nan


def _rho(epsilon: float, delta: float) -> float:
    """The zCDP ρ whose (ε, δ) guarantee is `epsilon` at `delta`: ε = ρ + 2√(ρ ln 1/δ)."""
    log_term = math.log(1 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def _opendp(pooled: pd.DataFrame, epsilon: float, delta: float) -> dict[str, float] | None:
    try:
        import opendp.prelude as dp
    except ImportError:
        return None
    dp.enable_features("contrib")
    age = pooled["age"].astype(float).tolist()
    hours = pooled["hours-per-week"].astype(float).tolist()
    old = [a for a in age if a > 65]
    measurements = 6  # rows, over_65, and a sum and a count for each of the two means
    rho = _rho(epsilon, delta)
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))

    def ctx(data: list[float]) -> Any:
        return dp.Context.compositor(
            data=data,
            privacy_unit=dp.unit_of(contributions=1),
            privacy_loss=dp.loss_of(rho=rho / measurements),
            split_evenly_over=1,
            domain=domain,
        )

    def count(data: list[float]) -> float:
        return float(ctx(data).query().count().gaussian().release())

    def total(data: list[float], lo: float, hi: float) -> float:
        return float(ctx(data).query().clamp((lo, hi)).sum().gaussian().release())

    return {
        "rows": count(age),
        "over_65": count(old),
        "mean_age": total(age, 17.0, 90.0) / count(age),
        "mean_hours": total(hours, 1.0, 99.0) / count(hours),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--institutions", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0, help="the query's ε per institution")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0, 1, ...")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("aidmp").setLevel(logging.WARNING)

    base, _ = load_query(QUERY)
    query = base.model_copy(update={"epsilon": args.epsilon})
    policy = load_policy(bundled_policy("adult"))[0]
    errors: dict[str, list[float]] = {}
    reported: dict[str, list[float]] = {}
    central: dict[str, list[float]] = {}
    exact_first: dict[str, Any] = {}
    started = time.monotonic()
    cap = {"analytics-max-epsilon": max(1.0, args.epsilon)}  # each node's cap lets it run
    for seed in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cfg = prepare(
                RunConfig.from_flower(
                    {
                        "task": "adult",
                        "partition": args.partition,
                        "seed": seed,
                        "out-dir": out,
                        "governance-policy": str(bundled_policy("adult")),
                        "dp": True,
                        "dp-epsilon": max(10.0, 2 * args.epsilon),
                        "central-eval": False,
                    }
                ),
                args.institutions,
            )
            grid = InProcessGrid(args.institutions, node_config=lambda i: cap)
            result = run_analysis(grid, query, cfg, run_id=str(grid.run.run_id), quiet=True)
            frames = _governed_frames(cfg, args.institutions)
        plan = plan_query(query, policy)
        exact = combine(
            plan,
            {
                f"i{i}": release(exact_partials(f, plan), plan, _Zero(), min_count=0)
                for i, f in enumerate(frames)
            },
        )["statistics"]
        central_release = _opendp(pd.concat(frames, ignore_index=True), args.epsilon, query.delta)
        for name, stat in result["statistics"].items():
            exact_first.setdefault(name, exact[name]["value"])
            errors.setdefault(name, []).append(_error(stat["value"], exact[name]["value"]))
            se = [s for s in _as_list(stat["std_error"]) if s is not None]
            reported.setdefault(name, []).append(max(se) if se else math.nan)
            if central_release is not None and name in central_release:
                central.setdefault(name, []).append(
                    abs(central_release[name] - exact[name]["value"])
                )
    print(
        f"Adult, {args.institutions} institutions, {args.partition}, ε {args.epsilon:g} per "
        f"institution (δ {query.delta:g}), {args.repeats} repeat(s), "
        f"{time.monotonic() - started:.0f} s"
    )
    print(f"{'statistic':<16} {'exact (seed 0)':>16} {'fed |err|':>11} {'fed se':>9} "
          f"{'OpenDP |err|':>13}")  # fmt: skip
    for name in errors:
        shown = exact_first[name]
        text = f"{shown:.6g}" if not isinstance(shown, list) else f"{len(_as_list(shown))} cells"
        opendp_err = f"{np.mean(central[name]):.4g}" if name in central else "-"
        print(
            f"{name:<16} {text:>16} {np.nanmean(errors[name]):>11.4g} "
            f"{np.nanmean(reported[name]):>9.4g} {opendp_err:>13}"
        )
    if not central:
        print("(OpenDP not installed: `.venv/bin/pip install opendp` for its column)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
