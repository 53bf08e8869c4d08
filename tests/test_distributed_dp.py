"""dp-mode=distributed (privacy/distributed.py): one DP-SGD step a round over the pooled
rows, each institution adding a 1/k_min share of the noise under CKKS.

The noise of the decrypted sum, the sums that are never decrypted, each ledger against
an independent accountant over the pooled-data events, what the coordinator received,
and the refusals.
"""

import json

import numpy as np
import pytest
import torch
from flwr.app import Message

from aidmp.config import RunConfig
from aidmp.errors import AidmpError, PrivacyError
from aidmp.privacy.distributed import (
    HE_SHARE_ERROR,
    distributed_shape,
    noise_share_std,
    noisy_gradient_share,
)
from aidmp.privacy.he.keys import (
    COORDINATOR_FILE,
    INSTITUTION_FILE,
    key_ceremony,
    load_context,
)
from aidmp.privacy.he.packing import EncryptedSum, decrypt_vector, encrypt_update
from aidmp.privacy.he.state import UPDATE_KEY
from aidmp.privacy.ledger import LEDGER_NAME, Charge, PrivacyLedger
from aidmp.server.report import REPORT_NAME
from aidmp.simulations.runner import prepare
from aidmp.tasks import get_task
from tests.recording import run_recorded

INSTITUTIONS, K_MIN, ROUNDS, Q = 4, 3, 3, 0.2


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    key_ceremony(out)
    return out


def _cfg(keys, out, **update):
    base = dict(task="breast-cancer", partition="iid", seed=1, num_rounds=ROUNDS, dp=True,
                dp_epsilon=4.0, dp_mode="distributed", dp_sample_rate=Q, learning_rate=1.0,
                min_nodes=K_MIN, min_available_nodes=INSTITUTIONS, he=True, he_keys=str(keys),
                central_eval=False, fraction_evaluate=0.0, out_dir=str(out))  # fmt: skip
    return RunConfig(**(base | update))


# --- refusals ----------------------------------------------------------------------
def test_distributed_without_he_is_refused():
    with pytest.raises(AidmpError, match="dp-mode=distributed needs he=true"):
        RunConfig.from_flower({"dp-mode": "distributed", "min-nodes": 3, "min-available-nodes": 3})


def test_distributed_with_fewer_than_three_min_nodes_is_refused(keys):
    with pytest.raises(AidmpError, match="min-nodes >= 3"):
        RunConfig.from_flower({"dp-mode": "distributed", "min-nodes": 2, "he": True,
                               "he-keys": str(keys), "central-eval": False})  # fmt: skip


def test_distributed_without_dp_or_with_another_strategy_is_refused(keys):
    common = {"dp-mode": "distributed", "min-nodes": 3, "min-available-nodes": 3, "he": True,
              "he-keys": str(keys), "central-eval": False}  # fmt: skip
    with pytest.raises(AidmpError, match="needs dp=true"):
        RunConfig.from_flower(common | {"dp": False})
    with pytest.raises(AidmpError, match="fedavg only"):
        RunConfig.from_flower(common | {"strategy": "fedavgm"})


def test_a_simulation_with_fewer_institutions_than_min_nodes_is_refused(keys, tmp_path):
    with pytest.raises(AidmpError, match="needs at least that many institutions"):
        prepare(_cfg(keys, tmp_path / "out", min_nodes=5, min_available_nodes=5), 4)


def test_a_share_below_three_contributions_is_refused():
    with pytest.raises(PrivacyError, match="at least 3"):
        noise_share_std(1.0, 1.0, 2)


# --- the noise of the decrypted sum -------------------------------------------------
def test_the_decrypted_sum_carries_noise_of_variance_sigma2_c2(keys):
    """k_min institutions, no row sampled (q tiny): the sum is pure noise, decrypted."""
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    public = load_context(keys / COORDINATOR_FILE, "coordinator")
    sigma, clip = 1.3, 0.7
    model = get_task("breast-cancer").build_model()
    x = np.zeros((50, 30), dtype=np.float32)
    y = np.zeros(50, dtype=np.int64)
    samples = []
    for rnd in range(8):  # seeded rounds
        total = EncryptedSum(public)
        for node in range(K_MIN):
            share = noisy_gradient_share(model, x, y, sample_rate=1e-12, noise_multiplier=sigma,
                                         max_grad_norm=clip, min_contributions=K_MIN,
                                         seed=1000 * rnd + node)  # fmt: skip
            assert np.std(share.gradient_sum) == pytest.approx(sigma * clip / np.sqrt(K_MIN),
                                                               rel=0.1)  # fmt: skip
            total.add(encrypt_update(secret, share.gradient_sum, 1.0), f"node {node}")
        size = len(share.gradient_sum)
        chunks = [v.serialize() for v in total.total or []]
        samples.append(decrypt_vector(secret, chunks, size, float(K_MIN), "sum"))
    noise = np.concatenate(samples)
    n = len(noise)
    # The sample variance of n normals has relative std √(2/n); allow 4 of them.
    assert np.var(noise) == pytest.approx((sigma * clip) ** 2, rel=4 * np.sqrt(2 / n))
    assert abs(np.mean(noise)) < 4 * sigma * clip / np.sqrt(n)


def test_the_share_is_the_clipped_gradient_sum_plus_the_noise():
    model = get_task("breast-cancer").build_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    exact = noisy_gradient_share(model, x, y, sample_rate=1.0, noise_multiplier=1e-9,
                                 max_grad_norm=0.5, min_contributions=3, seed=0)  # fmt: skip
    assert exact.sampled == 40
    # The clipped sum by hand: one example at a time.
    total = None
    for i in range(40):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(x[i : i + 1])),
                                                 torch.as_tensor(y[i : i + 1]))  # fmt: skip
        loss.backward()
        g = torch.cat([p.grad.ravel() for p in model.parameters()]).double()
        g = g * min(1.0, 0.5 / float(g.norm()))
        total = g if total is None else total + g
    np.testing.assert_allclose(exact.gradient_sum, total.numpy(), atol=1e-5)


# --- a federation on the in-process engine -------------------------------------------
@pytest.fixture(scope="module")
def federation(keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "out"
    received: list[Message] = []
    cfg = run_recorded(_cfg(keys, out), INSTITUTIONS, received, engine="inprocess")
    report = json.loads((out / REPORT_NAME).read_text())
    return cfg, out, received, report


def test_the_coordinator_received_only_ciphertexts_and_the_spend(federation, keys):
    _, _, received, _ = federation
    public = load_context(keys / COORDINATOR_FILE, "coordinator")
    assert len(received) == INSTITUTIONS * ROUNDS  # train only (fraction-evaluate 0)
    for reply in received:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        assert not content.array_records  # no plaintext arrays, ever
        assert set(content.config_records) <= {"node", UPDATE_KEY}
        assert set(content.metric_records["metrics"]) <= {"num-examples", "client-weight"}
        update = content.config_records[UPDATE_KEY]
        for blob in update["chunks"]:
            with pytest.raises(ValueError):  # the coordinator's key cannot decrypt it
                __import__("tenseal").ckks_vector_from(public, blob).decrypt()


def test_each_ledger_equals_central_dp_sgd_over_the_pooled_events(federation):
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    cfg, out, _, report = federation
    assert report["privacy"]["mode"] == "distributed"
    assert all(r["aggregated"] and r["train_replies"] >= K_MIN for r in report["per_round"])
    folders = sorted((out / "institutions").iterdir())
    assert len(folders) == INSTITUTIONS
    for folder in folders:
        ledger = PrivacyLedger.load(folder / LEDGER_NAME)
        sigma = ledger.events[0].noise_multiplier
        assert ledger.events == [Charge(sigma, Q, 1)] * ROUNDS  # one step a round at q
        acct = PLDAccountant()
        event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(sigma))
        acct.compose(dp_accounting.SelfComposedDpEvent(event, ROUNDS))
        assert ledger.spent() == pytest.approx(acct.get_epsilon(cfg.dp_delta), rel=2e-2)
        assert ledger.spent() <= cfg.dp_epsilon
    summary = report["privacy"]["distributed"]
    assert summary["min_contributions"] == K_MIN and summary["sample_rate"] == Q
    assert summary["he_error_over_noise_std"] < 1e-2  # the HE error is far below the noise


def test_the_distributed_run_learns(federation, keys):
    """The researcher decrypts the final model: DP-SGD steps moved it, and it scores."""
    from aidmp.privacy.he.state import EncryptedGlobal, unflatten_state
    from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from aidmp.tasks import load_dataset

    _, out, _, _ = federation
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    params, _ = EncryptedGlobal.from_arrays(load_checkpoint(out / CHECKPOINT_NAME).model).decrypt(
        secret
    )
    task = get_task("breast-cancer")
    model = task.build_model()
    model.load_state_dict(unflatten_state(params, model.state_dict()))
    data = load_dataset("breast-cancer")
    assert task.evaluate(model, data.x_test, data.y_test)[1] > 0.8


# --- a sum of fewer than k_min contributions ---------------------------------------
def test_strategy_drops_a_short_sum(keys, tmp_path, monkeypatch):
    """The strategy itself refuses to use a sum of fewer than min-nodes shares, even if
    asked to (server/rounds.py already never asks): no multiply, no new global state."""
    from flwr.app import ConfigRecord, Metadata, MetricRecord, RecordDict

    from aidmp.strategies import build_strategy

    strategy = build_strategy(_cfg(keys, tmp_path, min_nodes=3, min_available_nodes=3))
    model = get_task("breast-cancer").build_model()
    arrays = strategy.initial_state(model.state_dict())
    strategy._current = strategy.open_state(arrays)
    strategy.begin_train(1)
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    size = sum(p.numel() for p in model.parameters())

    def reply(node: int) -> Message:
        chunks = encrypt_update(secret, np.ones(size), 1.0)
        content = RecordDict({
            "metrics": MetricRecord({"num-examples": 100}),
            UPDATE_KEY: ConfigRecord({"chunks": chunks, "fingerprint": strategy.fingerprint}),
        })  # fmt: skip
        meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60,
                        message_type="train")  # fmt: skip
        return Message(metadata=meta, content=content)

    for node in (1, 2):
        assert strategy.accumulate_train(reply(node), f"node {node}") is None

    def never(*_a, **_k):
        raise AssertionError("a short sum was multiplied")

    monkeypatch.setattr(EncryptedSum, "mean", never)
    assert strategy.finish_train(1) == (None, None)
    assert strategy._sum is None  # dropped, not kept for later


def test_distributed_shape_is_one_step_at_q():
    assert distributed_shape(0.05).charge(1.2) == Charge(1.2, 0.05, 1)
    with pytest.raises(PrivacyError):
        distributed_shape(0.0)
    assert HE_SHARE_ERROR < 1e-3
