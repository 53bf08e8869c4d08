"""The `aidmp` command: `simulate` for researchers, `ledger` for institutions.

Errors a user can fix print one line (`aidmp: error: ...`) and exit 2, with no
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from aidmp.config import RunConfig
from aidmp.errors import AidmpError

EXIT_USAGE = 2


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    p = sub.add_parser(
        "simulate",
        help="researcher: run a federation of virtual institutions on this machine",
        description="Run a federation of virtual institutions on Flower's simulation engine, "
        "then write OUT/summary.json and OUT/metrics.png.",
    )
    p.add_argument("--task", default=defaults.task, help="adult | breast-cancer | mnist")
    p.add_argument("--institutions", type=int, default=5, help="virtual institutions (nodes)")
    p.add_argument("--rounds", type=int, default=defaults.num_rounds)
    p.add_argument(
        "--partition", default="dirichlet:0.5", help="iid | dirichlet:ALPHA | quantity:ALPHA"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
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
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.set_defaults(handler=_run_simulate)


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
            "client-dp": args.client_dp,
            "client-dp-noise-multiplier": args.client_dp_noise_multiplier,
            "client-dp-clipping-norm": args.client_dp_clipping_norm,
        }
    )
    from aidmp.simulations.runner import PLOT_NAME, SUMMARY_NAME, simulate  # heavy imports: late

    summary = simulate(cfg, args.institutions, verbose=args.verbose)
    final, base = summary["final"], summary["centralized_baseline"]
    print(
        f"final accuracy {final['accuracy']:.4f} ({final['source']}), loss {final['loss']:.4f}; "
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


def _ledger_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="institution: show, verify or reset a privacy ledger")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("show", "spend per run and round"),
        ("verify", "recompute eps from the stored history and check the recorded figures"),
    ):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("path", help="a ledger.json, or the node's state folder holding one")
        v.set_defaults(handler=_run_ledger)
    r = verbs.add_parser("reset", help="set a ledger aside and start the dataset afresh (logged)")
    r.add_argument("path", help="the node's state folder, or its ledger.json")
    r.add_argument("--reason", required=True, help="why; written to ledger-admin.log")
    r.set_defaults(handler=_run_ledger)


def _run_ledger(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.privacy.ledger import LEDGER_NAME, PrivacyLedger, reset_ledger

    path = Path(args.path)
    folder, file = (path, path / LEDGER_NAME) if path.is_dir() else (path.parent, path)
    if args.verb == "reset":
        import getpass

        kept = reset_ledger(folder, reason=args.reason, who=getpass.getuser())
        print(f"ledger reset in {folder}" + (f"; the old one is kept as {kept}" if kept else ""))
        return 0
    ledger = PrivacyLedger.load(file)
    if args.verb == "show":
        print(
            f"{file}\n  dataset {ledger.dataset[:16]}…  budget eps {ledger.budget:g}  "
            f"delta {ledger.delta:g}  accountant {ledger.accountant}"
        )
        print(
            f"  {'job':>20} {'run':>20} {'round':>5} {'sigma':>8} {'q':>8} {'steps':>6} "
            f"{'eps after':>9}"
        )
        for e in ledger.entries:
            # A round of a job released again (a coordinator restarted mid-round) is
            # charged again, and marked here.
            again = f"  release {e['release']}" if e.get("release", 1) > 1 else ""
            print(
                f"  {e.get('job_id', e['run_id']):>20} {e['run_id']:>20} {e['round']:>5} "
                f"{e['noise_multiplier']:8.4f} {e['sample_rate']:8.5f} {e['steps']:6d} "
                f"{e['epsilon_after']:9.4f}{again}"
            )
        print(f"  spent eps {ledger.spent():.4f} of {ledger.budget:g}")
        return 0
    problems = ledger.verify()
    for problem in problems:
        print(f"MISMATCH {problem}")
    if problems:
        return 1
    print(f"ok: {len(ledger.entries)} entries; eps {ledger.spent():.4f} recomputed and matches")
    return 0


def _audit_parser(sub: argparse._SubParsersAction) -> None:
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


def _keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="key dealer: the CKKS key ceremony")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="make institution.ckks, coordinator.ckks, fingerprint")
    init.add_argument("--out", required=True, help="folder for the three files")
    init.set_defaults(handler=_run_keys)
    inspect = verbs.add_parser("inspect", help="parameters, key kind, fingerprint, security")
    inspect.add_argument("file")
    inspect.set_defaults(handler=_run_keys)


def _run_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.privacy.he.keys import (
        COORDINATOR_FILE,
        INSTITUTION_FILE,
        inspect_key_file,
        key_ceremony,
    )

    if args.verb == "init":
        out = Path(args.out)
        fp = key_ceremony(out)
        print(f"wrote {out / INSTITUTION_FILE} (secret: give to every institution, out of band)")
        print(f"wrote {out / COORDINATOR_FILE} (public: give to the coordinator)")
        print(f"fingerprint {fp}")
        return 0
    for key, value in inspect_key_file(Path(args.file)).items():
        print(f"{key:20} {value}")
    return 0


def _govern_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("govern", help="institution: check data against a governance policy")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="draft a policy from the data, for review")
    init.add_argument("data", help="a CSV or Parquet file")
    init.add_argument("--out", required=True, help="where to write the draft policy YAML")
    init.add_argument("--label", help="the label column (default: the last column)")
    init.set_defaults(handler=_run_govern)
    check = verbs.add_parser(
        "check", help="run the pipeline; exit 0 if the data passes, 1 with reasons if not"
    )
    check.add_argument("data", help="a CSV or Parquet file")
    check.add_argument("--policy", required=True, help="the institution's policy YAML")
    check.add_argument("--report", help="folder for the full report (JSON and HTML)")
    check.set_defaults(handler=_run_govern)


def _run_govern(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.governance.load import load_table
    from aidmp.governance.policy import load_policy

    data = Path(args.data)
    if args.verb == "init":
        from aidmp.governance.draft import draft_policy, write_draft

        out = Path(args.out)
        if out.exists():
            raise AidmpError(f"{out} exists; choose another --out, or remove it deliberately")
        frame = load_table(data)
        if args.label and args.label not in frame.columns:
            raise AidmpError(f"--label {args.label!r} is not a column of {data}")
        draft = draft_policy(frame, args.label)
        write_draft(draft, data, out)
        tags = [f"{c}={r['tag']}" for c, r in draft["columns"].items() if r["tag"] != "public"]
        print(f"wrote {out}: {len(draft['columns'])} columns, label {draft['label']!r}")
        print("tagged: " + (", ".join(tags) or "nothing"))
        print("review it before use: every line was inferred from the data")
        return 0
    from aidmp.governance.pipeline import govern, site_secret
    from aidmp.governance.report import local_report, write_reports

    policy, sha = load_policy(Path(args.policy))
    result = govern(load_table(data, encoding=policy.encoding, delimiter=policy.delimiter),
                    policy, site_secret(policy))  # fmt: skip
    report = local_report(result, policy, sha, str(data))
    if args.report:
        json_path, html_path = write_reports(report, Path(args.report))
        print(f"wrote {json_path} and {html_path}")
    print(f"rows: {report['rows_in']} in, {report['rows_used']} used; removed {report['removed']}")
    for column, spec in sorted(result.pii.items()):
        print(f"PII: {column} {spec}")
    if result.admitted:
        print(f"PASS: {data} meets {args.policy}")
        return 0
    for reason in result.local_reasons:
        print(f"FAIL: {reason}")
    return 1


def _pilot_data_parser(sub: argparse._SubParsersAction) -> None:
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


def _audit_log_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="institution: the audit log of what left the site")
    verbs = p.add_subparsers(dest="verb", required=True)
    verify = verbs.add_parser("verify", help="check the hash chain; name any edited entry")
    verify.add_argument("path", help="an audit.jsonl, or the node's state folder holding one")
    verify.set_defaults(handler=_run_audit_log)


def _run_audit_log(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.privacy.audit import AUDIT_NAME, summarize, verify_audit_log

    path = Path(args.path)
    path = path / AUDIT_NAME if path.is_dir() else path
    problems = verify_audit_log(path)
    if not problems:
        info = summarize(path)
        print(f"OK: {path} is intact; {json.dumps(info, default=str)}")
        return 0
    for p in problems:
        print(f"line {p.line} (seq {p.seq}): {p.problem}")
    print(f"TAMPERED: {len(problems)} problem(s) in {path}")
    return 1


def _certs_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="coordinator: a lab CA and the SuperLink's certificate")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="write ca.crt, ca.key, server.pem, server.key")
    init.add_argument("dir")
    init.add_argument(
        "--host",
        action="append",
        help="a name or IP the nodes dial (repeatable; default: localhost and 127.0.0.1)",
    )
    init.add_argument("--days", type=int, default=365)
    init.set_defaults(handler=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.server.certs import init_certs

    for path in init_certs(Path(args.dir), args.host, args.days):
        print(f"wrote {path}")
    print("give ca.crt to every node; keep ca.key and server.key on the coordinator")
    return 0


def _node_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="institution: the node's identity")
    verbs = p.add_subparsers(dest="verb", required=True)
    keygen = verbs.add_parser("keygen", help="make the node's EC key pair (P-384, OpenSSH)")
    keygen.add_argument("--out", required=True, help="private key path; OUT.pub is the public")
    keygen.set_defaults(handler=_run_node)
    start = verbs.add_parser("start", help="run this site's SuperNode (flower-supernode)")
    _node_start_args(start)
    start.set_defaults(handler=_run_node_start)


def _run_node(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.client.node_keys import node_keygen

    private, public, digest = node_keygen(Path(args.out))
    print(f"wrote {private} (private: stays on this node) and {public} (send to the coordinator)")
    print(f"public key SHA-256 {digest}")
    return 0


def _coordinator_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coordinator", help="coordinator: run the SuperLink, register nodes")
    verbs = p.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("start", help="flower-superlink with TLS and node authentication")
    start.add_argument("--port", type=int, default=9092)
    start.add_argument("--host", default="0.0.0.0")
    tls = start.add_mutually_exclusive_group(required=True)
    tls.add_argument("--certs", help="folder with ca.crt, server.pem, server.key")
    tls.add_argument("--insecure", action="store_true", help="no TLS, no node auth (tests)")
    start.add_argument("--state", default="coordinator-state", help="SuperLink database folder")
    start.set_defaults(handler=_run_coordinator)
    reg = verbs.add_parser("register-node", help="allow a node's public key to connect")
    reg.add_argument("public_key")
    reg.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for a SuperLink still starting"
    )
    _connection_args(reg)
    reg.set_defaults(handler=_run_coordinator)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="HOST:PORT of the coordinator")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--ca", help="the federation's CA certificate (ca.crt)")
    tls.add_argument("--insecure", action="store_true")
    p.add_argument("--flwr-home", help="Flower CLI home for the connection (default ~/.aidmp/flwr)")


def _run_coordinator(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from aidmp.flower_tools import flower_env
    from aidmp.server.superlink import default_flwr_home, register_node, superlink_command

    if args.verb == "start":
        cmd = superlink_command(
            args.port, None if args.insecure else Path(args.certs), Path(args.state), args.host
        )
        print("starting: " + " ".join(cmd), flush=True)
        os.execve(cmd[0], cmd, flower_env())  # the SuperLink takes over
    home = Path(args.flwr_home) if args.flwr_home else default_flwr_home()
    ca = None if args.insecure else Path(args.ca)
    print(register_node(Path(args.public_key), args.superlink, ca, home, wait=args.wait))
    return 0


def _node_start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--data", required=True, help="this site's CSV or Parquet file")
    p.add_argument("--policy", required=True, help="this site's governance policy YAML")
    p.add_argument("--keys", help="institution.ckks (needed for encrypted runs)")
    p.add_argument("--ledger", required=True, help="state folder: ledger, audit log, reports")
    p.add_argument("--node-key", help="private key from `aidmp node keygen`")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--ca", help="the federation's CA certificate (ca.crt)")
    tls.add_argument("--insecure", action="store_true")
    p.add_argument("--port", type=int, default=9094, help="local ClientApp port (one per node)")
    p.add_argument("--name", default=None, help="how reports name this site")
    p.add_argument("--dp-epsilon", type=float, help="this site's DP budget (DP-SGD on)")
    p.add_argument("--max-retries", type=int, help="give up after N failed connections")
    p.add_argument("--max-wait-time", type=float, help="give up after S seconds of retrying")


def _run_node_start(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from aidmp.client.supernode import node_config, supernode_command
    from aidmp.flower_tools import flower_env

    config = node_config(
        data=Path(args.data), policy=Path(args.policy), state_dir=Path(args.ledger),
        keys=Path(args.keys) if args.keys else None,
        name=args.name or Path(args.ledger).resolve().name, dp_epsilon=args.dp_epsilon,
    )  # fmt: skip
    cmd = supernode_command(
        superlink=args.superlink, config=config,
        node_key=Path(args.node_key) if args.node_key else None,
        ca=None if args.insecure else Path(args.ca), port=args.port,
    )  # fmt: skip
    if args.max_retries is not None:
        cmd += ["--max-retries", str(args.max_retries)]
    if args.max_wait_time is not None:
        cmd += ["--max-wait-time", str(args.max_wait_time)]
    print("starting: " + " ".join(cmd), flush=True)
    os.execve(cmd[0], cmd, flower_env())
    return 0  # not reached


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="coordinator: submit a run to the SuperLink and follow it")
    _connection_args(p)
    p.add_argument("--run-config", default="", help='e.g. "num-rounds=5 he=true dp=true"')
    p.add_argument("--app", default=".", help="the Flower App folder (this project)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the job from OUT/checkpoint.npz (after a coordinator restart); "
        "the same as resume=true in --run-config",
    )
    p.set_defaults(handler=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from aidmp.flower_tools import flower_tool
    from aidmp.server.superlink import default_flwr_home, flwr_env, write_connection

    home = Path(args.flwr_home) if args.flwr_home else default_flwr_home()
    name = write_connection(home, args.superlink, None if args.insecure else Path(args.ca))
    cmd = [flower_tool("flwr"), "run", args.app, name, "--stream"]
    run_config = f"{args.run_config} resume=true" if args.resume else args.run_config
    if run_config.strip():
        cmd += ["--run-config", run_config.strip()]
    code = subprocess.run(cmd, env=flwr_env(home)).returncode
    if code != 0:
        print(
            "aidmp: the run ended with an error. If the coordinator's SuperLink went down, "
            "restart it (`aidmp coordinator start`, same --state) and continue the job with "
            "the same command plus --resume; its checkpoint is in the run's out-dir",
            file=sys.stderr,
        )
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aidmp", description="Federated learning and analytics for institutions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    _ledger_parser(sub)
    _audit_parser(sub)
    _keys_parser(sub)
    _govern_parser(sub)
    _audit_log_parser(sub)
    _certs_parser(sub)
    _node_parser(sub)
    _coordinator_parser(sub)
    _run_parser(sub)
    _pilot_data_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("aidmp")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        return args.handler(args)
    except AidmpError as exc:
        print(f"aidmp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aidmp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
