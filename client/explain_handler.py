"""The node's side of an explanation (`message_type="query.explain"`): permutation
importance of the global model on the node's own validation rows, released as noisy
bounded sums (analytics/explain.py) and charged to its ledger.

The message carries the job (its canonical JSON and SHA-256), the global model in
plaintext (an "arrays" record; an encrypted run's model is not sent: the coordinator
cannot read it), and a round config (job id, task, the run's default DP policy and, in
simulation only, the governance policy, partition and state root). The node:

1. runs governance first, with the same policy and decline codes as training (105);
   without a policy it uses its validation split as training does;
2. parses the job itself (deterministic: it finds the σ the coordinator announced) and
   refuses one whose digest it cannot reproduce, one for another task, or a model that
   does not load into the task's (101);
3. requires DP: a node without DP has no budget to charge and releases nothing
   un-noised (103);
4. declines (102, ledger untouched) a job asking more ε than its own cap
   (`explain-max-epsilon`, default 1.0; in simulation, where the researcher plays every
   part, the job's ε unless the node config names a cap), one it released before, or
   one its ledger cannot afford;
5. scores its validation rows, adds noise to the count and the clipped sums (the
   CSPRNG, and a secret random order, at a node with its own data), charges its ledger
   (release kind "explanation", the job id, the message id), and only then replies. The
   audit mod records the reply.

Nothing else leaves: no rows, no paths, no exact count, no per-row losses.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict

from aidmp.analytics.explain import (
    ExplainError,
    feature_groups,
    feature_names_of,
    parse_job,
    plan_explanation,
)
from aidmp.client.data import institution_name, ledger_key, local_data, node_state_dir
from aidmp.client.decline import require_own_state_dir
from aidmp.client.governed import governed_data
from aidmp.errors import DeclineCode, HeError, PrivacyError, RoundConfigError
from aidmp.node_config import has_own_data, he_required
from aidmp.privacy.analytics_release import noise_source
from aidmp.privacy.explain_release import release_node_explanation
from aidmp.privacy.policy import resolve_node_privacy
from aidmp.privacy.release import release_seed
from aidmp.round_config import RECORD_NAME, RoundConfig
from aidmp.tasks import get_task

log = logging.getLogger("aidmp.client")

JOB_RECORD = "explain"  # "job" (canonical JSON), "digest"
RELEASE_RECORD = "explanation"  # the reply: "count", "sums", "digest"
MESSAGE_TYPE = "query.explain"
CAP_KEY = "explain-max-epsilon"
# A simulated institution's seeds for an explanation: apart from its other seeds.
_EXPLAIN_SEED_OFFSET = 700_000_019


class ExplainDeclined(RoundConfigError):
    """The job or its model cannot be answered as sent (101)."""


class ExplainNeedsDP(PrivacyError):
    """A node without DP releases no explanation (103)."""

    decline_code = DeclineCode.PRIVACY_POLICY


def answer_explanation(msg: Message, context: Context) -> Message:
    """Answer one explanation job (raises an AidmpError to decline; app.py turns it into
    the error reply)."""
    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    name = institution_name(context.node_config, context.node_id)
    record = msg.content.config_records.get(JOB_RECORD)
    if record is None or not isinstance(record.get("job"), str):
        raise ExplainDeclined(
            f"the message carries no explanation job (no '{JOB_RECORD}' record with a 'job' "
            "text); the coordinator and this node may run different versions"
        )
    require_own_state_dir(context.node_config, config.dp)
    privacy = resolve_node_privacy(context.node_config, config, name)
    if privacy.policy is None:
        raise ExplainNeedsDP(
            "this node runs without DP, so it has no privacy budget to charge and releases "
            "no explanation (un-noised figures never leave it); start it with --dp-epsilon E "
            "to take part"
        )
    policy = privacy.policy
    try:
        job = parse_job(str(record["job"]))
    except ExplainError as exc:
        raise ExplainDeclined(f"the explanation job does not parse: {exc}") from None
    digest = record.get("digest")
    if isinstance(digest, str) and digest and job.digest() != digest:
        raise ExplainDeclined("the explanation job's digest does not match its text")
    if not config.job_id:
        raise ExplainDeclined("an explanation must name its job (the round config's job-id)")
    if job.task != config.task:
        raise ExplainDeclined(f"the job explains task '{job.task}', the round is '{config.task}'")
    if he_required(context.node_config):
        raise HeError(
            "this node requires encryption (it holds a CKKS key, or its node config says "
            "he-required=true) and an explanation needs the model in plaintext; this node "
            "explains no model of an encrypted run"
        )
    # Governance first: the same policy and the same declines as training.
    state_dir = node_state_dir(context, config.state_root)
    governed = governed_data(context.node_config, config, state_dir)
    data = governed.data if governed is not None else local_data(context.node_config, config)
    task = get_task(config.task)
    model = task.build_model()
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise ExplainDeclined("the message carries no model (no 'arrays' record)")
    try:
        model.load_state_dict(arrays.to_torch_state_dict())
    except (RuntimeError, KeyError, ValueError):
        raise ExplainDeclined("the model does not fit the task's architecture") from None
    groups = feature_groups(feature_names_of(task, data.x_val.shape[1]))
    if list(groups) != list(job.columns):
        raise ExplainDeclined("the job's columns are not the task's original columns")
    plan = plan_explanation(job)
    own_data = has_own_data(context.node_config)
    cap = policy.explain_max_epsilon if own_data or CAP_KEY in context.node_config else job.epsilon
    node_index = int(context.node_config.get("partition-id", 0))
    seed = release_seed(job.seed * 1_000_003 + node_index + _EXPLAIN_SEED_OFFSET, own_data=own_data)
    # The random order, like the noise, is secret at a node with its own data.
    order_rng = np.random.default_rng(seed)
    release, spend = release_node_explanation(
        model,
        data.x_val,
        data.y_val,
        groups,
        plan,
        policy=policy,
        cap=cap,
        dataset_id=ledger_key(context.node_config, config),
        run_id=str(context.run_id),
        job_id=config.job_id,
        message_id=msg.metadata.message_id,
        order_rng=order_rng,
        noise=noise_source(None if seed is None else seed + 1),
    )
    log.info("[%s] explanation %s: eps %.4f charged, %.4f spent of %.4g", name,
             config.job_id[:12], spend.epsilon_round, spend.epsilon_spent,
             policy.epsilon)  # fmt: skip
    node: dict[str, ConfigRecordValues] = {"institution": name, "job-epsilon": job.epsilon}
    node |= spend.as_record()
    if privacy.refused:
        node["refused"] = "; ".join(privacy.refused)
    answer: dict[str, ConfigRecordValues] = {
        "digest": job.digest(),
        "count": float(release.count),
        "sums": [float(v) for v in release.sums],
    }
    reply = RecordDict({RELEASE_RECORD: ConfigRecord(answer), "node": ConfigRecord(node)})
    if governed is not None:
        reply["governance"] = ConfigRecord({k: v for k, v in governed.summary.items() if v != []})
    return Message(reply, reply_to=msg)
