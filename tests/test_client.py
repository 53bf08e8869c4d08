"""The ClientApp's handlers, called as Flower calls them (real Messages, real training)."""

import tempfile

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from aidmp.client.app import evaluate, train
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.server.round_settings import round_config_for
from aidmp.tasks import get_task


def _context(node_config):
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _request(kind, cfg, rnd=1, **extra):
    torch.manual_seed(0)  # the same global model every time
    model = get_task(cfg.task).build_model()
    config = round_config_for(cfg, rnd)
    for k, v in extra.items():
        config[k] = v
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    return Message(content, dst_node_id=7, message_type=kind), model


NODE = {"partition-id": 1, "num-partitions": 3}
# Nodes keep their audit logs under the run's state root: a throwaway folder here.
CFG = RunConfig(task="breast-cancer", partition="iid", seed=0, dp=False, out_dir=tempfile.mkdtemp())


def test_train_replies_with_new_weights_and_example_count():
    msg, model = _request("train", CFG)
    reply = train(msg, _context(NODE))
    assert not reply.has_error()
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 137  # 455 rows / 3 -> 152, less 15 (10%) for validation
    assert np.isfinite(metrics["train-loss"])
    before = model.state_dict()
    after = reply.content["arrays"].to_torch_state_dict()
    assert set(after) == set(before)
    assert any(not np.allclose(after[k], before[k]) for k in before)


def test_training_is_repeatable_for_the_same_round():
    a = train(_request("train", CFG)[0], _context(NODE)).content["arrays"]
    b = train(_request("train", CFG)[0], _context(NODE)).content["arrays"]
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())


def test_proximal_term_keeps_the_model_near_the_global_one():
    def drift(mu):
        msg, model = _request(
            "train", CFG.model_copy(update={"local_epochs": 5}), **{"proximal-mu": mu}
        )
        after = train(msg, _context(NODE)).content["arrays"].to_torch_state_dict()
        return sum(float((after[k] - v).pow(2).sum()) for k, v in model.state_dict().items())

    assert drift(5.0) < 0.5 * drift(0.0)


def test_evaluate_scores_the_local_validation_rows():
    reply = evaluate(_request("evaluate", CFG)[0], _context(NODE))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 15
    assert 0.0 <= metrics["eval-accuracy"] <= 1.0 and metrics["eval-loss"] > 0


def test_node_without_data_declines_with_a_reason():
    reply = train(_request("train", CFG)[0], _context({}))
    assert reply.has_error()
    assert reply.error.code == DeclineCode.DATA_UNAVAILABLE
    assert "--node-config" in reply.error.reason


def test_config_without_a_task_key_declines():
    msg, _ = _request("train", CFG)
    msg.content["config"] = ConfigRecord({"seed": 0})
    reply = train(msg, _context(NODE))
    assert reply.has_error() and reply.error.code == DeclineCode.BAD_CONFIG
    assert "'task'" in reply.error.reason


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_local_data_is_loaded_once_per_process(kind):
    from aidmp.client.data import simulated_institution

    handler = train if kind == "train" else evaluate
    handler(_request(kind, CFG)[0], _context(NODE))
    hits = simulated_institution.cache_info().hits
    handler(_request(kind, CFG, rnd=2)[0], _context(NODE))
    assert simulated_institution.cache_info().hits == hits + 1
