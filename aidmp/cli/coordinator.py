"""The coordinator's commands: `certs`, `coordinator`, `run`.

They wrap Flower's own tools (flower-superlink, flwr run); each handler imports them
when it runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any


def add_certs(sub: argparse._SubParsersAction) -> None:
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


def add_coordinator(sub: argparse._SubParsersAction) -> None:
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
    reg.add_argument(
        "--name",
        help="the site's name (e.g. site-0): `aidmp run` uses it for the site even when it "
        "never replies",
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
        # Flower unpacks each run's App bundle under FLWR_HOME: in the coordinator's own
        # state folder, not in the user's ~/.flwr.
        env = flower_env() | {"FLWR_HOME": str(Path(args.state).resolve() / ".flwr")}
        os.execve(cmd[0], cmd, env)  # the SuperLink takes over
    home = Path(args.flwr_home) if args.flwr_home else default_flwr_home()
    ca = None if args.insecure else Path(args.ca)
    print(
        register_node(
            Path(args.public_key), args.superlink, ca, home, wait=args.wait, name=args.name
        )
    )
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="coordinator: submit a run to the SuperLink and follow it")
    _connection_args(p)
    p.add_argument("--run-config", default="", help='e.g. "num-rounds=5 he=true dp=true"')
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the job from OUT/checkpoint.npz (after a coordinator restart); "
        "the same as resume=true in --run-config",
    )
    p.add_argument(
        "--analysis",
        metavar="QUERY",
        help="ask the nodes for this federated statistics query (YAML) instead of "
        "training; every bound, bin and category must be stated in it",
    )
    p.add_argument(
        "--cluster",
        metavar="JOB",
        help="run this federated k-means job (YAML: k, epsilon, features as NAME:LOW:HIGH, "
        "rounds) instead of training; writes clusters.json in the run's out-dir",
    )
    p.add_argument(
        "--list", action="store_true", help="list the SuperLink's runs (flwr ls) and exit"
    )
    p.add_argument("--stop", metavar="RUN_ID", help="stop this run on the SuperLink (flwr stop)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Flower's own log lines here too (else they go to a file under FLWR_HOME/logs)",
    )
    p.set_defaults(handler=_run_run)


def run_config_pairs(text: str) -> dict[str, Any]:
    """`--run-config` as Flower reads it: a TOML file's path, or space-separated
    KEY=VALUE pairs (strings in quotes). A word that is not a pair is named here: Flower's
    parser would drop it without a word."""
    from flwr.common.config import parse_config_args

    from aidmp.errors import AidmpError

    text = text.strip()
    if not text:
        return {}
    if not text.endswith(".toml"):
        stray = _PAIR.sub(" ", text).split()
        if stray:
            raise AidmpError(
                f"--run-config: {', '.join(map(repr, stray[:3]))} is not KEY=VALUE; give "
                "space-separated pairs, strings in quotes (\"num-rounds=3 strategy='fedavg'\"), "
                "or the path of one TOML file"
            )
    try:
        pairs = parse_config_args([text])
    except Exception as exc:  # Flower's parser (a click error), or a file it cannot read
        raise AidmpError(
            f"--run-config does not parse ({exc}); give space-separated KEY=VALUE pairs, "
            "strings in quotes: \"num-rounds=3 strategy='fedavg'\", or a TOML file's path"
        ) from None
    for key, value in pairs.items():
        if not isinstance(value, bool | int | float | str):
            raise AidmpError(
                f"--run-config: {key} is a {type(value).__name__}; a run-config value is a "
                "number, true/false or a string"
            )
    return pairs


_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # Flower's own pattern


def write_run_config(pairs: dict[str, Any], folder: object, name: str) -> str:
    """`pairs` as a run-config TOML file in `folder`; returns its path."""
    from pathlib import Path

    from aidmp.server.app_bundle import toml_value

    path = Path(str(folder)) / name
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in pairs.items()))
    return str(path)


def analysis_pairs(query_path: str) -> dict[str, Any]:
    """The run-config entry of a statistics query: its canonical JSON (too long and too
    quoted for a KEY=VALUE pair). Checked first: a query that leaves bounds or categories
    to a policy fails here, in one line."""
    import json
    from pathlib import Path

    from aidmp.analytics import QueryError, load_query, plan_query
    from aidmp.errors import AidmpError

    query, _ = load_query(Path(query_path))
    try:
        plan_query(query)
    except QueryError as exc:
        raise AidmpError(
            f"{exc}; the coordinator holds no node's policy, so a deployed query states "
            "every bound, bin and category itself"
        ) from None
    return {"analysis": json.dumps(query.canonical(), sort_keys=True)}


def cluster_pairs(job_path: str) -> dict[str, Any]:
    """The run-config entry of a k-means job: its canonical JSON. Checked first: a job
    that leaves a bound to a policy fails here."""
    from pathlib import Path

    from aidmp.analytics.clustering import load_job_file

    return {"clustering": load_job_file(Path(job_path)).text()}


def analysis_run_config(run_config: str, query_path: str, folder: object) -> str:
    """A run-config TOML file: `run_config`'s pairs and the query."""
    pairs = run_config_pairs(run_config) | analysis_pairs(query_path)
    return write_run_config(pairs, folder, "analysis-run-config.toml")


def cluster_run_config(run_config: str, job_path: str, folder: object) -> str:
    """A run-config TOML file: `run_config`'s pairs and the k-means job."""
    pairs = run_config_pairs(run_config) | cluster_pairs(job_path)
    return write_run_config(pairs, folder, "cluster-run-config.toml")


# Flower's and uvicorn's own INFO and DEBUG lines (with raw ANSI colour codes), and their
# timestamped copies: the coordinator's console shows ours and every warning or error.
_FLOWER_CHATTER = re.compile(
    r"^(\x1b\[\d+m(INFO|DEBUG) *\x1b\[0m:|\d\d/\d\d/\d{4} [\d:]{8}:(INFO|DEBUG):|"
    r"(INFO|DEBUG): |Successfully installed \S+ to |\s*$)"
)


_RESUME_HINT = (
    "aidmp: the run ended with an error. If the coordinator's SuperLink went down, restart "
    "it (`aidmp coordinator start`, same --state) and continue the job with the same "
    "command plus --resume; its checkpoint is in the run's out-dir"
)


def _flwr_run(
    cmd: list[str],
    env: dict[str, str],
    connection: str,
    log_file: Path | None = None,
    resumable: bool = False,
) -> int:
    """`flwr run ... --stream`, then the run's own status: `flwr run` exits 0 when the run
    it started failed (a ServerApp exception, a bad run config value), so we ask the
    SuperLink how the run ended (`flwr ls --run-id`). Every line goes to `log_file` if one
    is given, and to the console unless it is Flower's own chatter; with no `log_file`
    (`aidmp run --verbose`) every line goes to the console."""
    import json
    import subprocess

    from aidmp.flower_tools import flower_tool

    proc = subprocess.Popen(
        cmd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    run_id = None
    assert proc.stdout is not None
    log = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = log_file.open("a")
        print(f"Flower's own log lines go to {log_file} (--verbose shows them here)", flush=True)
    try:
        for line in proc.stdout:
            if log is not None:
                log.write(line)
                log.flush()
            if log is None or not _FLOWER_CHATTER.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
            if run_id is None and (found := re.search(r"Successfully started run (\d+)", line)):
                run_id = found.group(1)
    except KeyboardInterrupt:  # Ctrl-C stops following; the job goes on at the SuperLink
        proc.terminate()
        proc.wait()
        if run_id is None:
            print("aidmp: interrupted before the SuperLink accepted a run", file=sys.stderr)
        else:
            print(
                f"aidmp: stopped following run {run_id}; it is still running at the "
                f"SuperLink. Stop it with `aidmp run --stop {run_id}` (same --superlink and "
                "--ca), or list the runs with `aidmp run --list`",
                file=sys.stderr,
            )
        return 130
    code = proc.wait()
    if log is not None:
        log.close()
    if run_id is None:  # nothing to resume: say so, not how to resume
        print(
            "aidmp: no run was started: the SuperLink did not accept one (Flower's lines "
            "above say why). Check that `aidmp coordinator start` is running there and that "
            "--superlink and --ca are right",
            file=sys.stderr,
        )
        return code or 1
    if code != 0:
        if resumable:
            print(_RESUME_HINT, file=sys.stderr)
        return code
    ls = subprocess.run(
        [flower_tool("flwr"), "ls", connection, "--run-id", run_id, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        (run,) = json.loads(ls.stdout)["runs"]
        status, details = str(run["status"]), str(run.get("status-details", ""))
    except (ValueError, KeyError, TypeError):
        print(f"aidmp: run {run_id} was started; its status could not be read", file=sys.stderr)
        return 1
    if status.startswith("finished:") and status != "finished:completed":
        print(f"aidmp: run {run_id} {status.split(':', 1)[1]}: {details}", file=sys.stderr)
        if resumable:
            print(_RESUME_HINT, file=sys.stderr)
        return 1
    return 0


def _check_run_config(pairs: dict[str, Any], job: str | None = None) -> None:
    """Validate the run config here, as the ServerApp will (over the same defaults as
    pyproject's [tool.flwr.app.config]): an unknown key or a bad value is named, with
    the fix, before a job is submitted, rather than as Flower's `Invalid run
    configuration` or a ServerApp traceback. `job`: "analysis" or "clustering" when the
    run carries a query or a k-means job instead of training (its text is checked on its
    own)."""
    from aidmp.config import RunConfig

    RunConfig.from_flower(pairs | ({job: "{}"} if job else {}))


def _node_names(args: argparse.Namespace) -> dict[str, str]:
    """`node-names`, when `register-node --name` recorded names for this SuperLink."""
    import json
    from pathlib import Path

    from aidmp.server.superlink import default_flwr_home, registered_node_names

    home = Path(args.flwr_home) if args.flwr_home else default_flwr_home()
    names = registered_node_names(home, args.superlink)
    return {"node-names": json.dumps(names, sort_keys=True)} if names else {}


def _run_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aidmp.flower_tools import flower_tool
    from aidmp.server.app_bundle import write_app_bundle
    from aidmp.server.superlink import default_flwr_home, flwr_env, write_connection

    def connection() -> tuple[Path, str]:  # Flower's CLI home, and the connection's name
        home = Path(args.flwr_home) if args.flwr_home else default_flwr_home()
        return home, write_connection(
            home, args.superlink, None if args.insecure else Path(args.ca)
        )

    if args.list or args.stop:  # through the same connection as a run
        import subprocess

        home, name = connection()
        verb = ["ls", name] if args.list else ["stop", str(args.stop), name]
        return subprocess.run([flower_tool("flwr"), *verb], env=flwr_env(home)).returncode
    if args.analysis and args.cluster:
        from aidmp.errors import AidmpError

        raise AidmpError("--analysis and --cluster are two jobs; run one at a time")
    pairs = _node_names(args) | run_config_pairs(args.run_config)  # its own names win
    if args.resume:
        pairs["resume"] = True
    job = "analysis" if args.analysis else "clustering" if args.cluster else None
    _check_run_config(pairs, job)  # before anything is submitted: exit 2, no traceback
    if args.analysis:
        pairs |= analysis_pairs(args.analysis)
    if args.cluster:
        pairs |= cluster_pairs(args.cluster)
    home, name = connection()
    import datetime as dt
    import tempfile

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_file = None if args.verbose else home / "logs" / f"run-{stamp}.log"
    with tempfile.TemporaryDirectory() as folder:
        app = str(write_app_bundle(Path(folder)))  # settings only: sites refuse code
        cmd = [flower_tool("flwr"), "run", app, name, "--stream"]
        if pairs:  # one TOML file: a job's JSON is too long and too quoted for a pair
            cmd += ["--run-config", write_run_config(pairs, folder, "run-config.toml")]
        return _flwr_run(cmd, flwr_env(home), name, log_file, resumable=job is None)
