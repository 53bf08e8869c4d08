"""The in-process grid (simulations/inprocess.py) keeps Flower's message contract, and a
federation on it runs our real ClientApp: break the ClientApp and these runs break."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

import aidmp.client.app
import aidmp.client.train_handler
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode
from aidmp.privacy.audit import AUDIT_NAME, verify_audit_log
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.server.federation import run_federation
from aidmp.simulations.inprocess import InProcessGrid
from aidmp.simulations.runner import prepare, simulate

toy = ClientApp()


@toy.train()
def _count(msg: Message, context):
    """Counts the messages this node has handled in its context's state."""
    seen = context.state.config_records.get("seen", ConfigRecord({"n": 0}))
    context.state["seen"] = ConfigRecord({"n": int(seen["n"]) + 1})
    if msg.content["config"].get("fail"):
        raise RuntimeError("boom")
    metrics = {
        "n": int(seen["n"]) + 1,
        "partition": int(context.node_config["partition-id"]),
        "num-partitions": int(context.node_config["num-partitions"]),
        "identity": int(TaskIdentity.node_id == context.node_id),
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _send(grid, fail=False, ttl=None, nodes=None):
    return [
        Message(RecordDict({"config": ConfigRecord({"fail": fail})}), node, "train",
                group_id="7", ttl=ttl)
        for node in (nodes or grid.get_node_ids())
    ]  # fmt: skip


def test_messages_and_replies_carry_flowers_metadata():
    grid = InProcessGrid(3, client_app=toy)
    nodes = grid.get_node_ids()
    assert len(set(nodes)) == 3 and not set(nodes) & {0, 1, 2, SUPERLINK_NODE_ID}
    sent = _send(grid)
    replies = grid.send_and_receive(sent, timeout=30)
    assert len(replies) == 3
    by_id = {m.metadata.message_id: m for m in sent}
    assert all(by_id) and len(by_id) == 3  # the grid gave each instruction an id
    for reply in replies:
        ins = by_id[reply.metadata.reply_to_message_id].metadata
        meta = reply.metadata
        assert (meta.src_node_id, meta.dst_node_id) == (ins.dst_node_id, SUPERLINK_NODE_ID)
        assert (meta.run_id, meta.group_id, meta.message_type) == (grid.run.run_id, "7", "train")
        assert meta.message_id and meta.message_id not in by_id
        metrics = reply.content["metrics"]
        assert metrics["num-partitions"] == 3 and metrics["identity"] == 1
    assert sorted(int(m.content["metrics"]["partition"]) for m in replies) == [0, 1, 2]
    assert TaskIdentity.node_id == SUPERLINK_NODE_ID  # the coordinator's again
    # Each node keeps its own context: a second message finds the first one's state.
    again = grid.send_and_receive(_send(grid), timeout=30)
    assert {int(m.content["metrics"]["n"]) for m in again} == {2}


def test_a_reply_is_a_copy_off_the_wire_and_replies_come_one_pull_at_a_time():
    grid = InProcessGrid(2, client_app=toy)
    sent = _send(grid)
    ids = grid.push_messages(sent)
    first = grid.pull_messages(ids)
    assert len(first) == 1  # the second node has not run yet
    rest = [i for i in ids if i != first[0].metadata.reply_to_message_id]
    second = grid.pull_messages(rest)
    assert len(second) == 1 and first[0].content is not second[0].content
    # Pulled once, a reply is gone, as from a SuperLink: asking again gets Flower's error.
    again = grid.pull_messages(ids)
    assert [m.error.code for m in again] == [ErrorCode.MESSAGE_UNAVAILABLE] * 2


def test_a_clientapp_exception_is_flowers_error_reply_and_leaves_the_state_alone():
    grid = InProcessGrid(1, client_app=toy)
    (failed,) = grid.send_and_receive(_send(grid, fail=True), timeout=30)
    assert failed.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert failed.error.reason == "<class 'RuntimeError'>:<'boom'>"
    (ok,) = grid.send_and_receive(_send(grid), timeout=30)
    assert ok.content["metrics"]["n"] == 1  # the failed call's state change was dropped
    assert grid.context(0).state["seen"]["n"] == 1


def test_an_expired_instruction_never_reaches_the_node():
    grid = InProcessGrid(1, client_app=toy)
    ids = grid.push_messages(_send(grid, ttl=0.05))
    time.sleep(0.1)
    (reply,) = grid.pull_messages(ids)
    assert reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert "seen" not in grid.context(0).state.config_records


def test_a_message_no_superlink_would_accept_is_refused_loudly():
    grid = InProcessGrid(1, client_app=toy)
    with pytest.raises(ValueError, match="no node with id"):
        grid.push_messages(_send(grid, nodes=[12345]))
    (sent,) = _send(grid)
    grid.push_messages([sent])
    reply = Message(RecordDict(), reply_to=sent)
    with pytest.raises(ValueError, match="not an instruction"):
        grid.push_messages([reply])


def test_node_config_adds_to_what_flowers_simulation_gives():
    grid = InProcessGrid(2, client_app=toy, node_config=lambda i: {"name": f"site-{i}"})
    assert grid.context(1).node_config == {"partition-id": 1, "num-partitions": 2,
                                           "name": "site-1"}  # fmt: skip


def test_the_default_client_is_our_clientapp():
    assert InProcessGrid(1).client_app is aidmp.client.app.app


def test_sites_charged_for_a_round_nobody_aggregated_are_warned_about(tmp_path, monkeypatch):
    """Two of three sites train under DP and reply, the third fails: with min-nodes=3 the
    round is skipped, and the report says who paid ε for it."""
    real = aidmp.client.train_handler.local_data

    def third_fails(node_config, config):
        if int(node_config["partition-id"]) == 2:
            raise RuntimeError("this site's disk is gone")
        return real(node_config, config)

    monkeypatch.setattr(aidmp.client.train_handler, "local_data", third_fails)
    cfg = prepare(RunConfig(task="breast-cancer", partition="iid", num_rounds=1, dp=True,
                            min_nodes=3, min_available_nodes=3, central_eval=False,
                            fraction_evaluate=0.0, out_dir=str(tmp_path)), 3)  # fmt: skip
    grid = InProcessGrid(3)
    report = run_federation(grid, cfg, run_id=str(grid.run.run_id))
    (rnd,) = report["per_round"]
    assert not rnd["aggregated"] and rnd["train_replies"] == 2
    paid = ["institution-0", "institution-1"]
    assert report["skipped_rounds"] == {"rounds": [1], "charged_sites": paid}
    assert report["warnings"] == [
        "round 1: institution-0, institution-1 spent privacy budget on updates nobody aggregated"
    ]


def test_a_broken_clientapp_breaks_the_federation(tmp_path, monkeypatch):
    """Every node declines through our own handler and audit mod, and nothing aggregates."""

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(aidmp.client.train_handler, "local_data", broken)
    cfg = prepare(RunConfig(task="breast-cancer", partition="iid", num_rounds=1, dp=False,
                            central_eval=False, out_dir=str(tmp_path)), 3)  # fmt: skip
    grid = InProcessGrid(3)
    report = run_federation(grid, cfg, run_id=str(grid.run.run_id))
    (rnd,) = report["per_round"]
    assert not rnd["aggregated"] and rnd["train_replies"] == 0
    assert sorted(f["institution"] for f in rnd["train_failures"]) == [
        "institution-0", "institution-1", "institution-2"
    ]  # fmt: skip
    assert {f["code"] for f in rnd["train_failures"]} == {DeclineCode.DATA_UNAVAILABLE}
    for i in range(3):
        audit = tmp_path / "institutions" / f"institution-{i}" / AUDIT_NAME
        assert verify_audit_log(audit) == [] and "train-decline" in audit.read_text()


def test_simulate_in_process_learns_checkpoints_and_resumes(tmp_path, caplog):
    cfg = RunConfig(task="breast-cancer", partition="iid", seed=1, learning_rate=0.1, dp=False,
                    num_rounds=2, out_dir=str(tmp_path))  # fmt: skip
    with caplog.at_level("INFO", logger="aidmp"):
        before = simulate(cfg, 3, engine="inprocess")
    assert "round   2/2" in caplog.text
    assert [(r["round"], r["train_replies"], r["eval_replies"]) for r in before["per_round"]] == [
        (1, 3, 3), (2, 3, 3)
    ]  # fmt: skip
    assert before["final"]["accuracy"] > 0.85 and before["final"]["source"] == "central"
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
    model_before = load_checkpoint(tmp_path / CHECKPOINT_NAME).model
    after = simulate(cfg.model_copy(update={"num_rounds": 3, "resume": True}), 3,
                     engine="inprocess")  # fmt: skip
    assert after["resumed_from_round"] == 2 and after["per_round"][:2] == before["per_round"]
    model_after = load_checkpoint(tmp_path / CHECKPOINT_NAME).model
    assert any(not np.array_equal(model_before[k], model_after[k]) for k in model_before)
    with pytest.raises(AidmpError, match="unknown engine"):
        simulate(cfg, 3, engine="threads")
