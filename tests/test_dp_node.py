"""DP at the node: the policy it trains under, and the train handler charging its ledger."""

import contextlib

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from aidmp.client.app import train
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode, PrivacyError
from aidmp.privacy.dp import train_dp
from aidmp.privacy.ledger import LEDGER_NAME, PrivacyLedger
from aidmp.privacy.policy import resolve_dp_policy
from aidmp.round_config import RoundConfig
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.membership import attack_metrics
from aidmp.tasks import get_task

NODE = {"partition-id": 0, "num-partitions": 3}


def _request(cfg, rnd=1):
    torch.manual_seed(0)
    model = get_task(cfg.task).build_model()
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": round_config_for(cfg, rnd)}
    )
    return Message(content, dst_node_id=7, message_type="train")


def _context(node_config, run_id=11):
    return Context(
        run_id=run_id, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )


def _round(wire):
    """A round config with the keys every round carries, and `wire` (dp-* keys sent only
    where given)."""
    base = {"task": "breast-cancer", "partition": "iid", "seed": 0, "local-epochs": 1,
            "batch-size": 64, "learning-rate": 0.05, "server-round": 1,
            "num-rounds": 3}  # fmt: skip
    return RoundConfig.from_record(base | wire)


def _cfg(tmp_path, **kw):
    base = dict(task="breast-cancer", partition="iid", num_rounds=3, out_dir=str(tmp_path / "out"))
    return RunConfig(**(base | kw))


def test_node_config_wins_over_the_run_config(tmp_path):
    round_config = _round({"dp": False, "dp-epsilon": 8.0, "state-root": str(tmp_path)})
    node = {"dp": True, "dp-epsilon": 1.0, "state-dir": str(tmp_path / "mine")}
    policy = resolve_dp_policy(node, round_config, "institution-0")
    assert policy is not None and policy.epsilon == 1.0 and policy.state_dir == tmp_path / "mine"
    assert resolve_dp_policy({}, round_config, "x") is None  # simulation: the run decides
    sim = resolve_dp_policy(
        {}, _round({"dp": True, "dp-epsilon": 2.0, "state-root": str(tmp_path)}), "inst-3"
    )
    assert sim.state_dir == tmp_path / "inst-3"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dp-epsilon": 0.0}, "dp-epsilon"),
        ({"dp-epsilon": -1.0}, "dp-epsilon"),
        ({"dp-delta": 1.5}, "dp-delta"),
        ({"dp-grad-sample-mode": "ew"}, "not one of"),
    ],
)
def test_bad_policy_values_are_clear_errors(tmp_path, overrides, match):
    config = _round({"dp": True, "dp-epsilon": 3.0, "state-root": str(tmp_path)} | overrides)
    with pytest.raises(PrivacyError, match=match):
        resolve_dp_policy({}, config, "institution-0")


def test_dp_without_a_state_folder_is_refused():
    with pytest.raises(PrivacyError, match="state-dir"):
        resolve_dp_policy({}, _round({"dp": True, "dp-epsilon": 3.0}), "institution-0")


def test_run_config_rejects_epsilon_zero():
    with pytest.raises(AidmpError, match="dp-epsilon"):
        RunConfig.from_flower({"dp-epsilon": 0})


def test_train_handler_charges_the_ledger_and_reports_the_spend(tmp_path):
    cfg = _cfg(tmp_path)
    first = train(_request(cfg, 1), _context(NODE))
    assert not first.has_error(), first.error.reason if first.has_error() else ""
    spend = first.content["node"]
    assert spend["institution"] == "institution-0"
    assert 0 < spend["epsilon-round"] == spend["epsilon-spent"] < 3.0
    assert spend["budget-left"] == pytest.approx(3.0 - spend["epsilon-spent"])
    assert spend["delta"] == 1e-5 and spend["noise-multiplier"] > 0.5
    second = train(_request(cfg, 2), _context(NODE)).content["node"]
    assert second["noise-multiplier"] == spend["noise-multiplier"]  # one plan per run
    assert second["epsilon-spent"] > spend["epsilon-spent"]
    ledger = PrivacyLedger.load(tmp_path / "out" / "institutions" / "institution-0" / LEDGER_NAME)
    assert [(e["run_id"], e["round"]) for e in ledger.entries] == [("11", 1), ("11", 2)]
    assert ledger.spent() == pytest.approx(second["epsilon-spent"])


def test_node_over_budget_declines_with_code_and_reason(tmp_path):
    cfg = _cfg(tmp_path, dp_epsilon=0.5, dp_noise_multiplier=0.5)  # a fixed, too-small σ
    reply = train(_request(cfg, 1), _context(NODE))
    assert reply.has_error() and reply.error.code == DeclineCode.BUDGET_EXHAUSTED
    assert reply.error.reason.startswith(
        "[institution-0] privacy budget exhausted: eps 0.00 of 0.50"
    )
    assert not (tmp_path / "out" / "institutions" / "institution-0" / LEDGER_NAME).exists() or (
        PrivacyLedger.load(
            tmp_path / "out" / "institutions" / "institution-0" / LEDGER_NAME
        ).entries
        == []
    )


def test_delta_above_one_over_n_declines(tmp_path):
    reply = train(_request(_cfg(tmp_path, dp_delta=0.01)), _context(NODE))
    assert reply.has_error() and reply.error.code == DeclineCode.PRIVACY_POLICY
    assert "below 1/n" in reply.error.reason


def test_dp_training_clips_and_noises():
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 30)).astype(np.float32) * 100  # huge grads
    y = np.random.default_rng(1).integers(0, 2, 200)
    task = get_task("breast-cancer")
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, charge = train_dp(
        model, x, y, epochs=1, batch_size=50, learning_rate=0.1, seed=0,
        noise_multiplier=0.0, max_grad_norm=0.01, grad_sample_mode="hooks",
    )  # fmt: skip
    step = torch.cat([(model.state_dict()[k] - before[k]).flatten() for k in before])
    # 4 steps, momentum 0.9, each an average of per-sample grads clipped to 0.01.
    assert step.norm() <= 0.1 * 0.01 * (1 + 1.9 + 2.71 + 3.439) + 1e-6
    assert charge.steps == 4 and charge.sample_rate == 0.25


def test_attack_metrics_separate_and_chance():
    rng = np.random.default_rng(0)
    assert attack_metrics(np.ones(100), np.zeros(100))["auc"] == 1.0
    chance = attack_metrics(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(chance["auc"] - 0.5) < 0.03 and chance["tpr_at_1pct_fpr"] < 0.03


def test_two_releases_training_at_once_are_both_charged(tmp_path, monkeypatch):
    """Flower runs a ClientApp process per message, so two releases can overlap. Without
    the ledger lock both would open the same ledger, and the later write would drop the
    earlier charge. Each thread here waits (up to 1 s) for the other right after opening
    the ledger, which is exactly the overlap the lock must prevent."""
    import threading

    import aidmp.privacy.node_round as node_round
    from aidmp.privacy.policy import DPPolicy

    opened = threading.Barrier(2, timeout=1.0)
    real_open = node_round.open_ledger

    def open_then_wait(*args, **kwargs):
        ledger = real_open(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            opened.wait()
        return ledger

    monkeypatch.setattr(node_round, "open_ledger", open_then_wait)
    data = get_task("breast-cancer").load()
    from aidmp.tasks.data import LocalData

    local = LocalData(data.x_train[:200], data.y_train[:200], data.x_test, data.y_test)
    policy = DPPolicy.model_validate(
        {"dp-epsilon": 20.0, "dp-noise-multiplier": 1.5, "state_dir": tmp_path}
    )

    def release(message_id: str) -> None:
        model = get_task("breast-cancer").build_model()
        node_round.train_private_round(
            model, local, policy=policy, dataset_id="d" * 64, run_id="r", server_round=1,
            num_rounds=1, epochs=1, batch_size=32, learning_rate=0.1, seed=0,
            job_id="job", message_id=message_id,
        )  # fmt: skip

    threads = [threading.Thread(target=release, args=(m,)) for m in ("m1", "m2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    assert sorted(e["message_id"] for e in ledger.entries) == ["m1", "m2"]
    assert [e["release"] for e in ledger.entries] == [1, 2] and ledger.verify() == []
