"""The node's side of one federated k-means round (`message_type="query.clustering"`).

The message carries the job (its canonical JSON and SHA-256, analytics/clustering.py),
the round's centroids (points of the unit cube), whether the release must be encrypted,
and a round config (job id, the round's number, task, the run's default DP policy and,
in simulation only, the governance policy, partition and state root). The node:

1. runs governance first, with the same policy and decline codes as training (105);
2. parses and plans the job itself (deterministic: it finds the σ the coordinator
   announced) and refuses one whose digest it cannot reproduce, or centroids outside
   the cube (101); every feature's bounds are stated in the job, never read from data;
3. requires DP: a node without DP has no budget to charge and releases nothing
   un-noised (103);
4. declines (102, ledger untouched) a job asking more ε, all rounds together, than its
   own cap (`clustering-max-epsilon`, default 1.0; in simulation, where the researcher
   plays every part, the job's ε unless the node config names a cap), a round beyond
   the job's stated rounds or one it released before, or one its ledger cannot afford;
5. assigns its governed rows to the centroids, adds noise to the per-cluster counts and
   centred sums (the CSPRNG at a node with its own data), withholds clusters whose
   noisy count is under min_count (the larger of the job's and its policy's), charges
   its ledger (release kind "clustering", the job id, the round, the message id), and
   only then replies. The audit mod records the reply. Under he=true the counts and
   sums leave only as CKKS ciphertext under the node's key, with the withheld mask in
   plaintext.

Nothing else leaves: no rows, no paths, no exact counts, no assignments.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict

from aidmp.analytics.clustering import (
    ClusterError,
    check_centroids,
    feature_matrix,
    parse_job,
    plan_clustering,
)
from aidmp.client.data import institution_name, ledger_key, node_state_dir
from aidmp.client.decline import require_own_state_dir
from aidmp.client.governed import governed_data
from aidmp.errors import DeclineCode, HeError, PrivacyError, RoundConfigError
from aidmp.node_config import has_own_data, he_required, truthy
from aidmp.privacy.clustering_release import encrypt_release, release_cluster_round
from aidmp.privacy.he.node import node_keys
from aidmp.privacy.policy import resolve_node_privacy
from aidmp.privacy.release import release_seed
from aidmp.round_config import RECORD_NAME, RoundConfig

log = logging.getLogger("aidmp.client")

JOB_RECORD = "cluster"  # "job" (canonical JSON), "digest", "he", "centroids", "centroid-count"
RELEASE_RECORD = "clustering"  # the reply: "counts", "sums", "withheld" (or "chunks")
MESSAGE_TYPE = "query.clustering"
CAP_KEY = "clustering-max-epsilon"
# A simulated institution's noise seed for a clustering round: apart from its other seeds.
_CLUSTER_SEED_OFFSET = 900_000_011


class JobDeclined(RoundConfigError):
    """The job or its centroids cannot be answered as sent (101)."""


class ClusteringNeedsDP(PrivacyError):
    """A node without DP releases no clustering statistics (103)."""

    decline_code = DeclineCode.PRIVACY_POLICY


def _job_record(msg: Message) -> ConfigRecord:
    record = msg.content.config_records.get(JOB_RECORD)
    if record is None or not isinstance(record.get("job"), str):
        raise JobDeclined(
            f"the message carries no clustering job (no '{JOB_RECORD}' record with a 'job' "
            "text); the coordinator and this node may run different versions"
        )
    return record


def _centroids(record: ConfigRecord, dimensions: int) -> np.ndarray:
    flat, count = record.get("centroids"), record.get("centroid-count")
    if not isinstance(flat, list) or not isinstance(count, int) or count < 1:
        raise JobDeclined("the message carries no centroids (a list and its row count)")
    values = np.asarray(flat, dtype=np.float64)
    if values.size != count * dimensions:
        raise JobDeclined(
            f"the centroids hold {values.size} values, not {count} rows of {dimensions}"
        )
    return values.reshape(count, dimensions)


def answer_clustering(msg: Message, context: Context) -> Message:
    """Answer one k-means round (raises an AidmpError to decline; app.py turns it into
    the error reply)."""
    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    name = institution_name(context.node_config, context.node_id)
    record = _job_record(msg)
    require_own_state_dir(context.node_config, config.dp)
    privacy = resolve_node_privacy(context.node_config, config, name)
    if privacy.policy is None:
        raise ClusteringNeedsDP(
            "this node runs without DP, so it has no privacy budget to charge and releases "
            "no clustering statistics (un-noised figures never leave it); start it with "
            "--dp-epsilon E to take part"
        )
    policy = privacy.policy
    try:
        job = parse_job(str(record["job"]))
    except ClusterError as exc:  # the coordinator's own job text: fit to name
        raise JobDeclined(f"the clustering job does not parse: {exc}") from None
    digest = record.get("digest")
    if isinstance(digest, str) and digest and job.digest() != digest:
        raise JobDeclined("the clustering job's digest does not match its text")
    if not config.job_id:
        raise JobDeclined("a clustering round must name its job (the round config's job-id)")
    # Governance first: the same policy and the same declines as training.
    state_dir = node_state_dir(context, config.state_root)
    governed = governed_data(context.node_config, config, state_dir)
    if governed is None or governed.frame is None:
        raise JobDeclined(
            "clustering runs on governed rows only and this node has no governance policy; "
            "give it one (node config policy=...; in simulation, --govern)"
        )
    try:
        centroids = check_centroids(_centroids(record, job.dimensions), job)
        points = feature_matrix(governed.frame, job.features)
    except ClusterError as exc:
        raise JobDeclined(f"the clustering round cannot run here: {exc}") from None
    plan = plan_clustering(job)
    own_data = has_own_data(context.node_config)
    # The node's cap; in simulation the researcher plays every part, so the job's ε
    # stands unless the simulated node's config names a cap of its own.
    cap = (
        policy.clustering_max_epsilon if own_data or CAP_KEY in context.node_config else job.epsilon
    )
    he = truthy(record.get("he", False))
    if not he and he_required(context.node_config):
        raise HeError(
            "this node requires encryption (it holds a CKKS key, or its node config says "
            "he-required=true) and the job asks for its release in plaintext; ask with he"
        )
    # Under HE, the node's key first: a node that could not encrypt must not charge.
    keys = node_keys(context.node_config, config.he_keys) if he else None
    node_index = int(context.node_config.get("partition-id", 0))
    seed = release_seed(
        config.seed * 1_000_003 + config.server_round * 1_009 + node_index + _CLUSTER_SEED_OFFSET,
        own_data=own_data,
    )
    min_count = max(job.min_count, governed.policy.min_count if governed.policy else 0)
    release, spend = release_cluster_round(
        points,
        centroids,
        plan,
        policy=policy,
        cap=cap,
        dataset_id=ledger_key(context.node_config, config),
        run_id=str(context.run_id),
        job_id=config.job_id,
        server_round=config.server_round,
        message_id=msg.metadata.message_id,
        seed=seed,
        min_count=min_count,
    )
    log.info("[%s] clustering round %d of job %s: eps %.4f charged, %.4f spent of %.4g",
             name, config.server_round, config.job_id[:12], spend.epsilon_round,
             spend.epsilon_spent, policy.epsilon)  # fmt: skip
    node: dict[str, ConfigRecordValues] = {"institution": name, "job-epsilon": job.epsilon}
    node |= spend.as_record()
    if privacy.refused:
        node["refused"] = "; ".join(privacy.refused)
    answer: dict[str, ConfigRecordValues] = {
        "digest": job.digest(),
        "withheld": [bool(w) for w in release.withheld],
    }
    if keys is not None:
        context_he, fingerprint = keys
        answer |= {"chunks": encrypt_release(context_he, release), "fingerprint": fingerprint}
    else:
        answer |= {"counts": release.counts.tolist(), "sums": release.sums.ravel().tolist()}
    reply = RecordDict(
        {
            RELEASE_RECORD: ConfigRecord(answer),
            "node": ConfigRecord(node),
            "governance": ConfigRecord({k: v for k, v in governed.summary.items() if v != []}),
        }
    )
    return Message(reply, reply_to=msg)
