"""`flwr run .` works as Flower users expect: this folder is a Flower App.

One run, encrypted: the run config from pyproject.toml and `--run-config`, our ServerApp
and ClientApp on Flower's own simulation engine, and the HE key paths. Plaintext
federations run in tests/test_simulation.py (Ray) and on the in-process engine.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aidmp.privacy.he.keys import key_ceremony

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _kill_processes_with_env(key: str, value: str) -> None:
    """`flwr run` leaves a local SuperLink running in the background; stop ours."""
    needle = f"{key}={value}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cleanup reads /proc")
def test_flwr_run_drives_our_serverapp_and_clientapp(tmp_path):
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "out"
    key_ceremony(tmp_path / "keys")
    extra = f" he=true he-keys='{tmp_path / 'keys'}' central-eval=false"
    venv_bin = Path(sys.executable).parent  # `flwr run` finds flower-superlink on PATH
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # offline: no `uv sync`
    }
    flwr = venv_bin / "flwr"
    pyproject_before = (ROOT / "pyproject.toml").read_text()
    cmd = [
        str(flwr), "run", ".", "--stream",
        "--federation-config", "num-supernodes=2",
        "--run-config",
        f"task='breast-cancer' num-rounds=1 partition='iid' out-dir='{out}'" + extra,
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        _kill_processes_with_env("FLWR_HOME", str(flwr_home))
    # `flwr run --stream` exits 0 even when the run failed; the log says why.
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0 and (out / "report.json").is_file(), log
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "breast-cancer" and report["rounds_completed"] == 1
    (first,) = report["per_round"]
    assert first["train_replies"] == 2 and first["aggregated"]
    assert report["he"]["enabled"] is True
    assert (ROOT / "pyproject.toml").read_text() == pyproject_before
