"""A federation with millions of examples a round: 1/W stays exact under CKKS.

The coordinator multiplies the encrypted sum by a plaintext 1/W encoded at scale 2^25.
Unscaled, W = 10^7 would make the step ~10 % off, and past 2^26 it would round to 0
(the model would stop moving). Nodes therefore weight by n/m with the weight unit m the
coordinator announces (privacy/he/packing.py, "Large federations").
"""

from collections.abc import Iterable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from aidmp.errors import HeError
from aidmp.privacy.he.keys import COORDINATOR_FILE, INSTITUTION_FILE, key_ceremony, load_context
from aidmp.privacy.he.node import HeRound
from aidmp.privacy.he.packing import (
    MAX_STEP_ERROR,
    EncryptedSum,
    encrypt_initial_global,
    encrypt_update,
    step_error,
    weight_unit_for,
)
from aidmp.privacy.he.state import UPDATE_KEY, WIRE_KEY, EncryptedGlobal, unflatten_state
from aidmp.strategies.encrypted import EncryptedFedAvg

SIZE = 55  # torch.nn.Linear(10, 5)
EXAMPLES = [4_000_000, 5_000_000, 3_000_000]  # W = 1.2e7, past where 1/W encodes well


class ThreeNodes:
    def get_node_ids(self) -> Iterable[int]:
        return [0, 1, 2]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    key_ceremony(out)
    return load_context(out / COORDINATOR_FILE, "coordinator"), load_context(
        out / INSTITUTION_FILE, "institution"
    )


def test_the_weight_unit_keeps_the_step_error_tiny_where_plain_1_over_w_fails(contexts):
    public, _ = contexts
    w = float(sum(EXAMPLES))
    assert step_error(public, w) > 0.05  # unscaled: several percent off
    assert step_error(public, 2.0**27) == 1.0  # past 2^26: 1/W encodes as 0
    unit = weight_unit_for(w)
    assert unit == 2.0**12 and w / unit <= 2**12
    assert step_error(public, w / unit) < 1e-4
    assert weight_unit_for(400) == 1.0 and weight_unit_for(0) == 1.0
    total = EncryptedSum(public)
    total.add(encrypt_update(public, np.zeros(SIZE), 1.0), "a node")
    with pytest.raises(HeError, match="too large to divide"):
        total.mean(w)


def _round(strategy, rnd, arrays, secret, global_params, updates):
    """Each node opens the round as a real node does and sends encrypt((n/m)·u)."""
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), ThreeNodes()))
    replies = []
    model = torch.nn.Linear(10, 5).double()  # SIZE parameters
    for msg, n, u in zip(messages, EXAMPLES, updates, strict=True):
        opened = HeRound.open(msg.content[WIRE_KEY], {}, SimpleNamespace(he_keys=""))
        np.testing.assert_allclose(opened.global_params, global_params, atol=1e-6)
        model.load_state_dict(unflatten_state(global_params + u, model.state_dict()))
        reply = RecordDict(
            {
                UPDATE_KEY: opened.encrypt_reply(model, weight=n, momentum=0.0, server_lr=1.0),
                "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
            }
        )
        replies.append(Message(reply, reply_to=msg))
    return strategy.aggregate_train(rnd, replies)


def test_a_large_first_round_is_skipped_then_the_unit_makes_the_mean_exact(contexts, monkeypatch):
    public, secret = contexts
    strategy = EncryptedFedAvg(public, min_available_nodes=3, min_train_nodes=3)
    # HeRound.open finds this node's secret context through node_keys.
    monkeypatch.setattr(
        "aidmp.privacy.he.node.node_keys", lambda node, rnd: (secret, strategy.fingerprint)
    )
    start = np.linspace(-1, 1, SIZE)
    arrays = EncryptedGlobal(
        SIZE, strategy.fingerprint, encrypt_initial_global(public, start), 1.0
    ).to_arrays()
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 1e-2, SIZE) for _ in EXAMPLES]

    # Round 1: the unit is still 1 and W is 1.2e7, so the round is not aggregated.
    first, _ = _round(strategy, 1, arrays, secret, start, updates)
    assert first is None

    # Round 2: the coordinator now announces m = 4096, and the step is exact.
    new, _ = _round(strategy, 2, arrays, secret, start, updates)
    assert new is not None
    state = EncryptedGlobal.from_arrays(new)
    assert state.weight_unit == 4096.0
    model, _ = state.decrypt(secret)
    expected = start + np.average(np.stack(updates), axis=0, weights=EXAMPLES)
    assert np.abs(model - expected).max() < 1e-5
    assert step_error(public, sum(EXAMPLES) / 4096) < MAX_STEP_ERROR
