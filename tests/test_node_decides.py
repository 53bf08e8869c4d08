"""The node decides: a coordinator's run config cannot loosen a deployed node's privacy.

A deployed-style node (its own data file, policy, state folder, CKKS key and DP budget
in its own node config) is sent hostile round configs through the whole ClientApp
(mods included). What it replies is exactly what would reach the coordinator.
The rows are real UCI Adult rows.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from aidmp.client.app import app
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.privacy.he.keys import key_ceremony
from aidmp.privacy.he.state import UPDATE_KEY
from aidmp.privacy.ledger import LEDGER_NAME, PrivacyLedger
from aidmp.round_config import RECORD_NAME
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.runner import bundled_policy
from aidmp.strategies import build_strategy
from aidmp.tasks import get_task


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    rows = get_task("adult").raw_train().iloc[:800].copy()
    rows["consent"] = "yes"
    rows.to_csv(folder / "rows.csv", index=False)
    key_ceremony(folder / "keys")  # the federation's keys: this site holds the secret one
    key_ceremony(folder / "other-keys")  # keys the coordinator would like the node to use
    return folder


def _node(site, **extra):
    return {
        "name": "hospital-a",
        "data": str(site / "rows.csv"),
        "policy": str(bundled_policy("adult")),
        "state-dir": str(site / "state"),
        "he-keys": str(site / "keys" / "institution.ckks"),
        "dp": True,
        "dp-epsilon": 3.0,
    } | extra


def _hostile(record, site):
    """A round config asking to drop DP, take δ 0.5, keep the ledger elsewhere, and use
    the coordinator's choice of key and policy."""
    record["dp"] = False
    record["dp-delta"] = 0.5
    record["dp-epsilon"] = 100.0
    record["state-root"] = str(site / "elsewhere")
    record["he-keys"] = str(site / "other-keys" / "institution.ckks")
    record["governance-policy"] = str(site / "rows.csv")
    return record


def _call(msg, node_config):
    context = Context(run_id=9, node_id=4, node_config=node_config, state=RecordDict(),
                      run_config={})  # fmt: skip
    return app(msg, context)


def _plaintext_round(site):
    cfg = RunConfig(task="adult", dp=False, he=False, out_dir=str(site / "run"))
    torch.manual_seed(0)
    model = get_task("adult").build_model()
    record = _hostile(round_config_for(cfg, 1), site)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), RECORD_NAME: record})
    return Message(content, dst_node_id=4, message_type="train")


def _encrypted_round(site, rnd):
    cfg = RunConfig(task="adult", dp=False, he=True, he_keys=str(site / "keys"),
                    min_available_nodes=1, min_nodes=1, central_eval=False,
                    out_dir=str(site / "run"))  # fmt: skip
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    arrays = strategy.initial_state(get_task("adult").build_model().state_dict())

    class OneNode:
        def get_node_ids(self):
            return [4]

    (msg,) = strategy.configure_train(rnd, arrays, round_config_for(cfg, rnd), OneNode())
    _hostile(msg.content[RECORD_NAME], site)
    return msg


def test_a_plaintext_round_is_refused_by_a_node_holding_a_key(site):
    reply = _call(_plaintext_round(site), _node(site))
    assert reply.has_error() and reply.error.code == DeclineCode.HE_KEYS
    assert "plaintext" in reply.error.reason
    assert not (site / "elsewhere").exists()


def test_a_hostile_run_config_gets_a_dp_update_under_the_nodes_own_key_and_ledger(site):
    for rnd in (1, 2):
        reply = _call(_encrypted_round(site, rnd), _node(site))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        # Only ciphertext under the federation's key left, never arrays.
        assert not reply.content.array_records and UPDATE_KEY in reply.content
        node = reply.content["node"]
        # DP at the node's own δ, charged to its own ledger; the run's asks refused.
        assert node["delta"] == 1e-5 and 0 < node["epsilon-spent"] <= 3.0
        assert {"dp=false", "dp-delta=0.5", "dp-epsilon=100.0"} <= set(
            str(node["refused"]).split("; ")
        )
    ledger = PrivacyLedger.load(site / "state" / LEDGER_NAME)
    assert len(ledger.entries) == 2 and ledger.spent() <= 3.0
    assert not (site / "elsewhere").exists()  # the coordinator's state-root: never used


def test_a_node_that_states_no_dp_choice_sends_nothing(site):
    node = _node(site, **{"state-dir": str(site / "state-nodp-choice")})
    del node["dp"], node["dp-epsilon"]
    reply = _call(_encrypted_round(site, 1), node)
    assert reply.has_error() and reply.error.code == DeclineCode.PRIVACY_POLICY
    assert "--dp-epsilon" in reply.error.reason and "--no-dp" in reply.error.reason


def test_a_no_dp_node_sits_out_a_run_that_asks_for_dp(site):
    msg = _encrypted_round(site, 1)
    msg.content[RECORD_NAME]["dp"] = True
    node = _node(site, dp=False, **{"state-dir": str(site / "state-nodp")})
    del node["dp-epsilon"]
    reply = _call(msg, node)
    assert reply.has_error() and reply.error.code == DeclineCode.PRIVACY_POLICY
    assert "--no-dp" in reply.error.reason


def test_a_simulated_institution_still_takes_the_run_config(site):
    """The researcher plays every part: no data of its own, the run's policy and folder."""
    cfg = RunConfig(task="breast-cancer", partition="iid", dp=True, dp_epsilon=2.0,
                    out_dir=str(site / "sim"))  # fmt: skip
    torch.manual_seed(0)
    model = get_task("breast-cancer").build_model()
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), RECORD_NAME: round_config_for(cfg, 1)}
    )
    msg = Message(content, dst_node_id=4, message_type="train")
    reply = _call(msg, {"partition-id": 0, "num-partitions": 3})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert "refused" not in reply.content["node"]
    assert (site / "sim" / "institutions" / "institution-0" / LEDGER_NAME).is_file()


def test_node_start_refuses_to_start_without_a_dp_choice(site):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aidmp.cli",
            "node",
            "start",
            "--superlink",
            "127.0.0.1:1",
            "--data",
            str(site / "rows.csv"),
            "--policy",
            str(bundled_policy("adult")),
            "--ledger",
            str(site / "state-cli"),
            "--insecure",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--dp-epsilon" in result.stderr and "--no-dp" in result.stderr
    assert "Traceback" not in result.stderr


def _distributed_round(site, k_min):
    cfg = RunConfig(task="adult", dp=True, he=True, he_keys=str(site / "keys"),
                    dp_mode="distributed", dp_sample_rate=0.05, min_nodes=k_min,
                    min_available_nodes=k_min, central_eval=False,
                    out_dir=str(site / "run-d"))  # fmt: skip
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    arrays = strategy.initial_state(get_task("adult").build_model().state_dict())

    class Nodes:
        def get_node_ids(self):
            return list(range(4, 4 + k_min))

    messages = strategy.configure_train(1, arrays, round_config_for(cfg, 1), Nodes())
    return next(m for m in messages if m.metadata.dst_node_id == 4)


@pytest.mark.parametrize(("agreed", "k_min", "declines"), [(None, 3, True), (3, 5, True),
                                                           (5, 3, False)])  # fmt: skip
def test_distributed_dp_only_where_the_node_agreed_to_share_out_its_noise(
    site, agreed, k_min, declines
):
    """In distributed mode each update carries a 1/k_min share of the noise, k_min being the
    coordinator's: a node with its own data takes part only up to its own cap."""
    extra = {"state-dir": str(site / f"state-dist-{agreed}-{k_min}")}
    if agreed is not None:
        extra["dp-distributed-max-nodes"] = agreed
    reply = _call(_distributed_round(site, k_min), _node(site, **extra))
    if declines:
        assert reply.has_error() and reply.error.code == DeclineCode.PRIVACY_POLICY
        assert "dp-distributed-max-nodes" in reply.error.reason
        assert not (site / extra["state-dir"] / LEDGER_NAME).exists()
    else:
        assert not reply.has_error(), reply.error.reason
        assert UPDATE_KEY in reply.content and not reply.content.array_records


def _bundle(tmp_path, clientapp_ref="aidmp.flower_app:client_app", files=(), version=None):
    """An App bundle built by Flower's own builder from `aidmp run`'s folder, changed."""
    import tomllib

    from flwr.cli.build import build_fab_from_files

    from aidmp.server.app_bundle import write_app_bundle

    toml = (write_app_bundle(tmp_path) / "pyproject.toml").read_text()
    toml = toml.replace("aidmp.flower_app:client_app", clientapp_ref)
    if version is not None:
        toml = toml.replace('version = "0.1.0"', f'version = "{version}"')
    content = {"pyproject.toml": toml.encode(), **{n: t.encode() for n, t in dict(files).items()}}
    fab, _ = build_fab_from_files(content)
    return fab, tomllib.loads(toml)


def _bomb(path):
    """A small zip whose pyproject.toml unpacks to 10 MiB of blanks."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("pyproject.toml", b" " * (10 << 20))
    assert path.stat().st_size < 100_000
    return path.read_bytes()


def test_a_node_runs_its_installed_client_app_never_the_bundles_code(tmp_path, monkeypatch):
    """The coordinator's App bundle chooses no code at a node. A bundle of settings gets
    this installation's ClientApp, with no folder added to sys.path. A bundle carrying
    code (its own `aidmp`, an `opacus`), naming another ClientApp, or naming itself with
    a path is refused before Flower unpacks anything."""
    import hashlib

    from flwr.cli.install import install_from_fab

    import aidmp.client.app
    from aidmp.client.pinned_runtime import BundleRefused, _checked_install, pinned_loader

    home = tmp_path / "flwr"
    monkeypatch.setenv("FLWR_HOME", str(home))
    install = _checked_install(install_from_fab)  # as the node's flwr-clientapp runs it
    fab, _ = _bundle(tmp_path / "ok")
    installed = install(fab, skip_prompt=True)
    assert [p.name for p in installed.iterdir()] == ["pyproject.toml"]
    path_before = list(sys.path)
    ids = ("aidmp/aidmp", "0.1.0", hashlib.sha256(fab).hexdigest())
    assert pinned_loader()(*ids) is aidmp.client.app.app
    assert sys.path == path_before

    evil = {"aidmp/__init__.py": "", "aidmp/flower_app.py": "client_app = 'EVIL'\n",
            "opacus/__init__.py": "raise SystemExit('EVIL')\n"}  # fmt: skip
    refused = {
        "carries files (aidmp/__init__.py": _bundle(tmp_path / "a", files=evil)[0],
        "names 'evil:client_app'": _bundle(tmp_path / "b", "evil:client_app")[0],
        "names itself '1/../../../../x'": _bundle(tmp_path / "c", version="1/../../../../x")[0],
        "not one `aidmp run` sends": b"not a zip",
        "unpacks to 10,485,760 bytes": _bomb(tmp_path / "bomb.zip"),
    }
    before = sorted(home.rglob("*"))
    for said, bad in refused.items():
        with pytest.raises(BundleRefused, match=re.escape(said)):
            install(bad, skip_prompt=True)
    assert sorted(home.rglob("*")) == before  # nothing of them was written


def test_a_node_starts_only_its_own_flower_runtime(tmp_path):
    """`aidmp node start`'s PATH: its own flower-superexec and flwr-clientapp (Flower's,
    pinned), a stub that refuses every other task program, and none of Flower's own."""
    import os

    from aidmp.client.pinned_runtime import (
        REFUSED_EXIT,
        REFUSED_PROGRAMS,
        runtime_folder,
        runtime_path,
    )  # fmt: skip
    from aidmp.flower_tools import flower_tool

    folder = runtime_folder(tmp_path / "runtime")
    flower_bin = str(Path(flower_tool("flwr-clientapp")).parent)
    path = runtime_path(folder, os.pathsep.join([flower_bin, "/usr/bin", "/bin"]))
    assert path.split(os.pathsep) == [str(folder), "/usr/bin", "/bin"]
    env = {**os.environ, "PATH": path}
    for program, flag in (("flwr-clientapp", "--runtime-api-address"),
                          ("flower-superexec", "--runtime-api-address")):  # fmt: skip
        assert shutil.which(program, path=path) == str(folder / program)
        shown = subprocess.run([program, "--help"], env=env, capture_output=True, text=True,
                               timeout=120)  # fmt: skip
        assert shown.returncode == 0 and flag in shown.stdout, shown.stderr[-1000:]
    for program in REFUSED_PROGRAMS:
        stub = subprocess.run([program], env=env, capture_output=True, text=True, timeout=30)
        assert stub.returncode == REFUSED_EXIT and "refused" in stub.stderr
