"""The node's side of a federated statistics query (`message_type="query.analytics"`).

The message carries the query (its canonical JSON and SHA-256, in the "query"
ConfigRecord) and a round config (job id, task, the run's default DP policy and, in
simulation only, the governance policy, partition and state root, as for training).
The node:

1. runs governance first, with the same policy and decline codes as training (105);
2. plans the query itself (analytics/mechanisms.py; deterministic, so it finds the σ the
   coordinator announced) and refuses one whose digest it cannot reproduce (101): every
   bound, bin and category must be stated in the query, never read from the data;
3. requires DP: a node without DP (dp=false) has no budget to charge and releases no
   un-noised statistic, so it declines (103);
4. declines (102, ledger untouched) a query asking more ε than its own cap
   (`analytics-max-epsilon`, default 1.0) or than its ledger has left;
5. computes the partials on its governed rows, noised (the CSPRNG at a node with its own
   data), withholds figures under min_count (the larger of the query's and its policy's),
   charges its ledger (release kind "analytics", the message id, the job id), and only
   then replies: the partials (with each component's σ and Δ, both public), the ε this
   query cost and the ledger's spend. The audit mod records the reply. When the query
   says he=true, the values leave only as CKKS ciphertext under the node's key, with a
   plaintext skeleton that says which values were withheld.

Nothing else leaves: no rows, no paths, no exact counts.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict

from aidmp.analytics import QueryError, effective_min_count, parse_query, plan_query
from aidmp.client.data import institution_name, ledger_key, node_state_dir
from aidmp.client.decline import require_own_state_dir
from aidmp.client.governed import governed_data
from aidmp.errors import DeclineCode, HeError, PrivacyError, RoundConfigError
from aidmp.node_config import has_own_data, he_required, truthy
from aidmp.privacy.analytics_release import encrypt_partial, release_query
from aidmp.privacy.he.node import node_keys
from aidmp.privacy.policy import resolve_node_privacy
from aidmp.privacy.release import release_seed
from aidmp.round_config import RECORD_NAME, RoundConfig

log = logging.getLogger("aidmp.client")

QUERY_RECORD = "query"  # ConfigRecord: "query" (canonical JSON text), "digest" (SHA-256)
PARTIAL_RECORD = "analytics"  # the reply's ConfigRecord: "partial" (JSON text), "digest"
MESSAGE_TYPE = "query.analytics"
# A simulated institution's noise seed for a query: apart from its training seeds.
_QUERY_SEED_OFFSET = 700_000_001


class QueryDeclined(RoundConfigError):
    """The query cannot be answered as sent (101)."""


class AnalyticsNeedsDP(PrivacyError):
    """A node without DP releases no statistics (103)."""

    decline_code = DeclineCode.PRIVACY_POLICY


def _query_text(msg: Message) -> tuple[str, str]:
    record = msg.content.config_records.get(QUERY_RECORD)
    if record is None or not isinstance(record.get("query"), str):
        raise QueryDeclined(
            f"the message carries no query (no '{QUERY_RECORD}' record with a 'query' text); "
            "the coordinator and this node may run different versions"
        )
    digest = record.get("digest")
    return str(record["query"]), str(digest) if isinstance(digest, str) else ""


def answer_query(msg: Message, context: Context) -> Message:
    """Answer one query message (raises an AidmpError to decline; app.py turns it into
    the error reply)."""
    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    name = institution_name(context.node_config, context.node_id)
    text, digest = _query_text(msg)
    require_own_state_dir(context.node_config, config.dp)
    privacy = resolve_node_privacy(context.node_config, config, name)
    if privacy.policy is None:
        raise AnalyticsNeedsDP(
            "this node runs without DP, so it has no privacy budget to charge and releases "
            "no statistics (un-noised figures never leave it); start it with --dp-epsilon E "
            "to answer queries"
        )
    policy = privacy.policy
    try:
        query = parse_query(text, source="query")
    except QueryError as exc:  # the text is the coordinator's own query: fit to name
        raise QueryDeclined(f"the query does not parse: {exc}") from None
    if digest and query.digest() != digest:
        raise QueryDeclined("the query's digest does not match its text")
    # Governance first: the same policy and the same declines as training.
    state_dir = node_state_dir(context, config.state_root)
    governed = governed_data(context.node_config, config, state_dir)
    if governed is None or governed.frame is None:
        raise QueryDeclined(
            "analytics runs on governed rows only and this node has no governance policy; "
            "give it one (node config policy=...; in simulation, --govern)"
        )
    try:
        plan = plan_query(query, governed.policy)
    except QueryError as exc:
        raise QueryDeclined(f"the query cannot be planned here: {exc}") from None
    if plan.digest != query.digest():
        raise QueryDeclined(
            "the query leaves bounds, bins or categories to this node's policy; the "
            "coordinator must state them all (it resolves them before sending)"
        )
    own_data = has_own_data(context.node_config)
    node_index = int(context.node_config.get("partition-id", 0))
    seed = release_seed(
        config.seed * 1_000_003 + node_index + _QUERY_SEED_OFFSET, own_data=own_data
    )
    # Under HE, the node's key first: a node that could not encrypt must not charge.
    he = truthy(msg.content.config_records[QUERY_RECORD].get("he", False))
    if not he and he_required(context.node_config):
        raise HeError(
            "this node requires encryption (it holds a CKKS key, or its node config says "
            "he-required=true) and the query asks for its partials in plaintext; ask with he"
        )
    keys = node_keys(context.node_config, config.he_keys) if he else None
    partial, spend = release_query(
        governed.frame,
        plan,
        policy=policy,
        dataset_id=ledger_key(context.node_config, config),
        run_id=str(context.run_id),
        job_id=config.job_id or None,
        message_id=msg.metadata.message_id,
        seed=seed,
        min_count=effective_min_count(query, governed.policy),
    )
    log.info("[%s] answered query %s: eps %.4f charged, %.4f spent of %.4g", name,
             plan.digest[:12], spend.epsilon_round, spend.epsilon_spent,
             policy.epsilon)  # fmt: skip
    node: dict[str, ConfigRecordValues] = {"institution": name, "query-epsilon": plan.epsilon}
    node |= spend.as_record()
    if privacy.refused:
        node["refused"] = "; ".join(privacy.refused)
    answer: dict[str, ConfigRecordValues] = {"digest": plan.digest}
    if keys is not None:
        # Under HE the values leave only as ciphertext; the skeleton says which were
        # withheld (privacy/analytics_release.py), as a plaintext partial would.
        context_he, fingerprint = keys
        chunks, skeleton = encrypt_partial(context_he, partial, plan)
        answer |= {"chunks": chunks, "fingerprint": fingerprint,
                   "skeleton": json.dumps(skeleton, sort_keys=True)}  # fmt: skip
    else:
        answer["partial"] = json.dumps(partial, sort_keys=True)
    reply = RecordDict(
        {
            PARTIAL_RECORD: ConfigRecord(answer),
            "node": ConfigRecord(node),
            "governance": ConfigRecord({k: v for k, v in governed.summary.items() if v != []}),
        }
    )
    return Message(reply, reply_to=msg)
