"""The per-round config: the coordinator writes it, a node parses it (aidmp/round_config.py)."""

import pytest
from flwr.app import ConfigRecord

from aidmp.config import RunConfig
from aidmp.errors import DeclineCode, RoundConfigError
from aidmp.round_config import RoundConfig
from aidmp.server.round_settings import round_config_for

# Deployed nodes of other versions read these keys: they never change.
WIRE_KEYS = [
    "task", "partition", "seed", "local-epochs", "batch-size", "learning-rate",
    "server-round", "job-id", "num-rounds", "dp", "dp-epsilon", "dp-delta",
    "dp-max-grad-norm", "dp-noise-multiplier", "dp-accountant", "dp-metrics",
    "dp-metrics-share", "state-root", "he-keys", "governance-policy", "governance-scenario",
]  # fmt: skip
CFG = RunConfig(task="breast-cancer", seed=7, num_rounds=4, learning_rate=0.1, dp_epsilon=2.0)


def test_the_coordinator_writes_the_same_keys_as_ever():
    record = round_config_for(CFG, 3, "job-1")
    assert isinstance(record, ConfigRecord)
    assert list(record) == WIRE_KEYS
    assert record["server-round"] == 3 and record["job-id"] == "job-1"
    assert record["learning-rate"] == 0.1 and record["dp-epsilon"] == 2.0


def test_round_trip():
    record = round_config_for(CFG, 3, "job-1")
    parsed = RoundConfig.from_record(record)
    assert parsed.task == "breast-cancer" and parsed.seed == 7 and parsed.server_round == 3
    assert parsed.num_rounds == 4 and parsed.job_id == "job-1" and parsed.learning_rate == 0.1
    assert parsed.dp is True and parsed.dp_epsilon == 2.0 and parsed.dp_accountant == "pld"
    assert dict(parsed.to_config_record()) == dict(record)


def test_keys_a_strategy_adds_and_their_defaults():
    record = round_config_for(CFG, 1)
    plain = RoundConfig.from_record(record)
    assert (plain.proximal_mu, plain.he_momentum, plain.he_server_lr) == (0.0, 0.0, 1.0)
    assert plain.clipping_norm is None
    record.update(
        {"proximal-mu": 0.5, "he-momentum": 0.9, "he-server-lr": 2.0, "clipping_norm": 1.5}
    )
    added = RoundConfig.from_record(record)
    assert (added.proximal_mu, added.he_momentum, added.he_server_lr) == (0.5, 0.9, 2.0)
    assert added.clipping_norm == 1.5
    assert dict(added.to_config_record()) == dict(record)


def test_unknown_keys_from_a_newer_coordinator_are_ignored():
    record = round_config_for(CFG, 1)
    record.update({"future-knob": [1, 2], "another": "x"})
    parsed = RoundConfig.from_record(record)
    assert "future-knob" not in parsed.to_config_record()


def test_dp_keys_not_sent_are_not_a_policy():
    record = {k: v for k, v in round_config_for(CFG, 1).items() if not k.startswith("dp")}
    parsed = RoundConfig.from_record(record)
    assert parsed.dp is None and parsed.dp_policy() == {}
    assert RoundConfig.from_record(round_config_for(CFG, 1)).dp_policy() == {
        "dp": True, "dp-epsilon": 2.0, "dp-delta": 1e-5, "dp-max-grad-norm": 1.0,
        "dp-noise-multiplier": 0.0, "dp-accountant": "pld", "dp-metrics": "noised",
        "dp-metrics-share": 0.1,
    }  # fmt: skip


def test_a_missing_key_is_named_with_the_likely_cause():
    record = dict(round_config_for(CFG, 1))
    del record["seed"], record["num-rounds"]
    with pytest.raises(RoundConfigError) as caught:
        RoundConfig.from_record(record)
    message = str(caught.value)
    assert "lacks key(s) 'seed', 'num-rounds'" in message
    assert "may run different versions" in message
    assert caught.value.decline_code == DeclineCode.BAD_CONFIG


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("seed", "7", "'seed' is of type str, expected an integer"),
        ("seed", 7.0, "'seed' is of type float, expected an integer"),
        ("learning-rate", "fast", "'learning-rate' is of type str, expected a number"),
        ("dp", "false", "'dp' is of type str, expected true or false"),
        ("task", 3, "'task' is of type int, expected a string"),
    ],
)
def test_a_wrong_type_is_named_and_never_coerced(key, value, expected):
    record = dict(round_config_for(CFG, 1)) | {key: value}
    with pytest.raises(RoundConfigError, match="may run different versions") as caught:
        RoundConfig.from_record(record)
    assert expected in str(caught.value)
    assert repr(value) not in str(caught.value)  # the type is named, never the value


def test_a_message_without_a_config_record():
    with pytest.raises(RoundConfigError, match="no 'config' record"):
        RoundConfig.from_record(None)


def test_salvage_reads_one_field_of_a_broken_config():
    broken = {"server-round": 4, "state-root": 5, "job-id": "j"}  # no task, a bad state-root
    assert RoundConfig.salvage(broken, "server_round") == 4
    assert RoundConfig.salvage(broken, "job_id") == "j"
    assert RoundConfig.salvage(broken, "state_root") == ""  # mistyped: its default
    assert RoundConfig.salvage(broken, "task") is None  # required: no default
    assert RoundConfig.salvage(None, "server_round") is None


@pytest.mark.parametrize("job_id", ["../../escaped", "a/b", "javascript:alert(1)", "x" * 65])
def test_a_job_id_that_could_name_a_path_is_refused(job_id):
    """A node names files after the job (model-<job>.pt, its governance reports)."""
    record = dict(round_config_for(CFG, 1, "7")) | {"job-id": job_id}
    with pytest.raises(RoundConfigError, match="job-id"):
        RoundConfig.from_record(record)
    assert RoundConfig.from_record(dict(round_config_for(CFG, 1, "1234_ab-C"))).job_id
