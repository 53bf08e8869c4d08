"""Our strategy code: the factory's choices and checks, the state a checkpoint keeps, and
the round loop's handling of replies (declines, inconsistent replies, too few updates,
nodes still connecting). Flower's own aggregation arithmetic (FedAvg's weighted mean,
FedAvgM's momentum, the median, the trimmed mean) is Flower's code, tested by Flower."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg

from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.simulations.inprocess import InProcessGrid
from aidmp.strategies import STRATEGY_NAMES, build_strategy, restore_strategy_state, strategy_state

RNG = np.random.default_rng(7)
SHAPES = {"w": (3, 4), "b": (4,)}
KINDS = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM,
    "trimmed-mean": FedTrimmedAvg, "median": FedMedian,
}  # fmt: skip


def _updates(n):
    return [{k: RNG.normal(size=s).astype(np.float64) for k, s in SHAPES.items()} for _ in range(n)]


def _replies(updates, counts):
    return [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                    "metrics": MetricRecord({"num-examples": c, "train-loss": float(i)}),
                }
            ),
            dst_node_id=i + 1,
            message_type="train",
        )
        for i, (u, c) in enumerate(zip(updates, counts, strict=True))
    ]


def _as_dict(arrays):
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_name_builds_with_our_sampling_settings(name):
    cfg = RunConfig(strategy=name, min_nodes=3, min_available_nodes=10, fraction_train=0.5,
                    fraction_evaluate=0.25)  # fmt: skip
    s = build_strategy(cfg)
    assert type(s) is KINDS[name]
    assert (s.min_train_nodes, s.min_evaluate_nodes, s.min_available_nodes) == (3, 3, 10)
    assert (s.fraction_train, s.fraction_evaluate) == (0.5, 0.25)
    assert s.weighted_by_key == "num-examples"


def test_each_strategy_gets_its_own_setting_from_the_run_config():
    assert build_strategy(RunConfig(strategy="fedprox", proximal_mu=0.3)).proximal_mu == 0.3
    m = build_strategy(RunConfig(strategy="fedavgm", server_learning_rate=0.7, server_momentum=0.5))
    assert (m.server_learning_rate, m.server_momentum) == (0.7, 0.5)
    assert build_strategy(RunConfig(strategy="trimmed-mean", trim_beta=0.3)).beta == 0.3


def test_min_nodes_is_capped_at_the_nodes_a_round_waits_for():
    """A round never needs more updates than the nodes it waits for."""
    s = build_strategy(RunConfig(min_nodes=5, min_available_nodes=3))
    assert (s.min_train_nodes, s.min_evaluate_nodes, s.min_available_nodes) == (3, 3, 3)


def _fedavgm_round(strategy, current, ups, counts, rnd):
    strategy.current_arrays = ArrayRecord({k: Array(v.copy()) for k, v in current.items()})
    arrays, _ = strategy.aggregate_train(rnd, _replies(ups, counts))
    return _as_dict(arrays)


def test_fedavgm_momentum_survives_a_checkpoint():
    cfg = RunConfig(strategy="fedavgm")
    w0 = {k: np.zeros(s) for k, s in SHAPES.items()}
    ups1, ups2, counts = _updates(3), _updates(3), [4, 1, 2]
    straight = build_strategy(cfg)
    w1 = _fedavgm_round(straight, w0, ups1, counts, 1)
    expected = _fedavgm_round(straight, w1, ups2, counts, 2)

    first = build_strategy(cfg)
    _fedavgm_round(first, w0, ups1, counts, 1)
    resumed = build_strategy(cfg)  # a fresh process after a restart
    restore_strategy_state(resumed, strategy_state(first))
    got = _fedavgm_round(resumed, w1, ups2, counts, 2)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k])
    assert strategy_state(build_strategy(RunConfig())) == {}


def test_client_level_dp_wraps_fedavg_with_equal_weights_and_refuses_the_rest():
    from aidmp.strategies.client_dp import CLIENT_WEIGHT_KEY, ClientLevelDP

    cfg = RunConfig(client_dp=True, min_available_nodes=5, fraction_train=0.6, min_nodes=2)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, ClientLevelDP)
    assert strategy.num_sampled_clients == 3 and strategy.accountant is not None
    assert strategy.strategy.weighted_by_key == CLIENT_WEIGHT_KEY
    with pytest.raises(AidmpError, match="client-level DP needs strategy fedavg or fedprox"):
        build_strategy(RunConfig(client_dp=True, strategy="median"))


def test_client_level_dp_accountant_survives_a_checkpoint():
    from flwr.serverapp import GaussianPrivacyEvent

    cfg = RunConfig(client_dp=True, min_available_nodes=4)
    first = build_strategy(cfg)
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=4, population_size=4)
    first.accountant.compose(event, count=3)
    resumed = build_strategy(cfg)
    restore_strategy_state(resumed, strategy_state(first))
    assert resumed.accountant.num_releases == 3
    assert resumed.accountant.get_epsilon(1e-5) == pytest.approx(first.accountant.get_epsilon(1e-5))


def test_a_failure_the_superlink_reports_for_a_vanished_node_names_that_node():
    from flwr.app import Error, Message, RecordDict

    from aidmp.server.rounds import _failures

    sent = Message(RecordDict(), dst_node_id=42, message_type="train")
    sent.metadata.__dict__["_message_id"] = "m-1"
    reply = Message(Error(code=5, reason="Node Unavailable"), reply_to=sent)
    reply.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers in the node's place
    (failure,) = _failures([reply], {"m-1": 42})
    assert failure["node"] == 42 and failure["institution"] == "node-42"


def test_a_node_silent_past_the_round_timeout_is_recorded_by_name():
    from flwr.app import Message, MetricRecord, RecordDict

    from aidmp.errors import DeclineCode
    from aidmp.server.rounds import _silent

    sent = []
    for node, mid in ((7, "m-7"), (8, "m-8")):
        msg = Message(RecordDict(), dst_node_id=node, message_type="train")
        msg.metadata.__dict__["_message_id"] = mid
        sent.append(msg)
    answer = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=sent[0])
    (silent,) = _silent(sent, [answer], 30.0, {8: "site-8"})
    assert silent["institution"] == "site-8" and silent["code"] == DeclineCode.NO_REPLY
    assert "30 s" in str(silent["reason"])


def test_a_round_with_fewer_usable_updates_than_min_nodes_is_skipped():
    """Flower's FedAvg would average a single update; the round loop refuses to. And
    every instruction expires when the round stops waiting for it."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from aidmp.server.rounds import run_rounds

    cfg = RunConfig(min_nodes=2, min_available_nodes=2)
    strategy = build_strategy(cfg)

    class OneAnswers:  # a grid where two nodes are sampled and only one answers
        def get_node_ids(self):
            return [1, 2]

        ttls: list[float] = []

        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            self.ttls += [m.metadata.ttl for m in messages]
            for i, m in enumerate(messages):
                m.metadata.__dict__["_message_id"] = f"m-{i}"
            reply = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2, np.float32))}),
                                "metrics": MetricRecord({"num-examples": 5})})  # fmt: skip
            return [Message(reply, reply_to=messages[0])] if messages else []

    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    ended = []
    grid = OneAnswers()
    final = run_rounds(
        grid, strategy, start, first_round=1, last_round=1,
        round_config=lambda rnd: ConfigRecord({}), timeout=1.0, seed=0, central_eval=None,
        on_round_end=lambda rec, arrays: ended.append(rec),
    )  # fmt: skip
    (rec,) = ended
    assert rec.train_replies == 1 and not rec.aggregated
    assert [f["code"] for f in rec.train_failures] == [106]  # the silent one, named
    assert np.array_equal(final["w"].numpy(), np.zeros(2, np.float32))
    assert grid.ttls and set(grid.ttls) == {1.0}  # instructions expire with the round


# --- the round loop (server/rounds.py) on the in-process grid, with scripted nodes ---------


def _scripted(train_by_partition):
    """A ClientApp whose node i answers train with `train_by_partition[i](msg)`."""
    app = ClientApp()

    @app.train()
    def train(msg, context):
        return train_by_partition[int(context.node_config["partition-id"])](msg)

    @app.evaluate()
    def evaluate(msg, context):
        metrics = {"num-examples": 1, "eval-loss": 0.5, "eval-accuracy": 0.75}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def _update(w, n, name):
    def reply(msg):
        return Message(
            RecordDict({
                "arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32))}),
                "metrics": MetricRecord({"num-examples": n, "train-loss": 0.1}),
                "node": ConfigRecord({"institution": name, "epsilon-spent": 1.5,
                                      "epsilon-round": 0.5, "delta": 1e-5}),
                "governance": ConfigRecord({"decision": "admit", "rows-used": n}),
            }),
            reply_to=msg,
        )  # fmt: skip

    return reply


def _run_one_round(grid, cfg, start):
    from aidmp.server.rounds import run_rounds

    ended = []
    final = run_rounds(
        grid, build_strategy(cfg), start, first_round=1, last_round=1,
        round_config=lambda rnd: ConfigRecord({}), timeout=30.0, seed=0, central_eval=None,
        on_round_end=lambda rec, arrays: ended.append(rec),
    )  # fmt: skip
    (rec,) = ended
    return rec, final


def test_a_declined_reply_is_named_and_left_out_and_the_rest_aggregate():
    declined = "[institution-2] privacy budget exhausted: eps 3.00 of 3"

    def decline(msg):
        return Message(Error(code=102, reason=declined), reply_to=msg)

    updates = [([1.0, 2.0], 10), ([3.0, 6.0], 30)]
    grid = InProcessGrid(3, client_app=_scripted(
        [_update(*updates[0], "institution-0"), _update(*updates[1], "institution-1"), decline]
    ))  # fmt: skip
    cfg = RunConfig(min_nodes=2, min_available_nodes=3)
    rec, final = _run_one_round(grid, cfg, ArrayRecord({"w": Array(np.zeros(2, np.float32))}))

    assert rec.aggregated and rec.train_replies == 2 and rec.eval_replies == 3
    assert rec.train_failures == [{
        "node": grid.context(2).node_id, "institution": "institution-2", "code": 102,
        "reason": "privacy budget exhausted: eps 3.00 of 3",
    }]  # fmt: skip
    assert set(rec.privacy) == set(rec.governance) == {"institution-0", "institution-1"}
    assert rec.privacy["institution-1"]["epsilon-spent"] == 1.5
    assert rec.governance["institution-0"] == {"decision": "admit", "rows-used": 10}
    assert rec.federated_accuracy == 0.75
    # What Flower's FedAvg makes of the two updates alone: the decline added nothing.
    alone, _ = build_strategy(cfg).aggregate_train(
        1, _replies([{"w": np.asarray(w, np.float64)} for w, _ in updates], [10, 30])
    )
    np.testing.assert_allclose(final["w"].numpy(), alone["w"].numpy(), rtol=1e-6)


def test_inconsistent_replies_skip_the_round_instead_of_ending_the_run():
    def other_model(msg):
        reply = _update([1.0, 1.0], 5, "institution-1")(msg)
        reply.content["arrays"] = ArrayRecord({"v": Array(np.ones(2, np.float32))})
        return reply

    grid = InProcessGrid(2, client_app=_scripted([_update([1.0, 1.0], 5, "institution-0"),
                                                  other_model]))  # fmt: skip
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    rec, final = _run_one_round(grid, RunConfig(min_nodes=2, min_available_nodes=2), start)
    assert rec.train_replies == 2 and not rec.aggregated
    assert np.array_equal(final["w"].numpy(), np.zeros(2, np.float32))


class _Connecting:
    """A grid whose nodes connect one at a time, one per look."""

    def __init__(self, total):
        self.looks, self.total = 0, total

    def get_node_ids(self):
        self.looks += 1
        return list(range(1, min(self.looks, self.total) + 1))


def test_a_round_waits_for_min_available_nodes_even_behind_the_client_dp_wrapper():
    from aidmp.server.rounds import wait_for_nodes

    for cfg in (RunConfig(min_available_nodes=3), RunConfig(min_available_nodes=3, client_dp=True)):
        grid = _Connecting(total=5)
        wait_for_nodes(grid, build_strategy(cfg), timeout=30)
        assert grid.looks == 3  # sampled only once three were there
    started, grid = time.monotonic(), _Connecting(total=1)
    wait_for_nodes(grid, build_strategy(RunConfig(min_available_nodes=3)), timeout=0.5)
    assert time.monotonic() - started < 5  # gives up at the timeout; the round goes on


def test_the_waiting_line_and_a_lost_node_use_the_names_registered_at_the_coordinator(caplog):
    """Names from `register-node --name` (run config node-names): a node that never
    replied is named in the waiting line and in a round's failures, not numbered."""
    from aidmp.server.registered_names import RegisteredNames
    from aidmp.server.rounds import (
        _failures,
        _institution,
        _learn_names,
        _silent,
        connected_nodes,
    )  # fmt: skip

    grid = _Connecting(total=2)  # nodes 1 and 2
    names = {1: "site-0"}
    with caplog.at_level("INFO", logger="aidmp.server"):
        connected_nodes(grid, 3, timeout=0.6, names=names)
    assert "(1 connected: site-0)" in caplog.text
    assert "(2 connected: node-2, site-0)" in caplog.text

    sent = Message(RecordDict(), dst_node_id=1, message_type="train")
    sent.metadata.__dict__["_message_id"] = "m-1"
    (silent,) = _silent([sent], [], 30.0, names)  # it never replied
    assert silent["institution"] == "site-0"
    reply = Message(
        RecordDict({"node": ConfigRecord({"institution": "hospital-a"})}), reply_to=sent
    )
    reply.metadata.__dict__["_src_node_id"] = 1
    caplog.clear()
    # A registered name wins over the one a node gives itself, with a warning once.
    grid = RegisteredNames(_Replying([reply, reply]), names)
    assert [_institution(r) for r in grid.send_and_receive([sent])] == ["site-0", "site-0"]
    assert caplog.text.count("calls itself hospital-a; it is shown as site-0") == 1
    _learn_names([reply], names)
    assert names[1] == "site-0"
    # Its declines too (their reasons begin with the name), and an unregistered node may
    # not take a registered site's name.
    declined = Message(Error(code=102, reason="[hospital-a] budget spent"), reply_to=sent)
    declined.metadata.__dict__["_src_node_id"] = 1
    impostor = Message(RecordDict({"node": ConfigRecord({"institution": "site-0"})}),
                       reply_to=sent)  # fmt: skip
    impostor.metadata.__dict__["_src_node_id"] = 9
    grid = RegisteredNames(_Replying([declined, impostor]), names)
    failed, other = grid.send_and_receive([sent])
    assert failed.error.reason == "[site-0] budget spent"
    assert _failures([failed])[0]["institution"] == "site-0"
    assert _institution(other) == "node-9"


class _Replying(_Connecting):
    """A grid that answers every send with the same replies."""

    def __init__(self, replies):
        super().__init__(total=1)
        self.replies = replies

    def send_and_receive(self, messages, *, timeout=None):
        return list(self.replies)
