"""The `aidmp` command: one subcommand group for each kind of user.

researcher   simulate, analyze, audit-privacy, pilot-data   (aidmp/cli/researcher.py)
researcher   cluster                                        (aidmp/cli/cluster.py)
researcher   explain                                        (aidmp/cli/explain.py)
researcher   sweep, report                                  (aidmp/cli/sweep.py)
institution  ledger, govern, audit, node, model    (aidmp/cli/institution.py)
coordinator  certs, coordinator, run               (aidmp/cli/coordinator.py)
key dealer   keys                                  (aidmp/cli/keys.py)

This module builds the argument parser and dispatches; the modules above register their
subcommands and import anything heavy (torch, Flower, TenSEAL, pandas, the server,
client and simulation code) inside their handlers, so `aidmp --help` and a mistyped
argument answer at once.

Errors a user can fix print one line (`aidmp: error: ...`) and exit 2, with no
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aidmp.cli import cluster, coordinator, explain, institution, keys, researcher, sweep
from aidmp.errors import AidmpError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aidmp", description="Federated learning and analytics for institutions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # This order is the order `aidmp --help` lists them in.
    researcher.add_simulate(sub)
    sweep.add_sweep(sub)
    sweep.add_report(sub)
    researcher.add_analyze(sub)
    cluster.add_cluster(sub)
    explain.add_explain(sub)
    institution.add_ledger(sub)
    researcher.add_audit_privacy(sub)
    keys.add_keys(sub)
    institution.add_govern(sub)
    institution.add_audit(sub)
    coordinator.add_certs(sub)
    institution.add_node(sub)
    institution.add_model(sub)
    coordinator.add_coordinator(sub)
    coordinator.add_run(sub)
    researcher.add_pilot_data(sub)
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
