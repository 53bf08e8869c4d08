"""Every message a node sends is recorded in its audit log before it leaves.

The entry holds the run, the round, the kind of message, the SHA-256 and size of
the exact bytes of its content (Flower's deterministic protobuf encoding), the ε
this round charged, and the governance decision with the policy's hash. If the
log cannot be written, the node sends a decline instead: nothing leaves unrecorded.
Nor does a node with its own data under DP that has no state folder of its own send
anything but a decline (client/decline.py); only a simulated node may go unaudited.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_to_proto

from aidmp.client.data import institution_name, node_state_dir
from aidmp.client.decline import decline_for, require_own_state_dir
from aidmp.client.governed import policy_path
from aidmp.errors import AidmpError, RoundConfigError
from aidmp.node_config import has_own_data
from aidmp.privacy.audit import AUDIT_NAME, AuditEntry, AuditLog, payload_digest
from aidmp.round_config import RECORD_NAME, RoundConfig

log = logging.getLogger("aidmp.client")
_warned = False


def _payload(reply: Message) -> bytes:
    if reply.has_error():
        return f"{reply.error.code}:{reply.error.reason}".encode()
    return recorddict_to_proto(reply.content).SerializeToString(deterministic=True)


def _policy_sha(context: Context, run_policy: str) -> str | None:
    path = policy_path(context.node_config, run_policy)
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _round_facts(record: ConfigRecord | None) -> tuple[int, str, str, str]:
    """(round, job id, state root, run policy) of the message a reply answers. From a
    round config that does not parse (the reply is then its decline), each one that is
    present and well typed, so that the decline is recorded where the node's other
    entries are."""
    try:
        rc = RoundConfig.from_record(record)
    except RoundConfigError:
        return (
            RoundConfig.salvage(record, "server_round") or 0,
            RoundConfig.salvage(record, "job_id") or "",
            RoundConfig.salvage(record, "state_root") or "",
            RoundConfig.salvage(record, "governance_policy") or "",
        )
    return rc.server_round, rc.job_id, rc.state_root, rc.governance_policy


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The outermost ClientApp mod: whatever the node is about to send is recorded."""
    return record_outbound(msg, call_next(msg, context), context, msg.metadata.message_type)


def record_outbound(msg: Message, reply: Message, context: Context, kind: str) -> Message:
    """Append the reply to the node's audit log; a decline replaces it if that fails,
    or if the node trains under DP on its own data with no state folder of its own."""
    try:
        require_own_state_dir(context.node_config)
    except AidmpError as exc:  # nothing it could record: a decline without data instead
        return decline_for(msg, context, exc)
    record = msg.content.config_records.get(RECORD_NAME)
    rnd, job_id, state_root, run_policy = _round_facts(record)
    state_dir = node_state_dir(context, state_root)
    if state_dir is None:
        global _warned
        if not _warned:
            log.warning("no state-dir for this node: its outbound messages are not audited")
            _warned = True
        return reply
    sha, size = payload_digest(_payload(reply))
    node = None if reply.has_error() else reply.content.config_records.get("node")
    governance = None if reply.has_error() else reply.content.config_records.get("governance")
    if reply.has_error():
        decision = "decline" if "governance:" in (reply.error.reason or "") else None
        details: dict[str, object] = {"code": reply.error.code}
    else:
        decision = str(governance["decision"]) if governance is not None else None
        records = reply.content.config_records
        # A query's partial or a k-means round's release: ciphertext chunks under HE.
        answer = records.get("analytics") or records.get("clustering")
        answer = answer or records.get("explanation")
        encrypted = "he-update" in records or (answer is not None and "chunks" in answer)
        details = {"encrypted": encrypted}
        release = None if node is None else node.get("release")
        if isinstance(release, int):  # 1, or 2, 3, ... for a round released again
            details["release"] = release
            # As the ledger names it: an update, evaluation figures (privacy/metrics.py),
            # a query's partials (client/analytics_handler.py), or a k-means round
            # (client/clustering_handler.py) or an explanation (client/explain_handler.py).
            details["release_kind"] = (
                "metrics" if kind == "evaluate"
                else "clustering" if kind == "query.clustering"
                else "explanation" if kind == "query.explain"
                else "analytics" if kind.startswith("query") else "training"
            )  # fmt: skip
    # Which message this answers (the ledger keeps the same id for the release it
    # charged), and the training job, which outlives a coordinator's restart.
    details |= {"reply_to": msg.metadata.message_id, "job": job_id}
    charged = None if node is None else node.get("epsilon-round")
    epsilon = float(charged) if isinstance(charged, int | float) else None
    entry = AuditEntry(
        run=str(context.run_id),
        round=rnd,
        kind=f"{kind}-decline" if reply.has_error() else f"{kind}-reply",
        payload_sha256=sha,
        payload_bytes=size,
        epsilon_charged=epsilon,
        governance_decision=decision,
        policy_sha256=_policy_sha(context, run_policy),
        details=details,
    )
    try:
        AuditLog(state_dir / AUDIT_NAME).append(entry)
    except AidmpError as exc:
        return decline_for(msg, context, exc)
    # A deployed site's console shows every release; a simulation's hundreds of virtual
    # institutions would drown the researcher's, so there it is at debug level.
    if has_own_data(context.node_config):
        _site_console().info(_site_line(context, entry, node, reply))
    else:
        log.debug(_site_line(context, entry, node, reply))
    return reply


def _site_console() -> logging.Logger:
    """The site's console (`aidmp.site`), at INFO whatever the process's default. A
    `flwr-clientapp` process has a root handler (Flower's, timestamped), which shows it;
    a process with none gets a plain one here, so the line is never dropped."""
    logger = logging.getLogger("aidmp.site")
    logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def _site_line(context: Context, entry: AuditEntry, node: object, reply: Message) -> str:
    """The site's own console line for what just left: round, governance decision, ε spent
    and left, bytes sent; or the decline and its reason. Logged by the node only."""
    name = institution_name(context.node_config, context.node_id)
    line = f"[{name}] round {entry.round} {entry.kind}: {entry.payload_bytes:,} bytes sent"
    if entry.governance_decision:
        line += f", governance {entry.governance_decision}"
    if reply.has_error():
        return f"{line}; declined: {reply.error.reason}"
    if isinstance(node, ConfigRecord):
        spent, left = node.get("epsilon-spent"), node.get("budget-left")
        if isinstance(spent, int | float) and isinstance(left, int | float):
            charged = entry.epsilon_charged or 0.0
            line += f", eps {charged:.3f} this release, {spent:.2f} spent, {left:.2f} left"
    return line
