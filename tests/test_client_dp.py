"""Client-level DP: the noisy sum is divided by the sampled k, never by who replied."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, RdpAccountant
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

from aidmp.config import RunConfig
from aidmp.strategies import build_strategy
from aidmp.strategies.client_dp import CLIENT_WEIGHT_KEY, ClientLevelDP

SIGMA, CLIP, SAMPLED, SIZE = 0.8, 2.0, 4, 200_000


class FourNodes:
    def get_node_ids(self):
        return [1, 2, 3, 4]

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)


def _strategy() -> ClientLevelDP:
    cfg = RunConfig(
        client_dp=True,
        min_available_nodes=SAMPLED,
        min_nodes=2,
        client_dp_noise_multiplier=SIGMA,
        client_dp_clipping_norm=CLIP,
    )
    strategy = build_strategy(cfg)
    assert isinstance(strategy, ClientLevelDP) and strategy.num_sampled_clients == SAMPLED
    return strategy


def _reply(sent: Message, model: np.ndarray) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(model.astype(np.float32))}),
            "metrics": MetricRecord({CLIENT_WEIGHT_KEY: 1, "num-examples": 10}),
        }
    )
    return Message(content, reply_to=sent)


def _round(strategy, g: np.ndarray, deltas: list[np.ndarray], declined: int) -> np.ndarray:
    sent = list(
        strategy.configure_train(1, ArrayRecord({"w": Array(g)}), ConfigRecord({}), FourNodes())
    )
    assert len(sent) == SAMPLED
    replies = [_reply(m, g + d) for m, d in zip(sent, deltas, strict=False)]
    declines = sent[SAMPLED - declined :]
    replies += [Message(Error(code=102, reason="budget"), reply_to=m) for m in declines]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy().astype(np.float64)


def test_two_of_four_replies_give_the_sum_over_four_plus_noise_sigma_c_over_four():
    g = np.full(SIZE, 0.5, np.float32)
    deltas = [np.full(SIZE, 0.001, np.float32), np.full(SIZE, 0.003, np.float32)]
    released = _round(_strategy(), g, deltas, declined=2)
    noise = released - 0.5 - (0.001 + 0.003) / SAMPLED  # ΣΔ/k, not the mean over 2
    expected_std = SIGMA * CLIP / SAMPLED
    # The sample std of 200k normals is within 1 % of the true one with overwhelming odds.
    assert np.std(noise) == pytest.approx(expected_std, rel=0.01)
    assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(SIZE)


def test_the_noise_is_the_same_whoever_replies():
    g = np.zeros(SIZE, np.float32)
    zero = [np.zeros(SIZE, np.float32)] * 4
    all_four = _round(_strategy(), g, zero, declined=0)
    one = _round(_strategy(), g, zero[:1], declined=3)
    assert np.std(all_four) == pytest.approx(np.std(one), rel=0.02)


def test_epsilon_counts_the_sampled_k_whatever_replies_and_matches_flowers_accountant():
    strategy = _strategy()
    g = np.zeros(8, np.float32)
    for declined in (0, 2, 3):
        sent = list(strategy.configure_train(1, ArrayRecord({"w": Array(g)}), ConfigRecord({}),
                                             FourNodes()))  # fmt: skip
        replies = [_reply(m, g) for m in sent[: SAMPLED - declined]]
        declines = sent[SAMPLED - declined :]
        replies += [Message(Error(code=102, reason="x"), reply_to=m) for m in declines]
        strategy.aggregate_train(1, replies)
    independent = RdpAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=SAMPLED,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    event = GaussianPrivacyEvent(noise_multiplier=SIGMA, sample_size=SAMPLED,
                                 population_size=SAMPLED)  # fmt: skip
    independent.compose(event, count=3)
    assert strategy.accountant.num_releases == 3
    assert strategy.accountant.get_epsilon(1e-5) == pytest.approx(independent.get_epsilon(1e-5))


def test_a_round_where_everyone_declined_releases_and_charges_nothing():
    strategy = _strategy()
    g = np.zeros(4, np.float32)
    sent = list(strategy.configure_train(1, ArrayRecord({"w": Array(g)}), ConfigRecord({}),
                                         FourNodes()))  # fmt: skip
    arrays, _ = strategy.aggregate_train(
        1, [Message(Error(code=102, reason="x"), reply_to=m) for m in sent]
    )
    assert arrays is None and strategy.accountant.num_releases == 0
