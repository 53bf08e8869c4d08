"""The researcher's commands: `simulate`, `analyze`, `audit-privacy`, `pilot-data`.

Everything heavy (torch, Flower, Ray, the simulation code) is imported inside the
handlers, after the arguments are parsed and checked.
"""

from __future__ import annotations

import argparse

from aidmp.config import RunConfig
from aidmp.errors import AidmpError


def add_simulate(sub: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    p = sub.add_parser(
        "simulate",
        help="researcher: run a federation of virtual institutions on this machine",
        description="Run a federation of virtual institutions on Flower's simulation engine, "
        "then write OUT/summary.json and OUT/metrics.png.",
    )
    _federation_options(p, defaults, task_help="adult | breast-cancer | mnist")
    p.add_argument("--rounds", type=int, default=defaults.num_rounds)
    p.add_argument(
        "--out", default="runs/latest", help="folder for summary.json, plots, checkpoint"
    )
    p.add_argument(
        "--strategy",
        default=defaults.strategy,
        help="fedavg | fedprox | fedavgm | trimmed-mean | median",
    )
    p.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.learning_rate, help="local learning rate")
    p.add_argument("--fraction-train", type=float, default=defaults.fraction_train)
    p.add_argument("--fraction-evaluate", type=float, default=defaults.fraction_evaluate)
    p.add_argument("--min-nodes", type=int, default=defaults.min_nodes)
    p.add_argument("--proximal-mu", type=float, default=defaults.proximal_mu, help="FedProx only")
    p.add_argument(
        "--server-momentum", type=float, default=defaults.server_momentum, help="FedAvgM only"
    )
    p.add_argument(
        "--server-lr", type=float, default=defaults.server_learning_rate, help="FedAvgM only"
    )
    p.add_argument(
        "--trim-beta", type=float, default=defaults.trim_beta, help="trimmed-mean: cut per end"
    )
    p.add_argument(
        "--dp-epsilon",
        type=float,
        default=defaults.dp_epsilon,
        help="each institution's privacy budget for the whole run (DP-SGD is on by default)",
    )
    p.add_argument("--dp-delta", type=float, default=defaults.dp_delta)
    p.add_argument("--dp-max-grad-norm", type=float, default=defaults.dp_max_grad_norm)
    p.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=defaults.dp_noise_multiplier,
        help="fix sigma instead of planning it from --dp-epsilon (0: plan)",
    )
    p.add_argument(
        "--dp-metrics",
        choices=("noised", "withheld"),
        default=defaults.dp_metrics,
        help="under DP, each institution's evaluation figures: noised and charged to its "
        "ledger, or withheld",
    )
    p.add_argument(
        "--dp-metrics-share",
        type=float,
        default=defaults.dp_metrics_share,
        help="the share of the budget the run's noised figures may cost on their own",
    )
    p.add_argument(
        "--dp-mode",
        choices=("local", "distributed"),
        default=defaults.dp_mode,
        help="local: each institution noises its own DP-SGD; distributed: a round is one "
        "DP-SGD step over the pooled rows, each institution adding a 1/min-nodes share of "
        "the noise (needs --he and --min-nodes >= 3)",
    )
    p.add_argument(
        "--dp-sample-rate",
        type=float,
        default=defaults.dp_sample_rate,
        help="--dp-mode distributed: the public Poisson rate q of every institution's rows",
    )
    p.add_argument("--no-dp", action="store_true", help="train without DP-SGD (a baseline)")
    p.add_argument(
        "--client-dp",
        action="store_true",
        help="also client-level DP: nodes clip updates, the coordinator adds noise",
    )
    p.add_argument(
        "--client-dp-noise-multiplier", type=float, default=defaults.client_dp_noise_multiplier
    )
    p.add_argument(
        "--client-dp-clipping-norm", type=float, default=defaults.client_dp_clipping_norm
    )
    he = p.add_mutually_exclusive_group()
    he.add_argument(
        "--he",
        action="store_true",
        help="CKKS-encrypt every update; the coordinator keeps the model encrypted and "
        "evaluation is federated only",
    )
    he.add_argument("--no-he", action="store_true", help="plaintext updates (the default)")
    p.add_argument(
        "--keys",
        help="with --he: the folder of `aidmp keys init` (default: make one in OUT/keys)",
    )
    p.add_argument(
        "--govern",
        nargs="?",
        const="bundled",
        metavar="POLICY",
        help="run local governance at every node before each round, under POLICY "
        "(default: the task's bundled example, simulations/policies/TASK.yaml)",
    )
    p.add_argument(
        "--scenario",
        default="",
        help="with --govern: made-up PII and dirty rows at chosen institutions, "
        "e.g. 'pii:0,2;dirty:1;noconsent:3;broken:4'",
    )
    p.add_argument("--no-central-eval", action="store_true", help="skip held-out evaluation")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    _engine_options(p)
    p.set_defaults(handler=_run_simulate)


def _federation_options(p: argparse.ArgumentParser, defaults: RunConfig, task_help: str) -> None:
    """The virtual federation, as `simulate` and `analyze` both take it."""
    p.add_argument("--task", default=defaults.task, help=task_help)
    p.add_argument("--institutions", type=int, default=5, help="virtual institutions (nodes)")
    p.add_argument(
        "--partition", default="dirichlet:0.5", help="iid | dirichlet:ALPHA | quantity:ALPHA"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="ray: Flower's simulation engine (default); inprocess: every institution's "
        "ClientApp in this process, one after another, without Ray (quick, for small runs)",
    )


def _simulation_keys(args: argparse.Namespace) -> str:
    """--keys, or a throwaway ceremony in OUT/keys, announced as such."""
    from pathlib import Path

    from aidmp.privacy.he.keys import simulation_keys

    if args.keys:
        return args.keys
    folder = Path(args.out) / "keys"
    fp, made = simulation_keys(folder)
    print(
        f"HE: no --keys given, so {'made' if made else 'reusing'} a simulation-only key pair "
        f"in {folder} (fingerprint {fp[:16]}...). Every virtual institution reads its secret "
        "context from there; a real federation uses `aidmp keys init` and gives each "
        "institution its own copy."
    )
    return str(folder)


def _policy_for(args: argparse.Namespace) -> str:
    if args.govern is None:
        if args.scenario:
            raise AidmpError("--scenario needs --govern")
        return ""
    if args.govern != "bundled":
        return args.govern
    from aidmp.simulations.runner import bundled_policy

    return str(bundled_policy(args.task))


def _run_simulate(args: argparse.Namespace) -> int:
    if args.keys and not args.he:
        raise AidmpError("--keys is for encrypted runs; add --he")
    if args.he and args.no_central_eval is False:
        print("HE: evaluation is federated (the coordinator cannot read the model)")
    cfg = RunConfig.from_flower(
        {
            "task": args.task,
            "num-rounds": args.rounds,
            "strategy": args.strategy,
            "local-epochs": args.local_epochs,
            "batch-size": args.batch_size,
            "learning-rate": args.lr,
            "fraction-train": args.fraction_train,
            "fraction-evaluate": args.fraction_evaluate,
            "min-nodes": args.min_nodes,
            # The simulation waits for every institution (runner.prepare).
            "min-available-nodes": max(args.institutions, args.min_nodes),
            "proximal-mu": args.proximal_mu,
            "server-momentum": args.server_momentum,
            "server-learning-rate": args.server_lr,
            "trim-beta": args.trim_beta,
            "partition": args.partition,
            "seed": args.seed,
            "central-eval": not (args.no_central_eval or args.he),
            "he": args.he,
            "governance-policy": _policy_for(args),
            "governance-scenario": args.scenario,
            "he-keys": _simulation_keys(args) if args.he else "",
            "out-dir": args.out,
            "resume": args.resume,
            "dp": not args.no_dp,
            "dp-epsilon": args.dp_epsilon,
            "dp-delta": args.dp_delta,
            "dp-max-grad-norm": args.dp_max_grad_norm,
            "dp-noise-multiplier": args.dp_noise_multiplier,
            "dp-metrics": args.dp_metrics,
            "dp-metrics-share": args.dp_metrics_share,
            "dp-mode": args.dp_mode,
            "dp-sample-rate": args.dp_sample_rate,
            "client-dp": args.client_dp,
            "client-dp-noise-multiplier": args.client_dp_noise_multiplier,
            "client-dp-clipping-norm": args.client_dp_clipping_norm,
        }
    )
    # The runner's first checks (prepare()), made here before torch, Flower and Ray load:
    # a mistyped task or partition is answered at once, with the same message.
    from aidmp.tasks import check_task_name
    from aidmp.tasks.partition import parse_partition

    check_task_name(cfg.task)
    parse_partition(cfg.partition)
    from aidmp.server.closing import final_figure
    from aidmp.simulations.runner import PLOT_NAME, SUMMARY_NAME, simulate  # heavy imports: late

    summary = simulate(cfg, args.institutions, verbose=args.verbose, engine=args.engine)
    final, base = summary["final"], summary["centralized_baseline"]

    print(
        f"final accuracy {final_figure(final, 'accuracy')} ({final['source']}), "
        f"loss {final_figure(final, 'loss')}; "
        f"centralized baseline {base['accuracy']:.4f}; {summary['wall_seconds']:.1f}s"
    )
    privacy = summary["privacy"]
    if privacy["dp"]:
        spent = privacy["epsilon_by_institution"]
        print(
            f"DP-SGD: eps spent up to {max(spent.values(), default=0):.2f} of "
            f"{privacy['epsilon_budget']:g} per institution (delta {privacy['delta']}); "
            f"{len(privacy['declined'])} declined round(s)"
        )
        shared = privacy.get("distributed")
        if shared:
            print(
                f"distributed DP: one step a round at q={shared['sample_rate']:g}, each sum of "
                f">= {shared['min_contributions']} shares carries noise std >= "
                f"{shared['sum_noise_std_at_least']}; HE error <= {shared['he_error_bound']:.2g}"
            )
    he = summary["he"]
    if he["enabled"]:
        p = he["params"]
        print(
            f"HE: CKKS N={p['poly_modulus_degree']} moduli {p['coeff_mod_bit_sizes']} scale "
            f"2^{p['scale_bits']} ({p['security']}); {he['bytes_per_param']:.1f} bytes per "
            f"parameter per update, {he['bytes_sent_per_round'] / 1e6:.2f} MB sent per round"
        )
        held_out = he.get("held_out_by_researcher")
        if held_out:
            print(
                f"HE: the final model, decrypted afterwards with the simulation's key: "
                f"held-out accuracy {held_out['accuracy']:.4f}"
            )
    for name, g in summary["governance"]["by_institution"].items():
        detail = g.get("reason") or f"{g.get('rows-used', 'fewer than min-count')} rows used"
        pii = ", ".join(g.get("pii-columns", []))
        print(f"governance: {name} {g['decision']}: {detail}" + (f"; PII {pii}" if pii else ""))
    client_level = privacy.get("client_level")
    if client_level:
        print(
            f"client-level DP: eps {client_level['epsilon']:.2f} at delta "
            f"{client_level['delta']:g} over {client_level['releases']} release(s)"
        )
    print(f"wrote {args.out}/{SUMMARY_NAME} and {args.out}/{PLOT_NAME}")
    return 0


def add_audit_privacy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit-privacy",
        help="researcher: membership-inference attack on a finished simulation's model",
    )
    p.add_argument("--run", required=True, help="the --out folder of `aidmp simulate`")
    p.add_argument("--seed", type=int, default=0, help="seed for the member/non-member samples")
    p.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.simulations.membership import AUDIT_NAME, audit_run

    report = audit_run(Path(args.run), seed=args.seed)
    eps = report["claimed_epsilon_by_institution"]
    claim = f"eps <= {max(eps.values()):.2f}" if eps else "no DP claimed"
    print(f"membership inference on {args.run} ({claim}, delta {report['delta']})")
    print(f"  {'':16}{'attack':>11}{'AUC':>7}{'TPR@1%FPR':>11}{'members':>9}")
    rows = [("all", report["overall"]), *report["by_institution"].items()]
    for name, by_attack in rows:
        for attack, m in by_attack.items():
            print(
                f"  {name:16}{attack:>11}{m['auc']:7.3f}{m['tpr_at_1pct_fpr']:11.3f}"
                f"{m['members']:9d}"
            )
    print(f"wrote {Path(args.run) / AUDIT_NAME}")
    return 0


def add_pilot_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pilot-data",
        help="pilot: a data file and a policy per site, from a bundled dataset's real rows",
    )
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--out", required=True, help="writes OUT/site-I/rows.csv and policy.yaml")
    p.add_argument("--task", default="adult")
    p.add_argument("--rows", type=int, help="rows per site (default: an equal share of all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run_pilot_data)


def _run_pilot_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.simulations.pilot_sites import write_pilot_sites

    folders = write_pilot_sites(
        Path(args.out), args.sites, task=args.task, rows=args.rows, seed=args.seed
    )
    for folder in folders:
        print(f"wrote {folder}/rows.csv and {folder}/policy.yaml")
    return 0


def add_analyze(sub: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    p = sub.add_parser(
        "analyze",
        help="researcher: a federated statistics query over virtual institutions",
        description="Ask every virtual institution for a query's noisy partials (each runs "
        "governance, charges its own privacy ledger and withholds small counts), combine "
        "them, and write OUT/analysis.json and OUT/analysis.png. The budget table is "
        "printed before anything runs.",
    )
    p.add_argument("--query", required=True, help="the query YAML (see simulations/queries/)")
    p.add_argument("--out", default="runs/analysis", help="folder for analysis.json and .png")
    _federation_options(p, defaults, task_help="a tabular task: adult")
    p.add_argument(
        "--govern",
        nargs="?",
        const="bundled",
        default="bundled",
        metavar="POLICY",
        help="every node's governance policy (default: the task's bundled example); "
        "analytics always runs on governed rows",
    )
    p.add_argument(
        "--scenario",
        default="",
        help="made-up PII and dirty rows at chosen institutions, e.g. 'pii:0,2;dirty:1'",
    )
    p.add_argument(
        "--dp-epsilon",
        type=float,
        default=defaults.dp_epsilon,
        help="each institution's privacy budget (its ledger in OUT/institutions)",
    )
    p.add_argument("--dp-delta", type=float, default=defaults.dp_delta)
    p.add_argument(
        "--he",
        action="store_true",
        help="institutions send their partials as CKKS ciphertexts; the coordinator only "
        "adds them, and the researcher (who holds the simulation's keys) decrypts the sum",
    )
    p.add_argument(
        "--keys",
        help="with --he: the folder of `aidmp keys init` (default: make one in OUT/keys)",
    )
    _engine_options(p)
    p.set_defaults(handler=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.analytics import load_query

    query, _ = load_query(Path(args.query))  # a bad query: one line, before anything loads
    if args.keys and not args.he:
        raise AidmpError("--keys is for encrypted partials; add --he")
    cfg = RunConfig.from_flower(
        {
            "task": args.task,
            "partition": args.partition,
            "seed": args.seed,
            "governance-policy": _policy_for(args),
            "governance-scenario": args.scenario,
            "out-dir": args.out,
            "dp": True,
            "dp-epsilon": args.dp_epsilon,
            "dp-delta": args.dp_delta,
            "central-eval": False,
            "he": args.he,
            "he-keys": _simulation_keys(args) if args.he else "",
        }
    )
    from aidmp.tasks import check_task_name
    from aidmp.tasks.partition import parse_partition

    check_task_name(cfg.task)
    parse_partition(cfg.partition)
    from aidmp.server.analysis import ANALYSIS_NAME, ANALYSIS_PLOT
    from aidmp.simulations.analysis import analyze  # heavy imports: late

    result = analyze(cfg, query, args.institutions, verbose=args.verbose, engine=args.engine)
    answered = len(result["institutions"]["answered"])
    print(
        f"{answered} of {result['institutions']['asked']} institution(s) answered; "
        f"wrote {args.out}/{ANALYSIS_NAME} and {args.out}/{ANALYSIS_PLOT}"
    )
    return 0
