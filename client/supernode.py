"""The institution's side of a deployment: `aidmp node start` runs Flower's SuperNode.

Everything the ClientApp needs to know about this site comes from the node's own
config, set here and nowhere else: its data file, its governance policy, its CKKS
key file, its state folder (ledger, audit log, reports), its name and its DP
promise. The coordinator's run config cannot point the node anywhere else. Each
file is checked before the SuperNode starts, so a wrong path fails now, not in
round 1.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from aidmp.errors import AidmpError
from aidmp.flower_tools import flower_tool
from aidmp.governance.load import load_table
from aidmp.governance.policy import GovernanceError, load_policy
from aidmp.privacy.audit import AUDIT_NAME
from aidmp.privacy.he.keys import load_context


def _quoted(value: str) -> str:
    if "'" in value:
        raise AidmpError(f"a path with a single quote cannot go in a node config: {value}")
    return f"'{value}'"


def _check_state_dir(state_dir: Path | None, dp_epsilon: float | None) -> Path:
    """The folder for the ledger, the audit log and reports: one this node can write. A
    node under DP with none would send updates that nothing at the site records."""
    if state_dir is None:
        raise AidmpError(
            "no state folder: a node keeps its privacy ledger and the audit log of what it "
            "sends there" + (" and DP is on" if dp_epsilon is not None else "")
            + "; give --ledger DIR (kept across runs)"
        )  # fmt: skip
    if state_dir.exists() and not state_dir.is_dir():
        raise AidmpError(f"--ledger {state_dir} is a file; give a folder (kept across runs)")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise AidmpError(
            f"cannot write to the state folder {state_dir} ({exc.strerror}); the node could "
            "keep no ledger and no audit log there"
        ) from None
    audit = state_dir / AUDIT_NAME
    if audit.exists() and (not audit.is_file() or not os.access(audit, os.W_OK)):
        raise AidmpError(
            f"{audit} is not a file this node can append to; the node would send with no "
            "audit log. Move it aside (and keep it: it is the record of what this site sent)"
        )
    return state_dir


def _check_columns(data: Path, policy_file: Path) -> None:
    """Refuse to start on a data file that lacks a column its policy requires: every
    round would decline for it, and only the coordinator would see why. Read with the
    policy's own encoding and delimiter, as governance reads it each round."""
    policy, _ = load_policy(policy_file)  # a broken policy is named with its line, now
    try:
        frame = load_table(data, encoding=policy.encoding, delimiter=policy.delimiter)
    except GovernanceError as exc:
        raise AidmpError(f"{exc}; fix the file before starting the node") from None
    present = {str(c).strip() for c in frame.columns}
    missing = [c for c in policy.columns if c not in present]
    if missing:
        raise AidmpError(
            f"{data} has no column {', '.join(repr(c) for c in missing)}, which "
            f"{policy_file} requires; every round would decline. Export the column, or "
            f"remove it from the policy (`aidmp govern check {data} --policy {policy_file}` "
            "shows the whole check)"
        )


def node_config(
    *,
    data: Path,
    policy: Path,
    state_dir: Path | None,
    keys: Path | None,
    name: str,
    dp_epsilon: float | None,
    max_noise_multiplier: float | None = None,
    dataset_id: str | None = None,
    dp_metrics: str | None = None,
    distributed_max_nodes: int | None = None,
    noise_multiplier: float | None = None,
) -> str:
    """The `--node-config` string, after checking each file it names and that the state
    folder can hold the ledger and the audit log. `dp_epsilon` None: --no-dp.
    `dataset_id` names the data source its ledger is keyed to (default: the data file's
    path and the task, client/data.py); `dp_metrics` is "noised" or "withheld"."""
    if dataset_id is not None and not dataset_id.strip():
        raise AidmpError("--dataset-id is empty; name the data source, or leave it out")
    if not data.is_file():
        raise AidmpError(f"no data file at {data}")
    _check_columns(data, policy)
    if keys is not None:
        load_context(keys, "institution")  # a public-only or loose key file is refused
    state_dir = _check_state_dir(state_dir, dp_epsilon)
    parts = {
        "name": _quoted(name),
        "data": _quoted(str(data.resolve())),
        "policy": _quoted(str(policy.resolve())),
        "state-dir": _quoted(str(state_dir.resolve())),
        "he-required": "true" if keys is not None else "false",
    }
    if keys is not None:
        parts["he-keys"] = _quoted(str(keys.resolve()))
    if dataset_id is not None:
        parts["dataset-id"] = _quoted(dataset_id.strip())
    # The DP choice is always stated: a node with its own data that states none declines
    # every round (privacy/policy.py), and no run config can make the choice for it.
    if dp_epsilon is not None:
        parts |= {"dp": "true", "dp-epsilon": str(dp_epsilon)}
        if max_noise_multiplier is not None:
            parts["dp-max-noise-multiplier"] = str(float(max_noise_multiplier))
        if noise_multiplier is not None:
            if noise_multiplier <= 0:
                raise AidmpError(
                    f"--dp-noise-multiplier must be > 0 (got {noise_multiplier:g}); leave it "
                    "out to plan the noise from the budget"
                )
            parts["dp-noise-multiplier"] = str(float(noise_multiplier))
        if distributed_max_nodes is not None:
            parts["dp-distributed-max-nodes"] = str(int(distributed_max_nodes))
        if dp_metrics is not None:
            parts["dp-metrics"] = _quoted(dp_metrics)
    else:
        parts["dp"] = "false"
    return " ".join(f"{k}={v}" for k, v in parts.items())


def supernode_command(
    *,
    superlink: str,
    config: str,
    node_key: Path | None,
    ca: Path | None,
    port: int,
) -> list[str]:
    """The flower-supernode command line; `ca` None means --insecure (refused by a TLS
    SuperLink)."""
    cmd = [flower_tool("flower-supernode"), "--superlink", superlink,
           "--port", str(port), "--node-config", config]  # fmt: skip
    if ca is None:
        return [*cmd, "--insecure"]
    if not ca.is_file():
        raise AidmpError(f"no CA certificate at {ca}; the coordinator gives you ca.crt")
    cmd += ["--root-certificates", str(ca)]
    if node_key is not None:
        if not node_key.is_file():
            raise AidmpError(f"no node key at {node_key}; make one with `aidmp node keygen`")
        cmd += ["--auth-supernode-private-key", str(node_key)]
    return cmd
