"""The researcher's `aidmp cluster`: federated k-means under DP over virtual institutions.

Heavy imports (Flower, TenSEAL, the simulation code) happen inside the handler, after
the arguments are parsed and checked.
"""

from __future__ import annotations

import argparse

from aidmp.cli.researcher import _engine_options, _federation_options, _policy_for, _simulation_keys
from aidmp.config import RunConfig
from aidmp.errors import AidmpError


def add_cluster(sub: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    p = sub.add_parser(
        "cluster",
        help="researcher: federated k-means under DP over virtual institutions",
        description="Lloyd iterations as rounds: each virtual institution assigns its "
        "governed rows to the current centroids and releases noisy per-cluster counts and "
        "sums (features clipped to public bounds), charged to its own privacy ledger; the "
        "coordinator adds them into new centroids. Round 1 starts from random points within "
        "the public bounds. Writes OUT/clusters.json and OUT/clusters.png.",
    )
    _federation_options(p, defaults, task_help="a tabular task: adult")
    p.add_argument("--k", type=int, required=True, help="the number of clusters")
    p.add_argument(
        "--dp-epsilon",
        type=float,
        required=True,
        help="the whole job's eps at each institution (all its rounds together)",
    )
    p.add_argument("--dp-delta", type=float, default=defaults.dp_delta)
    p.add_argument(
        "--budget",
        type=float,
        help="each simulated institution's ledger budget (default: the job's eps); "
        "ledgers live in OUT/institutions and carry over between runs in the same OUT",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="rounds: 1 for the initialization from random candidates, then Lloyd steps",
    )
    p.add_argument(
        "--features",
        help="comma-separated numeric columns, each NAME (bounds from the policy) or "
        "NAME:LOW:HIGH; default: every numeric column the policy bounds on both sides",
    )
    p.add_argument(
        "--govern",
        nargs="?",
        const="bundled",
        default="bundled",
        metavar="POLICY",
        help="every node's governance policy (default: the task's bundled example); "
        "clustering always runs on governed rows",
    )
    p.add_argument("--scenario", default="", help="made-up PII and dirty rows, e.g. 'pii:0'")
    p.add_argument(
        "--he",
        action="store_true",
        help="institutions send counts and sums as CKKS ciphertexts; the coordinator only "
        "adds them, and the researcher (who holds the simulation's keys) decrypts the sums",
    )
    p.add_argument("--keys", help="with --he: the folder of `aidmp keys init`")
    p.add_argument("--out", default="runs/cluster", help="folder for clusters.json and .png")
    _engine_options(p)
    p.set_defaults(handler=_run_cluster)


def _run_cluster(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise AidmpError(f"--k must be at least 1, not {args.k}")
    if not args.dp_epsilon > 0:
        raise AidmpError("--dp-epsilon must be positive: every release is noised and charged")
    if args.keys and not args.he:
        raise AidmpError("--keys is for encrypted releases; add --he")
    from aidmp.tasks import check_task_name
    from aidmp.tasks.partition import parse_partition

    check_task_name(args.task)
    parse_partition(args.partition)
    cfg = RunConfig.from_flower(
        {
            "task": args.task,
            "partition": args.partition,
            "seed": args.seed,
            "governance-policy": _policy_for(args),
            "governance-scenario": args.scenario,
            "out-dir": args.out,
            "dp": True,
            "dp-epsilon": args.budget if args.budget is not None else args.dp_epsilon,
            "dp-delta": args.dp_delta,
            "central-eval": False,
            "he": args.he,
            "he-keys": _simulation_keys(args) if args.he else "",
        }
    )
    from aidmp.server.clustering import CLUSTERS_NAME, CLUSTERS_PLOT
    from aidmp.simulations.clustering import cluster, clustering_job  # heavy imports: late

    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    job = clustering_job(cfg, k=args.k, epsilon=args.dp_epsilon, rounds=args.rounds,
                         features=features)  # fmt: skip
    result = cluster(cfg, job, args.institutions, verbose=args.verbose, engine=args.engine)
    answered = len(result["rounds"][-1]["answered"])
    print(
        f"{answered} institution(s) answered the last round; wrote "
        f"{args.out}/{CLUSTERS_NAME} and {args.out}/{CLUSTERS_PLOT}"
    )
    return 0
