"""The researcher's `aidmp explain --run DIR`: which features drive a finished
simulation's global model, centrally and federated under DP.

Heavy imports (torch, captum, Flower, the simulation code) happen inside the handler,
after the arguments are parsed and checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aidmp.errors import AidmpError

MAX_REPEATS = 20  # analytics/explain.py's (not imported here: it loads torch)


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="researcher: which features drive a finished simulation's global model",
        description="Central: permutation importance and Integrated Gradients (captum) on "
        "the held-out split, per original column. Federated: each simulated institution "
        "releases the permutation importance on its own validation rows as noisy bounded "
        "sums charged to its ledger; the coordinator combines them with standard errors. "
        "Writes RUN/explain.json and RUN/explain.png.",
    )
    p.add_argument("--run", required=True, help="the --out folder of `aidmp simulate`")
    p.add_argument(
        "--dp-epsilon",
        type=float,
        default=1.0,
        help="the federated explanation's eps at each institution (default 1)",
    )
    p.add_argument(
        "--bound",
        type=float,
        default=1.0,
        help="each row's loss difference is clipped to [-B, B] (public; default 1 nat)",
    )
    p.add_argument("--repeats", type=int, default=3, help="random orders averaged (1-20)")
    p.add_argument("--seed", type=int, default=0, help="the permutations' and samples' seed")
    p.add_argument("--central-only", action="store_true", help="skip the federated explanation")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="inprocess",
        help="inprocess (default): every institution's ClientApp in this process, one "
        "after another; ray: Flower's simulation engine",
    )
    p.set_defaults(handler=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not run.is_dir():
        raise AidmpError(f"no run folder at {run}; give the --out folder of `aidmp simulate`")
    if not args.dp_epsilon > 0:
        raise AidmpError("--dp-epsilon must be positive: every release is noised and charged")
    if not args.bound > 0:
        raise AidmpError("--bound must be positive")
    if not 1 <= args.repeats <= MAX_REPEATS:
        raise AidmpError(f"--repeats must be 1 to {MAX_REPEATS}, not {args.repeats}")
    from aidmp.simulations.explain import (  # heavy imports: late
        EXPLAIN_NAME,
        EXPLAIN_PLOT,
        explain_run,
        format_explanation,
    )

    result = explain_run(
        run,
        epsilon=args.dp_epsilon,
        bound=args.bound,
        repeats=args.repeats,
        seed=args.seed,
        federated=not args.central_only,
        engine=args.engine,
        verbose=args.verbose,
    )
    print(format_explanation(result))
    print(f"wrote {run / EXPLAIN_NAME} and {run / EXPLAIN_PLOT}")
    return 0
