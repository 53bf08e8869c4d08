"""A real deployment on loopback: a SuperLink with TLS and node authentication, and three
SuperNodes, each with its own data file, policy, CKKS key and ledger, started with the
`aidmp` commands an IT team would type. The rows are real UCI Adult rows.
"""

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from privacy.audit import AUDIT_NAME, verify_audit_log
from privacy.ledger import LEDGER_NAME
from simulations.runner import bundled_policy
from tasks import get_task

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
AIDMP = [sys.executable, "-c", "import sys; from aidmp.cli import main; sys.exit(main())"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aidmp(*args, env, **kw):
    return subprocess.run([*AIDMP, *args], env=env, capture_output=True, text=True, **kw)


def _start(args, env, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([*AIDMP, *args], env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _wait_healthy(port: int, ca: Path, timeout: float = 60) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the SuperLink did not come up")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")
def test_tls_node_auth_three_nodes_he_dp_governance(tmp_path):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    home = str(tmp_path / "flwr-home")
    env = {**os.environ, "FLWR_HOME": home, "AIDMP_FLWR_HOME": home, "PATH": path}
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    assert _aidmp("certs", "init", str(certs), env=env).returncode == 0
    assert _aidmp("keys", "init", "--out", str(keys), env=env).returncode == 0
    rows = get_task("adult").raw_train()
    port, procs = _free_port(), []
    try:
        procs.append(_start(["coordinator", "start", "--port", str(port), "--host", "127.0.0.1",
                             "--certs", str(certs), "--state", str(tmp_path / "link")],
                            env, tmp_path / "superlink.log"))  # fmt: skip
        _wait_healthy(port, certs / "ca.crt")
        link = ["--superlink", f"127.0.0.1:{port}", "--ca", str(certs / "ca.crt")]
        for i in range(4):  # three institutions, and one stranger nobody registered
            made = _aidmp("node", "keygen", "--out", str(tmp_path / f"node{i}.key"), env=env)
            assert made.returncode == 0, made.stderr
        for i in range(3):
            reg = _aidmp("coordinator", "register-node", str(tmp_path / f"node{i}.key.pub"),
                         *link, env=env)  # fmt: skip
            assert reg.returncode == 0, reg.stdout + reg.stderr
            site = tmp_path / f"site{i}"
            site.mkdir()
            part = rows.iloc[i * 400 : (i + 1) * 400].assign(consent="yes")
            part.to_csv(site / "rows.csv", index=False)
            procs.append(_start(["node", "start", *link, "--data", str(site / "rows.csv"),
                                 "--policy", str(bundled_policy("adult")),
                                 "--keys", str(keys / "institution.ckks"),
                                 "--ledger", str(site / "state"), "--name", f"site-{i}",
                                 "--node-key", str(tmp_path / f"node{i}.key"),
                                 "--port", str(_free_port()), "--dp-epsilon", "4"],
                                env, tmp_path / f"node{i}.log"))  # fmt: skip
        # Wait on the process, not on its output: the SuperExec child it starts can outlive
        # it and hold a pipe open, so its output goes to a file.
        stranger = _start(["node", "start", *link, "--data", str(tmp_path / "site0" / "rows.csv"),
                           "--policy", str(bundled_policy("adult")),
                           "--ledger", str(tmp_path / "stranger"),
                           "--node-key", str(tmp_path / "node3.key"), "--port", str(_free_port())],
                          env, tmp_path / "stranger.log")  # fmt: skip
        procs.append(stranger)
        # A node that will not speak TLS is never let in (it gives up after its retries).
        plain = _start(["node", "start", "--superlink", f"127.0.0.1:{port}", "--insecure",
                        "--data", str(tmp_path / "site0" / "rows.csv"),
                        "--policy", str(bundled_policy("adult")),
                        "--ledger", str(tmp_path / "plain"), "--port", str(_free_port()),
                        "--max-retries", "2", "--max-wait-time", "20"],
                       env, tmp_path / "plain.log")  # fmt: skip
        procs.append(plain)
        assert stranger.wait(timeout=180) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
        assert plain.wait(timeout=180) != 0
        refused = (tmp_path / "plain.log").read_text()
        # Flower words it by how the TLS handshake broke off; both mean "no connection".
        assert "Server disconnected" in refused or "could not establish a connection" in refused

        out = tmp_path / "out"
        run_config = (
            f"task='adult' num-rounds=2 partition='iid' out-dir='{out}' he=true "
            f"he-keys='{keys / 'coordinator.ckks'}' central-eval=false fraction-evaluate=0.0 "
            "min-available-nodes=3 min-nodes=3 round-timeout=300"
        )
        started = time.monotonic()
        run = _aidmp("run", *link, "--run-config", run_config, "--app", str(ROOT), env=env,
                     timeout=540, cwd=ROOT)  # fmt: skip
        print(f"2 rounds, 3 nodes, TLS + auth + HE + DP + governance: "
              f"{time.monotonic() - started:.0f}s")  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    report = json.loads((out / "report.json").read_text())
    assert report["rounds_completed"] == 2 and report["he"]["enabled"]
    assert [r["train_replies"] for r in report["per_round"]] == [3, 3]
    assert set(report["governance"]["by_institution"]) == {"site-0", "site-1", "site-2"}
    for i in range(3):
        state = tmp_path / f"site{i}" / "state"
        assert verify_audit_log(state / AUDIT_NAME) == []
        ledger = json.loads((state / LEDGER_NAME).read_text())
        assert len(ledger["body"]["entries"]) == 2  # two rounds charged, each once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")
def test_a_node_killed_mid_run_leaves_the_round_to_the_others(tmp_path):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    home = str(tmp_path / "flwr-home")
    env = {**os.environ, "FLWR_HOME": home, "AIDMP_FLWR_HOME": home, "PATH": path}
    certs = tmp_path / "certs"
    assert _aidmp("certs", "init", str(certs), env=env).returncode == 0
    rows = get_task("adult").raw_train()
    port, procs = _free_port(), []
    out = tmp_path / "out"
    try:
        procs.append(_start(["coordinator", "start", "--port", str(port), "--host", "127.0.0.1",
                             "--certs", str(certs), "--state", str(tmp_path / "link")],
                            env, tmp_path / "superlink.log"))  # fmt: skip
        _wait_healthy(port, certs / "ca.crt")
        link = ["--superlink", f"127.0.0.1:{port}", "--ca", str(certs / "ca.crt")]
        nodes = {}
        for i in range(3):
            assert (
                _aidmp("node", "keygen", "--out", str(tmp_path / f"n{i}.key"), env=env).returncode
                == 0
            )
            reg = _aidmp(
                "coordinator", "register-node", str(tmp_path / f"n{i}.key.pub"), *link, env=env
            )
            assert reg.returncode == 0, reg.stdout + reg.stderr
            site = tmp_path / f"site{i}"
            site.mkdir()
            rows.iloc[i * 400 : (i + 1) * 400].assign(consent="yes").to_csv(
                site / "rows.csv", index=False
            )
            nodes[i] = _start(["node", "start", *link, "--data", str(site / "rows.csv"),
                               "--policy", str(bundled_policy("adult")),
                               "--ledger", str(site / "state"), "--name", f"site-{i}",
                               "--node-key", str(tmp_path / f"n{i}.key"),
                               "--port", str(_free_port())],
                              env, tmp_path / f"node{i}.log")  # fmt: skip
            procs.append(nodes[i])
        run_config = (
            f"task='adult' num-rounds=2 partition='iid' out-dir='{out}' dp=false "
            "fraction-evaluate=0.0 min-available-nodes=2 min-nodes=2 round-timeout=240"
        )
        run = subprocess.Popen([*AIDMP, "run", *link, "--run-config", run_config, "--app",
                                str(ROOT)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        procs.append(run)
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.npz").exists():  # round 1 is done
            assert time.monotonic() < deadline and run.poll() is None, "round 1 never ended"
            time.sleep(1)
        os.killpg(nodes[2].pid, signal.SIGKILL)  # site-2 vanishes before round 2
        assert run.wait(timeout=420) == 0
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    report = json.loads((out / "report.json").read_text())
    first, second = report["per_round"]
    assert first["train_replies"] == 3 and second["aggregated"]
    assert second["train_replies"] == 2
    (lost,) = second["train_failures"]
    assert lost["institution"] == "site-2"  # named, though the SuperLink reported it
