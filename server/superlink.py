"""The coordinator's side of a deployment: Flower's SuperLink, with TLS and node auth.

`aidmp coordinator start` runs `flower-superlink` with TLS, SuperNode authentication
and runtime dependency installation off (sites may have no internet), on one port:
SuperNodes, `flwr run` and `flwr supernode register` all dial it. Its state (the
registered nodes, runs) lives in `--state DIR/superlink.db`, so a restarted
coordinator keeps them. `aidmp coordinator register-node` and `aidmp run` talk to it
through a Flower connection written to `$FLWR_HOME/config.toml`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from aidmp.atomic import atomic_write_json
from aidmp.errors import AidmpError
from aidmp.flower_tools import flower_env, flower_tool
from aidmp.server.certs import CA_CERT, SERVER_CERT, SERVER_KEY

CONNECTION = "aidmp"  # the connection name in $FLWR_HOME/config.toml


def superlink_command(
    port: int, certs: Path | None, state: Path, host: str = "0.0.0.0"
) -> list[str]:
    """The flower-superlink command line; `certs` None means --insecure (no node auth)."""
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        flower_tool("flower-superlink"),
        "--host", host, "--port", str(port),
        "--database", str(state / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if certs is None:
        return [*cmd, "--insecure"]
    missing = [n for n in (CA_CERT, SERVER_CERT, SERVER_KEY) if not (certs / n).is_file()]
    if missing:
        raise AidmpError(
            f"{certs} lacks {', '.join(missing)}; run `aidmp certs init {certs}` or copy your "
            "CA's files there"
        )
    return [
        *cmd,
        "--ssl-ca-certfile", str(certs / CA_CERT),
        "--ssl-certfile", str(certs / SERVER_CERT),
        "--ssl-keyfile", str(certs / SERVER_KEY),
        "--enable-supernode-auth",
    ]  # fmt: skip


def default_flwr_home() -> Path:
    """aidmp's own Flower CLI home, so a user's ~/.flwr/config.toml is never rewritten."""
    return Path(os.environ.get("AIDMP_FLWR_HOME", Path.home() / ".aidmp" / "flwr"))


def write_connection(flwr_home: Path, superlink: str, ca: Path | None) -> str:
    """Point Flower's CLI at the SuperLink (`[superlink.aidmp]`); returns the name."""
    if ca is not None and not ca.is_file():
        raise AidmpError(f"no CA certificate at {ca}; the coordinator gives you ca.crt")
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]",
             f'address = "{superlink}"']  # fmt: skip
    lines.append(f'root-certificates = "{ca.resolve()}"' if ca else "insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")
    return CONNECTION


def flwr_env(flwr_home: Path) -> dict[str, str]:
    return {**flower_env(), "FLWR_HOME": str(flwr_home)}


# Flower's words when nothing answers at the SuperLink's address (yet).
_UNAVAILABLE = "Connection to the SuperLink is unavailable"


def register_node(
    public_key: Path,
    superlink: str,
    ca: Path | None,
    flwr_home: Path,
    wait: float = 60.0,
    name: str | None = None,
) -> str:
    """Register a node's public key with the SuperLink; returns what to tell the user.

    A SuperLink that is still starting gets up to `wait` seconds to answer, so a script
    can start the coordinator and register its nodes right after. With a `name`, the
    node id Flower gives the key is recorded under that name (`registered_node_names`),
    so `aidmp run` can name a site that never replies."""
    if not public_key.is_file():
        raise AidmpError(
            f"no public key at {public_key}; the node makes it with `aidmp node keygen`"
        )
    if name is not None and not _SITE_NAME.fullmatch(name):
        raise AidmpError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' (e.g. site-0), "
            "at most 64 characters"
        )
    connection = write_connection(flwr_home, superlink, ca)
    cmd = [flower_tool("flwr"), "supernode", "register", str(public_key), connection]
    deadline = time.monotonic() + wait
    while True:
        result = subprocess.run(
            [*cmd, *(["--name", name] if name else [])],
            env=flwr_env(flwr_home), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if _UNAVAILABLE not in result.stdout + result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    said = (result.stdout + result.stderr).strip()
    if _UNAVAILABLE in said:
        raise AidmpError(
            f"no SuperLink answers at {superlink} (waited {wait:g} s); is "
            "`aidmp coordinator start` running there, and is the port open?"
        )
    if result.returncode != 0:
        raise AidmpError(f"registering {public_key} failed: {said[-400:]}")
    found = re.search(r"SuperNode (\d+) registered", said)
    if name is None:
        return result.stdout.strip()
    if found is None:
        return f"{result.stdout.strip()}\n(no node id in Flower's answer: {name} not recorded)"
    node_id = int(found.group(1))
    _record_node_name(flwr_home, superlink, node_id, name)
    return f"registered {public_key} as {name} (SuperNode {node_id})"


# A site's name travels in the run config and is shown on consoles and in reports.
_SITE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAMES_FILE = "node-names.json"  # {superlink address: {node id: name}}, in FLWR_HOME


def _record_node_name(flwr_home: Path, superlink: str, node_id: int, name: str) -> None:
    """Add one name, under a lock: sites are often registered by a loop in parallel."""
    import fcntl

    path = flwr_home / _NAMES_FILE
    with (flwr_home / f"{_NAMES_FILE}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        every = _read_names(path)
        every.setdefault(superlink, {})[str(node_id)] = name
        atomic_write_json(path, every)


def _read_names(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        every = json.loads(path.read_text())
        if not isinstance(every, dict) or not all(isinstance(v, dict) for v in every.values()):
            raise ValueError("not an object of SuperLinks")
        return every
    except ValueError as exc:
        raise AidmpError(
            f"{path} is not the JSON that `register-node --name` writes ({exc}); "
            "delete it and register the nodes' names again"
        ) from None


def registered_node_names(flwr_home: Path, superlink: str) -> dict[str, str]:
    """node id -> name, as `register-node --name` recorded them for this SuperLink
    (the address exactly as given there: `localhost:9092` is not `127.0.0.1:9092`)."""
    return dict(_read_names(flwr_home / _NAMES_FILE).get(superlink, {}))
