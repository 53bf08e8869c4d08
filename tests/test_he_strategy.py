"""Encrypted FedAvg/FedAvgM with the real ClientApp handlers and real TenSEAL ciphertexts.

One federation round is played in-process: the strategy configures the round, each
node's `train` handler answers, and the strategy aggregates. The plaintext Flower
strategy gets the same node answers in plaintext, and the decrypted results must match.
"""

from collections.abc import Iterable

import numpy as np
import pytest
import tenseal as ts
import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM

from aidmp.client.app import evaluate, train
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode, HeError
from aidmp.privacy.he.keys import (
    COORDINATOR_FILE,
    INSTITUTION_FILE,
    key_ceremony,
    load_context,
)
from aidmp.privacy.he.state import UPDATE_KEY, WIRE_KEY, EncryptedGlobal, flatten_state
from aidmp.server.round_settings import round_config_for
from aidmp.strategies import build_strategy
from aidmp.strategies.encrypted import EncryptedFedAvg
from aidmp.tasks import get_task

NODES = 3


class ThreeNodes:
    """The sampling part of a Grid: three connected nodes (no transport is involved)."""

    def get_node_ids(self) -> Iterable[int]:
        return [0, 1, 2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    key_ceremony(out)
    return out


def _cfg(keys, **update):
    base = dict(task="breast-cancer", partition="iid", seed=0, dp=False, he=True,
                he_keys=str(keys), central_eval=False, min_available_nodes=NODES,
                min_nodes=NODES, out_dir=str(keys.parent / "out"))  # fmt: skip
    return RunConfig(**(base | update))


def _node(i):
    return Context(
        run_id=1,
        node_id=i,
        node_config={"partition-id": i, "num-partitions": NODES},
        state=RecordDict(),
        run_config={},
    )


def _answer(messages):
    return [train(m, _node(m.metadata.dst_node_id)) for m in messages]


def _plain_replies(replies, keys, global_params, template, momentum=None, beta=0.0, eta=1.0):
    """What each node's plaintext reply would have been: w_t + Δ, where its encrypted
    update is n·(β·M + η·Δ)."""
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    out = []
    for reply in replies:
        n = reply.content["metrics"]["num-examples"]
        chunks = reply.content[UPDATE_KEY]["chunks"]
        vec = np.concatenate(
            [np.asarray(ts.ckks_vector_from(secret, b).decrypt())[1:] for b in chunks]
        )
        update = vec[: len(global_params)] / n
        if momentum is not None:
            update = update - beta * momentum
        local = global_params + update / eta
        arrays = {}
        offset = 0
        for k, t in template.items():
            arrays[k] = torch.from_numpy(
                local[offset : offset + t.numel()].reshape(t.shape)
            ).float()
            offset += t.numel()
        from flwr.app import ArrayRecord

        content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": reply.content["metrics"]})
        out.append(
            Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))
        )
    return out


def test_refuses_combinations_that_cannot_run_on_ciphertexts(keys):
    for update, reason in [
        ({"strategy": "median"}, "compare or sort"),
        ({"strategy": "trimmed-mean"}, "compare or sort"),
        ({"central_eval": True}, "central-eval=false"),
        ({"client_dp": True}, "client-dp"),
        ({"he_keys": ""}, "needs he-keys"),
    ]:
        with pytest.raises(AidmpError, match=reason):
            RunConfig.from_flower(_cfg(keys, **update).to_flower())


def test_coordinator_refuses_a_secret_context(keys):
    with pytest.raises(HeError, match="holds a secret key"):
        build_strategy(_cfg(keys, he_keys=str(keys / INSTITUTION_FILE)))
    with pytest.raises(HeError, match="secret CKKS context"):
        EncryptedFedAvg(load_context(keys / INSTITUTION_FILE, "institution"))


def test_encrypted_fedavg_round_equals_plaintext_fedavg(keys):
    cfg = _cfg(keys)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    model = get_task(cfg.task).build_model()
    arrays = strategy.initial_state(model.state_dict())
    messages = list(strategy.configure_train(1, arrays, round_config_for(cfg, 1), ThreeNodes()))
    assert all(not m.content.array_records for m in messages)  # the model goes out encrypted
    replies = _answer(messages)
    assert not any(r.has_error() for r in replies)

    # The coordinator's view: no arrays, only ciphertext it cannot decrypt, and metrics.
    public = load_context(keys / COORDINATOR_FILE, "coordinator")
    for r in replies:
        assert not r.content.array_records
        assert set(r.content.metric_records["metrics"]) == {
            "num-examples",
            "train-loss",
            "client-weight",
        }
        for blob in r.content[UPDATE_KEY]["chunks"]:
            with pytest.raises(ValueError, match="secret_key"):
                ts.ckks_vector_from(public, blob).decrypt()

    new_arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and "train-loss" in metrics
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    he_params, momentum = EncryptedGlobal.from_arrays(new_arrays).decrypt(secret)
    assert momentum is None

    w0 = flatten_state(model.state_dict())
    plain_arrays, _ = FedAvg().aggregate_train(
        1, _plain_replies(replies, keys, w0, model.state_dict())
    )
    expected = flatten_state(plain_arrays.to_torch_state_dict())
    # Tolerance: float32 rounding of the plaintext path and the 1/W multiplier's
    # rounding (relative W/2^26, W ~ 400 here); see privacy/he/packing.py.
    assert np.abs(he_params - expected).max() < 2e-6
    assert np.abs(he_params - w0).max() > 1e-3  # and the model did move


def test_encrypted_fedavgm_tracks_flower_fedavgm_over_two_rounds(keys):
    cfg = _cfg(keys, strategy="fedavgm", server_momentum=0.9, server_learning_rate=0.5)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    model = get_task(cfg.task).build_model()
    template = model.state_dict()
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    plain = FedAvgM(server_momentum=0.9, server_learning_rate=0.5)
    from flwr.app import ArrayRecord

    plain.current_arrays = ArrayRecord(template)
    arrays = strategy.initial_state(template)
    w_plain = flatten_state(template)
    for rnd in (1, 2):
        state = EncryptedGlobal.from_arrays(arrays)
        w_he, m_he = state.decrypt(secret)
        np.testing.assert_allclose(w_he, w_plain, atol=1e-5)
        messages = list(
            strategy.configure_train(rnd, arrays, round_config_for(cfg, rnd), ThreeNodes())
        )
        replies = _answer(messages)
        plain_replies = _plain_replies(
            replies, keys, w_he, template, momentum=m_he, beta=0.9, eta=0.5
        )
        new_plain, _ = plain.aggregate_train(rnd, plain_replies)
        w_plain = flatten_state(new_plain.to_torch_state_dict())
        arrays, _ = strategy.aggregate_train(rnd, replies)
        m_plain = plain.momentum_vector
    assert m_plain is not None
    w_he, m_he = EncryptedGlobal.from_arrays(arrays).decrypt(secret)
    np.testing.assert_allclose(w_he, w_plain, atol=1e-5)
    flat_m = np.concatenate([np.asarray(v).ravel() for v in m_plain])
    np.testing.assert_allclose(m_he, -0.5 * flat_m, atol=1e-5)  # M = −η·(Flower's momentum)


def test_node_declines_a_model_under_other_keys(keys, tmp_path):
    cfg = _cfg(keys)
    key_ceremony(tmp_path)
    stranger = build_strategy(_cfg(tmp_path))
    torch.manual_seed(0)
    arrays = stranger.initial_state(get_task(cfg.task).build_model().state_dict())
    msg = list(stranger.configure_train(1, arrays, round_config_for(cfg, 1), ThreeNodes()))[0]
    reply = train(msg, _node(0))  # this node holds `keys`, not the stranger's
    assert reply.has_error() and reply.error.code == DeclineCode.HE_KEYS
    assert "fingerprint" in reply.error.reason and "same key ceremony" in reply.error.reason


def test_coordinator_rejects_a_truncated_update_and_keeps_the_rest(keys):
    cfg = _cfg(keys)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    arrays = strategy.initial_state(get_task(cfg.task).build_model().state_dict())
    replies = _answer(strategy.configure_train(1, arrays, round_config_for(cfg, 1), ThreeNodes()))
    chunk = replies[1].content[UPDATE_KEY]["chunks"][0]
    replies[1].content[UPDATE_KEY]["chunks"] = [chunk[: len(chunk) // 2]]
    strategy.begin_train(1)
    reasons = [strategy.accumulate_train(r, f"institution-{i}") for i, r in enumerate(replies)]
    assert reasons[0] is None and reasons[2] is None
    assert "institution-1, chunk 0: ciphertext is truncated or tampered" in reasons[1]
    new_arrays, _ = strategy.finish_train(1)
    # The two good updates were aggregated, and nodes can decrypt the result.
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    params, _ = EncryptedGlobal.from_arrays(new_arrays).decrypt(secret)
    assert np.isfinite(params).all()


def test_an_update_from_other_keys_is_not_aggregated(keys, tmp_path):
    cfg = _cfg(keys)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    arrays = strategy.initial_state(get_task(cfg.task).build_model().state_dict())
    replies = _answer(strategy.configure_train(1, arrays, round_config_for(cfg, 1), ThreeNodes()))
    replies[2].content[UPDATE_KEY]["fingerprint"] = "0" * 64
    strategy.begin_train(1)
    assert strategy.accumulate_train(replies[0], "institution-0") is None
    assert "key fingerprint 0000" in strategy.accumulate_train(replies[2], "institution-2")


def test_evaluation_decrypts_the_global_model(keys):
    cfg = _cfg(keys)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    arrays = strategy.initial_state(get_task(cfg.task).build_model().state_dict())
    msg = list(strategy.configure_evaluate(1, arrays, round_config_for(cfg, 1), ThreeNodes()))[0]
    assert WIRE_KEY in msg.content.config_records and not msg.content.array_records
    reply = evaluate(msg, _node(0))
    assert not reply.has_error()
    assert 0.0 <= reply.content["metrics"]["eval-accuracy"] <= 1.0


def test_the_encrypted_model_survives_a_checkpoint_and_other_keys_cannot_resume_it(keys, tmp_path):
    from aidmp.server.checkpoint import (
        Checkpoint,
        check_resumable,
        load_checkpoint,
        save_checkpoint,
    )

    cfg = _cfg(keys)
    strategy = build_strategy(cfg)
    torch.manual_seed(0)
    model = get_task(cfg.task).build_model()
    arrays = strategy.initial_state(model.state_dict())
    path = tmp_path / "checkpoint.npz"
    meta = {"run_config": cfg.to_flower()}
    save_checkpoint(path, Checkpoint(1, {k: v.numpy() for k, v in arrays.items()}, meta=meta))
    restored = load_checkpoint(path)
    state = strategy.open_state(restored.model)  # what a resumed coordinator does
    secret = load_context(keys / INSTITUTION_FILE, "institution")
    params, _ = state.decrypt(secret)
    np.testing.assert_allclose(params, flatten_state(model.state_dict()), atol=1e-6)

    key_ceremony(tmp_path / "other")
    with pytest.raises(HeError, match="resume with the keys the run began with"):
        build_strategy(_cfg(tmp_path / "other")).open_state(restored.model)
    with pytest.raises(AidmpError, match="he=True"):
        check_resumable(restored, path, {**cfg.to_flower(), "he": False})
