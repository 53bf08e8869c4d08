"""The key dealer's command: `keys`, the CKKS key ceremony (TenSEAL loads when it runs)."""

from __future__ import annotations

import argparse


def add_keys(sub: argparse._SubParsersAction) -> None:
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
