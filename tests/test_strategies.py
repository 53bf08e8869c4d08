"""Our strategies' aggregation maths, checked against plain numpy."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg

from aidmp.config import RunConfig
from aidmp.strategies import build_strategy, restore_strategy_state, strategy_state

RNG = np.random.default_rng(7)
SHAPES = {"w": (3, 4), "b": (4,)}


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


def test_factory_builds_each_strategy_with_the_configured_minimums():
    kinds = {
        "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM,
        "trimmed-mean": FedTrimmedAvg, "median": FedMedian,
    }  # fmt: skip
    for name, cls in kinds.items():
        s = build_strategy(RunConfig(strategy=name, min_nodes=3, min_available_nodes=10))
        assert type(s) is cls
        assert (s.min_train_nodes, s.min_available_nodes) == (3, 10)
    assert build_strategy(RunConfig(strategy="fedprox", proximal_mu=0.3)).proximal_mu == 0.3


def test_fedavg_is_the_example_weighted_mean():
    ups, counts = _updates(4), [10, 30, 5, 55]
    arrays, metrics = build_strategy(RunConfig()).aggregate_train(1, _replies(ups, counts))
    for k in SHAPES:
        expected = np.average(np.stack([u[k] for u in ups]), axis=0, weights=counts)
        np.testing.assert_allclose(_as_dict(arrays)[k], expected, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(np.average([0, 1, 2, 3], weights=counts))


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    ups = _updates(10)
    ups[0]["w"][:] = 1e6  # a poisoned update
    strategy = build_strategy(RunConfig(strategy="trimmed-mean", trim_beta=0.2))
    arrays, _ = strategy.aggregate_train(1, _replies(ups, [1] * 10))
    for k in SHAPES:
        stacked = np.sort(np.stack([u[k] for u in ups]), axis=0)
        expected = stacked[2:-2].mean(axis=0)  # cut 20% = 2 of 10 at each end
        np.testing.assert_allclose(_as_dict(arrays)[k], expected, rtol=1e-6)
    assert np.abs(_as_dict(arrays)["w"]).max() < 10


def test_median_is_the_coordinatewise_median():
    ups = _updates(5)
    arrays, _ = build_strategy(RunConfig(strategy="median")).aggregate_train(
        1, _replies(ups, [1, 2, 3, 4, 5])
    )
    for k in SHAPES:
        np.testing.assert_allclose(
            _as_dict(arrays)[k], np.median(np.stack([u[k] for u in ups]), axis=0)
        )


def _fedavgm_round(strategy, current, ups, counts, rnd):
    strategy.current_arrays = ArrayRecord({k: Array(v.copy()) for k, v in current.items()})
    arrays, _ = strategy.aggregate_train(rnd, _replies(ups, counts))
    return _as_dict(arrays)


def test_fedavgm_applies_server_momentum():
    lr, beta = 0.7, 0.9
    cfg = RunConfig(strategy="fedavgm", server_learning_rate=lr, server_momentum=beta)
    strategy = build_strategy(cfg)
    w0 = {k: np.zeros(s) for k, s in SHAPES.items()}
    ups1, ups2, counts = _updates(3), _updates(3), [1, 2, 3]
    w1 = _fedavgm_round(strategy, w0, ups1, counts, 1)
    w2 = _fedavgm_round(strategy, w1, ups2, counts, 2)
    for k in SHAPES:
        avg1 = np.average(np.stack([u[k] for u in ups1]), axis=0, weights=counts)
        avg2 = np.average(np.stack([u[k] for u in ups2]), axis=0, weights=counts)
        m1 = w0[k] - avg1  # pseudo-gradient
        e1 = w0[k] - lr * m1
        m2 = beta * m1 + (e1 - avg2)
        np.testing.assert_allclose(w1[k], e1, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(w2[k], e1 - lr * m2, rtol=1e-6, atol=1e-12)


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


def test_error_replies_are_skipped_not_fatal():
    ups = _updates(2)
    replies = _replies(ups, [1, 3])
    request = Message(RecordDict(), dst_node_id=9, message_type="train")
    failed = Message(Error(code=100, reason="declined"), reply_to=request)
    arrays, _ = build_strategy(RunConfig()).aggregate_train(1, [*replies, failed])
    np.testing.assert_allclose(
        _as_dict(arrays)["b"], np.average(np.stack([u["b"] for u in ups]), axis=0, weights=[1, 3])
    )


def test_client_level_dp_wraps_fedavg_with_equal_weights_and_refuses_the_rest():
    from aidmp.errors import AidmpError
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
