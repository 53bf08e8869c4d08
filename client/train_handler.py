"""Train and evaluate: the handlers behind the ClientApp's `train` and `evaluate`.

Train: load local data (cached per process), take the global model, train locally
(under DP-SGD, charging the node's own ledger, when its policy says so), reply with the
new weights, the example count and the privacy spend. In an encrypted round the global
model arrives as CKKS ciphertext, is decrypted here, and the update leaves only as
ciphertext (privacy/he/node.py). Evaluate: score the global model on the node's own
validation rows. client/app.py turns any error into a decline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypedDict

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from torch import nn

from aidmp.client.data import institution_name, ledger_key, local_data, node_state_dir
from aidmp.client.decline import require_own_state_dir
from aidmp.client.governed import Governed, governed_data
from aidmp.errors import HeError, PrivacyError, RoundConfigError
from aidmp.node_config import has_own_data, he_required
from aidmp.privacy.he.node import HeRound
from aidmp.privacy.he.state import UPDATE_KEY, WIRE_KEY
from aidmp.privacy.policy import check_distributed, resolve_node_privacy
from aidmp.privacy.release import PrivacySpend, release_seed
from aidmp.round_config import RECORD_NAME, RoundConfig
from aidmp.strategies.client_dp import CLIENT_WEIGHT_KEY
from aidmp.tasks import Task, get_task
from aidmp.tasks.data import LocalData

if TYPE_CHECKING:  # DP-SGD (Opacus, the accountants) is imported by a round that uses it
    from aidmp.privacy.metrics import NoisyMetrics

log = logging.getLogger("aidmp.client")


class Hyper(TypedDict):
    """The round's training settings, as `Task.train` and `train_private_round` take them."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int | None
    proximal_mu: float


class ReleaseOf(TypedDict):
    """What every release from private rows is charged under: the ledger it goes to, and
    the run, round, job and message the ledger and the audit log record it by."""

    dataset_id: str
    run_id: str
    server_round: int
    num_rounds: int
    job_id: str | None
    message_id: str


def _release_of(msg: Message, context: Context, config: RoundConfig) -> ReleaseOf:
    return ReleaseOf(
        dataset_id=ledger_key(context.node_config, config),
        run_id=str(context.run_id),
        server_round=config.server_round,
        num_rounds=config.num_rounds,
        job_id=config.job_id or None,
        message_id=msg.metadata.message_id,
    )


def _round_seed(config: RoundConfig, context: Context) -> int:
    # Distinct per run seed, round and node. Under DP at a node with its own data,
    # `release_seed` replaces it with secret randomness (privacy/node_round.py).
    node = int(context.node_config.get("partition-id", context.node_id))
    return config.seed * 1_000_003 + config.server_round * 1_009 + node


def _setup(
    msg: Message, context: Context
) -> tuple[RoundConfig, Task, LocalData, nn.Module, HeRound | None, Governed | None]:
    """The round's config, its task, this node's data, the global model as received, and,
    in an encrypted round, its decrypted state."""
    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    require_own_state_dir(context.node_config, config.dp)  # DP: nothing leaves unaudited
    task = get_task(config.task)
    # Local governance first: it decides whether, and on which rows, this node trains.
    state_dir = node_state_dir(context, config.state_root)
    governed = governed_data(context.node_config, config, state_dir)
    data = governed.data if governed is not None else local_data(context.node_config, config)
    model = task.build_model()
    he = None
    if WIRE_KEY in msg.content.config_records:
        he = HeRound.open(msg.content.config_records[WIRE_KEY], context.node_config, config)
        he.load_into(model)
    elif he_required(context.node_config):
        raise HeError(
            "this node requires encrypted rounds (it holds a CKKS key, or its node config "
            "says he-required=true) and the coordinator sent the model in plaintext; "
            "run with he=true"
        )
    else:
        arrays = msg.content.array_records.get("arrays")
        if arrays is None:
            raise RoundConfigError(
                "the message carries no global model (no 'arrays' record); "
                "the coordinator and this node may run different versions"
            )
        model.load_state_dict(arrays.to_torch_state_dict())
    return config, task, data, model, he, governed


def train_round(msg: Message, context: Context) -> Message:
    """Train on this node's governed rows and reply with the update (see client/app.py)."""
    config, task, data, model, he, governed = _setup(msg, context)
    name = institution_name(context.node_config, context.node_id)
    hyper = Hyper(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=_round_seed(config, context),
        proximal_mu=config.proximal_mu,
    )
    node: dict[str, ConfigRecordValues] = {"institution": name}
    privacy = resolve_node_privacy(context.node_config, config, name)
    policy = privacy.policy
    if privacy.refused:  # the run asked for settings this node does not take
        node["refused"] = "; ".join(privacy.refused)
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": len(data.y_train),
        CLIENT_WEIGHT_KEY: 1,
    }
    share = None
    if config.dp_mode == "distributed":  # one DP-SGD step over the pooled rows, shared out
        if policy is None or he is None:
            raise PrivacyError(
                "dp-mode=distributed needs DP at this node and an encrypted round: its "
                "update carries only a share of the noise (privacy/distributed.py)"
            )
        check_distributed(
            policy, config.dp_min_contributions, own_data=has_own_data(context.node_config)
        )
        from aidmp.privacy.node_round import distributed_private_round

        share, spend = distributed_private_round(
            model,
            data,
            policy=policy,
            sample_rate=float(config.dp_sample_rate or 0.0),
            min_contributions=config.dp_min_contributions,
            **_release_of(msg, context, config),
            seed=release_seed(
                _round_seed(config, context), own_data=has_own_data(context.node_config)
            ),
        )
        node |= spend.as_record()
    elif policy is None:
        metrics["train-loss"] = task.train(model, data.x_train, data.y_train, **hyper)
    else:
        # Where a budget is charged: privacy/node_round.py, before and after DP-SGD.
        hyper["seed"] = release_seed(
            _round_seed(config, context), own_data=has_own_data(context.node_config)
        )
        # The training loss of private rows is a release of its own, and the update
        # needs none: under DP it stays here (the node's log has it).
        from aidmp.privacy.node_round import train_private_round

        loss, spend = train_private_round(
            model,
            data,
            policy=policy,
            **_release_of(msg, context, config),
            **hyper,
        )
        log.debug("[%s] round %d train-loss %.4f (kept here)", name, config.server_round, loss)
        node |= spend.as_record()
    reply = RecordDict({"metrics": MetricRecord(metrics), "node": ConfigRecord(node)})
    if governed is not None:  # aggregates only, small counts withheld (governance/report.py)
        reply["governance"] = ConfigRecord({k: v for k, v in governed.summary.items() if v != []})
    if he is None:
        reply["arrays"] = ArrayRecord(model.state_dict())
    elif share is not None:  # noise share already in it; leaves only as ciphertext
        reply[UPDATE_KEY] = he.encrypt_share(share.gradient_sum)
    else:  # the update leaves the node only as ciphertext (noise already in it under DP)
        reply[UPDATE_KEY] = he.encrypt_reply(
            model,
            weight=len(data.y_train),
            momentum=config.he_momentum,
            server_lr=config.he_server_lr,
        )
    return Message(reply, reply_to=msg)


# The evaluation's noise is drawn apart from the same round's training noise.
_EVALUATION_SEED_OFFSET = 500_000_003


def evaluate_round(msg: Message, context: Context) -> Message:
    """Score the global model on this node's validation rows (see client/app.py)."""
    config, task, data, model, _, _ = _setup(msg, context)
    name = institution_name(context.node_config, context.node_id)
    policy = resolve_node_privacy(context.node_config, config, name).policy
    metrics: dict[str, MetricRecordValues] = {"num-examples": len(data.y_val), CLIENT_WEIGHT_KEY: 1}
    if policy is None:
        loss, accuracy = task.evaluate(model, data.x_val, data.y_val)
        metrics |= {"eval-loss": loss, "eval-accuracy": accuracy}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
    # Under DP the figures are releases from private rows: noised and charged to the
    # ledger before they leave (privacy/node_round.py), or withheld, by the node's policy.
    node: dict[str, ConfigRecordValues] = {"institution": name}
    if policy.metrics == "withheld":
        released: tuple[NoisyMetrics, PrivacySpend] | str = "the node's policy withholds them"
    else:
        seed = _round_seed(config, context) + _EVALUATION_SEED_OFFSET
        from aidmp.privacy.node_round import release_private_metrics

        released = release_private_metrics(
            model,
            data,
            policy=policy,
            **_release_of(msg, context, config),
            seed=release_seed(seed, own_data=has_own_data(context.node_config)),
        )
    if isinstance(released, str):
        log.info("[%s] round %d: evaluation figures withheld: %s", name,
                 config.server_round, released)  # fmt: skip
    else:
        figures, spend = released
        metrics |= figures.as_metrics()
        node |= spend.as_record()
    content = RecordDict({"metrics": MetricRecord(metrics), "node": ConfigRecord(node)})
    return Message(content, reply_to=msg)
