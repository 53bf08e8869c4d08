"""The institution's side of a deployment: `aidmp node start` runs Flower's SuperNode.

Everything the ClientApp needs to know about this site comes from the node's own
config, set here and nowhere else: its data file, its governance policy, its CKKS
key file, its state folder (ledger, audit log, reports), its name and its DP
promise. The coordinator's run config cannot point the node anywhere else. Each
file is checked before the SuperNode starts, so a wrong path fails now, not in
round 1.
"""

from __future__ import annotations

from pathlib import Path

from aidmp.errors import AidmpError
from aidmp.flower_tools import flower_tool
from aidmp.governance.policy import load_policy
from aidmp.privacy.he.keys import load_context


def _quoted(value: str) -> str:
    if "'" in value:
        raise AidmpError(f"a path with a single quote cannot go in a node config: {value}")
    return f"'{value}'"


def node_config(
    *,
    data: Path,
    policy: Path,
    state_dir: Path,
    keys: Path | None,
    name: str,
    dp_epsilon: float | None,
) -> str:
    """The `--node-config` string, after checking each file it names."""
    if not data.is_file():
        raise AidmpError(f"no data file at {data}")
    load_policy(policy)  # a broken policy is named with its line, now
    if keys is not None:
        load_context(keys, "institution")  # a public-only or loose key file is refused
    state_dir.mkdir(parents=True, exist_ok=True)
    parts = {
        "name": _quoted(name),
        "data": _quoted(str(data.resolve())),
        "policy": _quoted(str(policy.resolve())),
        "state-dir": _quoted(str(state_dir.resolve())),
        "he-required": "true" if keys is not None else "false",
    }
    if keys is not None:
        parts["he-keys"] = _quoted(str(keys.resolve()))
    if dp_epsilon is not None:
        parts |= {"dp": "true", "dp-epsilon": str(dp_epsilon)}
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
