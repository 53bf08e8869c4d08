"""The node decides: a coordinator's run config cannot loosen a deployed node's privacy.

A deployed-style node (its own data file, policy, state folder, CKKS key and DP budget
in its own node config) is sent hostile round configs through the whole ClientApp
(mods included). What it replies is exactly what would reach the coordinator.
The rows are real UCI Adult rows.
"""

import subprocess
import sys

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


def _install_bundle(tmp_path, clientapp_ref, files):
    """Build an App bundle with Flower's own builder and unpack it as a node's
    flwr-clientapp does (Flower's installer, into FLWR_HOME)."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    from aidmp.server.app_bundle import write_app_bundle

    app = write_app_bundle(tmp_path / "bundle")
    toml = app / "pyproject.toml"
    toml.write_text(toml.read_text().replace("aidmp.flower_app:client_app", clientapp_ref))
    for name, text in files.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    fab = build_fab_from_disk(app)
    installed = install_from_fab(fab, skip_prompt=True)
    import hashlib

    return installed, ("aidmp/aidmp", "0.1.0", hashlib.sha256(fab).hexdigest())


def test_a_node_runs_its_installed_client_app_never_the_bundles_code(tmp_path, monkeypatch):
    """The coordinator's App bundle chooses no code at a node: a bundle carrying its own
    `aidmp` (and an `opacus`) still gets this installation's ClientApp, with the bundle's
    folder kept off sys.path; a bundle naming another ClientApp is refused."""
    from flwr.clientapp.client_app import LoadClientAppError

    import aidmp.client.app
    from aidmp.client.pinned_clientapp import pinned_clientapp_folder, pinned_loader

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    evil = {"aidmp/__init__.py": "", "aidmp/flower_app.py": "client_app = 'EVIL'\n",
            "opacus/__init__.py": "raise SystemExit('EVIL')\n"}  # fmt: skip
    installed, fab = _install_bundle(tmp_path / "a", "aidmp.flower_app:client_app", evil)
    assert (installed / "aidmp" / "flower_app.py").is_file()  # Flower did unpack it
    path_before = list(sys.path)
    assert pinned_loader()(*fab) is aidmp.client.app.app
    assert sys.path == path_before and str(installed) not in sys.path

    _, other = _install_bundle(tmp_path / "b", "evil:client_app", {"evil.py": "client_app = 1\n"})
    with pytest.raises(LoadClientAppError, match="names 'evil:client_app'"):
        pinned_loader()(*other)

    # `aidmp node start` puts this in flwr-clientapp's place on the SuperNode's PATH.
    folder = pinned_clientapp_folder(tmp_path / "bin")
    script = (folder / "flwr-clientapp").read_text()
    assert sys.executable in script and "-m aidmp.client.pinned_clientapp" in script
    help_text = subprocess.run([str(folder / "flwr-clientapp"), "--help"],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert help_text.returncode == 0 and "--runtime-api-address" in help_text.stdout
