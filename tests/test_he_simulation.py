"""An encrypted federation, against a plaintext twin, on the in-process engine: our real
ClientApp at each institution (simulations/inprocess.py). `flwr run` with he=true
(tests/test_flwr_run.py) runs HE on Flower's own engine.

The coordinator's grid is wrapped to record every reply it receives; the test then
checks that nothing but ciphertext, metrics and the privacy spend reached it, and
that the HE run ends where the plaintext run with the same seeds ends.
"""

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from flwr.app import Message

from aidmp.config import RunConfig
from aidmp.privacy.he.keys import COORDINATOR_FILE, INSTITUTION_FILE, key_ceremony, load_context
from aidmp.privacy.he.state import UPDATE_KEY, EncryptedGlobal
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.server.report import REPORT_NAME
from tests.recording import run_recorded

INSTITUTIONS = 3
# The only metrics and node fields a node may report (DESIGN.md, "what may cross the wire").
ALLOWED_METRICS = {"num-examples", "train-loss", "client-weight", "eval-loss", "eval-accuracy",
                   "eval-loss-std", "eval-accuracy-std"}  # fmt: skip
ALLOWED_NODE_FIELDS = {"institution", "epsilon-spent", "epsilon-round", "delta", "budget-left",
                       "noise-multiplier", "release"}  # fmt: skip


def _run(cfg: RunConfig, received: list[Message] | None = None) -> None:
    run_recorded(cfg, INSTITUTIONS, received, engine="inprocess")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("he-sim")
    key_ceremony(root / "keys")
    base = dict(task="breast-cancer", partition="iid", seed=3, num_rounds=2, dp=True,
                dp_epsilon=5.0, central_eval=False)  # fmt: skip
    received: list[Message] = []
    he = RunConfig(**base, he=True, he_keys=str(root / "keys"), out_dir=str(root / "he"))
    _run(he, received)
    _run(RunConfig(**base, out_dir=str(root / "plain")))
    return root, received


def test_the_coordinator_received_only_ciphertext_metrics_and_spend(runs):
    root, received = runs
    public = load_context(root / "keys" / COORDINATOR_FILE, "coordinator")
    updates = 0
    assert len(received) == 2 * INSTITUTIONS * 2  # train + evaluate, 3 nodes, 2 rounds
    for reply in received:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        assert not content.array_records  # no plaintext arrays, ever
        for metrics in content.metric_records.values():
            assert set(metrics) <= ALLOWED_METRICS
        assert set(content.config_records) <= {"node", UPDATE_KEY}
        if "node" in content.config_records:
            assert set(content["node"]) <= ALLOWED_NODE_FIELDS
        if UPDATE_KEY in content.config_records:
            updates += 1
            for blob in content[UPDATE_KEY]["chunks"]:
                assert isinstance(blob, bytes)
                with pytest.raises(ValueError, match="secret_key"):
                    ts.ckks_vector_from(public, blob).decrypt()
    assert updates == INSTITUTIONS * 2


def test_he_run_ends_where_the_plaintext_run_ends(runs):
    root, _ = runs
    secret = load_context(root / "keys" / INSTITUTION_FILE, "institution")
    he_params, _ = EncryptedGlobal.from_arrays(
        load_checkpoint(root / "he" / CHECKPOINT_NAME).model
    ).decrypt(secret)
    plain = load_checkpoint(root / "plain" / CHECKPOINT_NAME).model
    plain_params = np.concatenate([v.astype(np.float64).ravel() for v in plain.values()])
    moved = np.abs(plain_params - _initial(root)).max()
    # Same seeds, same DP noise: the runs differ only by CKKS error and the rounded 1/W
    # (privacy/he/packing.py), about 1e-6 here, against a model that moved by `moved`.
    assert np.abs(he_params - plain_params).max() < 1e-4 < moved


def _initial(root: Path) -> np.ndarray:
    import torch

    from aidmp.tasks import get_task

    torch.manual_seed(3)
    model = get_task("breast-cancer").build_model()
    return np.concatenate([v.double().numpy().ravel() for v in model.state_dict().values()])


def test_the_report_names_the_keys_and_the_bytes(runs):
    import json

    root, _ = runs
    report = json.loads((root / "he" / REPORT_NAME).read_text())
    he = report["he"]
    assert he["enabled"] and he["params"]["poly_modulus_degree"] == 4096
    assert he["model_parameters"] == 530
    # One 2048-slot ciphertext carries this 530-parameter model: ~62 kB per update.
    assert 60_000 < he["bytes_per_param"] * 530 < 64_000
    assert he["bytes_sent_per_round"] == pytest.approx(he["bytes_per_param"] * 530 * INSTITUTIONS)
    assert all(r["privacy"] for r in report["per_round"])  # DP spend still reported
