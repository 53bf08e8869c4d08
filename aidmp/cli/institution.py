"""An institution's commands: `ledger`, `govern`, `audit`, `node`, `model`.

Each handler imports what it needs (pandas, cryptography, Flower) when it runs.
"""

from __future__ import annotations

import argparse
import json

from aidmp.errors import AidmpError


def add_ledger(sub: argparse._SubParsersAction) -> None:
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

    from aidmp.privacy.ledger import (
        LEDGER_NAME,
        GaussianRelease,
        PrivacyLedger,
        event_of,
        reset_ledger,
    )

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
            # charged again, and marked here; so is a release other than DP-SGD's.
            again = f"  release {e['release']}" if e.get("release", 1) > 1 else ""
            if e.get("release_kind", "training") != "training":  # evaluation figures
                again += f"  {e['release_kind']}"
            event = event_of(e)
            if isinstance(event, GaussianRelease):  # as σ = std / sensitivity, q = 1
                again += f"  {event.mechanism}, sensitivity {event.sensitivity:g}"
                event = event.as_charge()
            print(
                f"  {e.get('job_id', e['run_id']):>20} {e['run_id']:>20} {e['round']:>5} "
                f"{event.noise_multiplier:8.4f} {event.sample_rate:8.5f} {event.steps:6d} "
                f"{e['epsilon_after']:9.4f}{again}"
            )
        for change in ledger.dataset_changes:
            print(
                f"  dataset {change['from'][:16]}… -> {change['to'][:16]}… at {change['time']} "
                f"after {change['entries']} entries: {change['reason']}"
            )
        for change in ledger.accountant_changes:
            print(
                f"  accountant {change['from']} -> {change['to']} at {change['time']} after "
                f"{change['entries']} entries: eps {change['spent_before']:.4f} -> "
                f"{change['spent_after']:.4f}"
            )
        print(f"  spent eps {ledger.spent():.4f} of {ledger.budget:g} ({ledger.accountant})")
        return 0
    problems = ledger.verify()
    for problem in problems:
        print(f"MISMATCH {problem}")
    if problems:
        return 1
    print(f"ok: {len(ledger.entries)} entries; eps {ledger.spent():.4f} recomputed and matches")
    return 0


def add_govern(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("govern", help="institution: check data against a governance policy")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="draft a policy from the data, for review")
    init.add_argument("data", help="a CSV or Parquet file")
    init.add_argument("--out", required=True, help="where to write the draft policy YAML")
    init.add_argument("--label", help="the label column (default: the last column)")
    init.add_argument(
        "--phone-region",
        action="append",
        metavar="CC",
        help="the site's country for phone numbers written without a country code (ISO "
        "3166 code, e.g. GB; repeat for more). Default: those of the file's +CC numbers",
    )
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
        regions = [r.upper() for r in args.phone_region] if args.phone_region else None
        if regions:
            import phonenumbers

            unknown = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
            if unknown:
                raise AidmpError(
                    f"--phone-region {', '.join(unknown)}: not a country code libphonenumber "
                    "knows; give an ISO 3166 code such as GB, DE or IN"
                )
        draft = draft_policy(frame, args.label, phone_regions=regions)
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


def add_audit(sub: argparse._SubParsersAction) -> None:
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


def add_node(sub: argparse._SubParsersAction) -> None:
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
    # The node decides, and its operator must say how: a budget, or no DP at all.
    dp = p.add_mutually_exclusive_group(required=True)
    dp.add_argument("--dp-epsilon", type=float, help="this site's DP budget (DP-SGD on)")
    dp.add_argument("--no-dp", action="store_true", help="train without DP (no budget kept)")
    p.add_argument(
        "--dp-noise-multiplier",
        type=float,
        metavar="SIGMA",
        help="train every round at this noise multiplier, charging what it costs, instead of "
        "planning sigma to spend the whole budget over the run's rounds: leaves budget for "
        "later jobs (queries, clustering); a round that would pass the budget is declined",
    )
    p.add_argument(
        "--dp-max-noise-multiplier",
        type=float,
        help="decline a round (code 102) whose noise multiplier would exceed this: what a "
        "nearly spent budget buys is mostly noise (default 10)",
    )
    p.add_argument(
        "--dp-distributed-max-nodes",
        type=int,
        metavar="K",
        help="take part in distributed DP (dp-mode=distributed), adding a 1/k_min share of "
        "the noise, for runs whose min-nodes k_min is at most K (default: never)",
    )
    p.add_argument(
        "--dp-metrics",
        choices=("noised", "withheld"),
        help="under DP, the evaluation figures of the validation rows: noised and charged "
        "to the ledger (default), or never sent",
    )
    p.add_argument(
        "--dataset-id",
        help="the data source this node's ledger is keyed to (default: the data file's path "
        "and the task); keep it when the file moves, so the budget stays the same",
    )
    p.add_argument("--max-retries", type=int, help="give up after N failed connections")
    p.add_argument("--max-wait-time", type=float, help="give up after S seconds of retrying")


def _run_node_start(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.client.supernode import node_config, supernode_command
    from aidmp.flower_tools import flower_env

    config = node_config(
        data=Path(args.data), policy=Path(args.policy), state_dir=Path(args.ledger),
        keys=Path(args.keys) if args.keys else None,
        name=args.name or Path(args.ledger).resolve().name, dp_epsilon=args.dp_epsilon,
        max_noise_multiplier=args.dp_max_noise_multiplier, dataset_id=args.dataset_id,
        dp_metrics=args.dp_metrics, distributed_max_nodes=args.dp_distributed_max_nodes,
        noise_multiplier=args.dp_noise_multiplier,
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
    from aidmp.client.pinned_runtime import runtime_folder, runtime_path

    state = Path(args.ledger).resolve()
    # The node's own Flower runtime first on the SuperNode's PATH, Flower's own off it:
    # every task runs the aidmp installed here, never code from a run's App bundle
    # (client/pinned_runtime.py). Flower unpacks each bundle under FLWR_HOME, here too.
    pinned = runtime_folder(state / ".aidmp-runtime")
    _check_runtime_runs(pinned)
    env = flower_env()
    env |= {"FLWR_HOME": str(state / ".flwr"), "PATH": runtime_path(pinned, env["PATH"])}
    return _follow_supernode(cmd, env, Path(args.node_key) if args.node_key else None,
                             args.superlink, args.port)  # fmt: skip


def _check_runtime_runs(folder: object) -> None:
    """Run one of the node's runtime programs (a refusing stub: no Python) to learn that
    the folder allows running programs, before the SuperNode depends on it."""
    import subprocess
    from pathlib import Path

    from aidmp.client.pinned_runtime import REFUSED_EXIT, REFUSED_PROGRAMS
    from aidmp.errors import AidmpError

    stub = Path(str(folder)) / REFUSED_PROGRAMS[0]
    try:
        code = subprocess.run([str(stub)], capture_output=True, timeout=30).returncode
    except OSError as exc:
        code, why = None, str(exc)
    else:
        why = f"it exited {code}"
    if code != REFUSED_EXIT:
        raise AidmpError(
            f"this node cannot run its own Flower runtime from {folder} ({why}); put --ledger "
            "on a file system that allows running programs (not one mounted noexec)"
        )


def _follow_supernode(
    cmd: list[str], env: dict[str, str], node_key: object, superlink: str, port: object
) -> int:
    """Run Flower's SuperNode, its output passed through, and say in one line what its
    failures mean and what to do: a refused key (`Failed to activate SuperNode`), no
    connection yet (Flower retries quietly for minutes), a port already taken (a
    traceback). SIGTERM and Ctrl-C reach it; its exit code is ours."""
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from aidmp.client.node_keys import public_key_sha256

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    refused = threading.Event()

    said: set[str] = set()

    def say_once(what: str, text: str) -> None:
        if what not in said:
            said.add(what)
            print(f"aidmp: {text}", file=sys.stderr, flush=True)

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if "Failed to activate SuperNode" in line:
                refused.set()
            elif "Connection attempt failed" in line and not refused.is_set():
                say_once("unreachable", f"no connection to the coordinator at {superlink} yet; "
                         "Flower keeps retrying. If this goes on, check the address and port "
                         "the coordinator gave you, and that --ca is its ca.crt")  # fmt: skip
            elif "address already in use" in line.lower():
                say_once("port", f"port {port} on this machine is taken (another node or "
                         "program); start this node with another --port")  # fmt: skip

    # On a thread, and not to the end of the pipe: a child of the SuperNode (its
    # SuperExec) can outlive it and hold the pipe open. We end when the SuperNode does.
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join(timeout=2)
    if refused.is_set() and isinstance(node_key, Path):
        public = node_key.with_name(node_key.name + ".pub")
        print(
            f"aidmp: the coordinator refused this node: its key (SHA-256 "
            f"{public_key_sha256(public)}) is not registered there. Send {public} to the "
            "coordinator, who runs `aidmp coordinator register-node` with it",
            file=sys.stderr,
            flush=True,
        )
    return code


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="institution: the trained global model, kept and scored here")
    verbs = p.add_subparsers(dest="verb", required=True)
    dec = verbs.add_parser(
        "decrypt", help="write the model in a coordinator's checkpoint as a file (torch.load)"
    )
    dec.add_argument("checkpoint", help="the coordinator's checkpoint.npz")
    dec.add_argument("--keys", help="this site's institution.ckks (needed under HE)")
    dec.add_argument("--out", required=True, help="the model file to write")
    dec.set_defaults(handler=_run_model)
    ev = verbs.add_parser(
        "evaluate", help="score a model file on this site's own governed rows, locally"
    )
    ev.add_argument("model", help="a file from `aidmp model decrypt`")
    ev.add_argument("--data", required=True, help="the site's CSV or Parquet rows")
    ev.add_argument("--policy", required=True, help="the site's governance policy YAML")
    ev.set_defaults(handler=_run_model)


def _run_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.verb == "decrypt":
        from aidmp.client.final_model import model_from_checkpoint
        from aidmp.server.checkpoint import load_checkpoint
        from aidmp.tasks.model_file import save_model

        out = Path(args.out)
        if out.exists():
            raise AidmpError(f"{out} exists; choose another --out, or remove it deliberately")
        ckpt = load_checkpoint(Path(args.checkpoint))
        keys = Path(args.keys) if args.keys else None
        model = model_from_checkpoint(ckpt.model, ckpt.meta, ckpt.round, keys)
        save_model(out, model)
        print(f"wrote {out}: task {model.task}, round {model.round}, job {model.job_id}")
        return 0
    from aidmp.client.final_model import evaluate_on_own_rows
    from aidmp.tasks.model_file import load_model

    model = load_model(Path(args.model))
    scores = evaluate_on_own_rows(model, Path(args.data), Path(args.policy))
    print(
        f"{args.model} (task {model.task}, round {model.round}) on {scores['rows']} governed "
        f"rows of {args.data}: accuracy {scores['accuracy']:.4f}, loss {scores['loss']:.4f}; "
        f"majority class alone {scores['majority_rate']:.4f}"
    )
    return 0
