"""The node as key holder: decrypt the coordinator's sum of encrypted partials
(`message_type="query.decrypt"`).

A deployed coordinator holds the CKKS public context only (DESIGN.md, Parties and
trust), so under HE it can add the partials of a query (or of a k-means round) but
not read the sum. It asks one of the nodes that answered to decrypt that one sum. The
node decrypts only when:

1. it holds the secret context, and the sum was made under the same keys (fingerprint);
2. the request names a release this node made in this job, and its own ledger holds
   that release's charge (the ledger's message id, the job id, kind analytics or
   clustering): the node decrypts nothing it did not itself pay for;
3. every ciphertext chunk's framing is sound (privacy/he/framing.py) and its check slot
   reads the number of contributions the coordinator claims.

What it returns is a post-processing of DP releases already charged: every partial
carries its own full noise (client/analytics_handler.py), so even a coordinator that
sent one node's ciphertext instead of the sum learns one charged DP release, no more.
The sum in plaintext is what a plaintext query would have shown it anyway. The reply
charges nothing; the audit mod records it like any reply.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict

from aidmp.client.data import institution_name, ledger_key
from aidmp.client.decline import require_own_state_dir
from aidmp.errors import DeclineCode, HeError, PrivacyError, RoundConfigError
from aidmp.privacy.he.node import node_keys
from aidmp.privacy.he.packing import decrypt_vector
from aidmp.privacy.policy import resolve_node_privacy
from aidmp.privacy.release import open_ledger
from aidmp.round_config import RECORD_NAME, RoundConfig

log = logging.getLogger("aidmp.client")

MESSAGE_TYPE = "query.decrypt"
REQUEST_RECORD = "decrypt"  # chunks, size, contributions, fingerprint, release (message id)
REPLY_RECORD = "decrypted"  # values: the plaintext sum
# The releases a node decrypts a sum of: those that leave as ciphertext under HE.
DECRYPTABLE = ("analytics", "clustering")


class DecryptRefused(PrivacyError):
    """The node will not decrypt this (103): nothing it released and paid for."""

    decline_code = DeclineCode.PRIVACY_POLICY


def _request(msg: Message) -> tuple[list[bytes], int, int, str, str]:
    record = msg.content.config_records.get(REQUEST_RECORD)
    fields = {} if record is None else dict(record)
    chunks, size, count = fields.get("chunks"), fields.get("size"), fields.get("contributions")
    fingerprint, release = fields.get("fingerprint"), fields.get("release")
    if not (
        isinstance(chunks, list)
        and chunks
        and all(isinstance(c, bytes) for c in chunks)
        and isinstance(size, int)
        and isinstance(count, int)
        and size >= 1
        and count >= 1
        and isinstance(fingerprint, str)
        and isinstance(release, str)
    ):
        raise RoundConfigError(
            f"the decryption request has no readable '{REQUEST_RECORD}' record (chunks, "
            "size, contributions, fingerprint, release); the coordinator and this node may "
            "run different versions"
        )
    return [c for c in chunks if isinstance(c, bytes)], size, count, fingerprint, release


def decrypt_sum(msg: Message, context: Context) -> Message:
    """Decrypt the one sum the message carries, or raise an AidmpError to decline."""
    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    name = institution_name(context.node_config, context.node_id)
    chunks, size, count, fingerprint, release = _request(msg)
    secret, own_fingerprint = node_keys(context.node_config, config.he_keys)
    if fingerprint != own_fingerprint:
        raise HeError(
            "the sum was made under another key than this node's; every node and the "
            "coordinator must come from one key ceremony"
        )
    # Only a sum of releases this node made and its ledger charged, in this job.
    require_own_state_dir(context.node_config, config.dp)
    privacy = resolve_node_privacy(context.node_config, config, name)
    if privacy.policy is None:
        raise DecryptRefused("this node runs without DP; it released nothing to decrypt")
    ledger = open_ledger(privacy.policy, ledger_key(context.node_config, config))
    paid = [
        e
        for e in ledger.entries
        if e.get("message_id") == release
        and e.get("release_kind") in DECRYPTABLE
        and (not config.job_id or e.get("job_id") == config.job_id)
    ]
    if not paid:
        raise DecryptRefused(
            "this node decrypts only a sum that holds its own release, charged to its "
            "ledger in this job; its ledger has no such release"
        )
    # Each chunk's framing is checked before TenSEAL reads it (privacy/he/packing.parse).
    values = decrypt_vector(secret, chunks, size, float(count), "the summed partials")
    log.info("[%s] decrypted the sum of %d encrypted releases (job %s, %s)", name, count,
             config.job_id or "-", paid[0]["release_kind"])  # fmt: skip
    reply = RecordDict(
        {
            REPLY_RECORD: ConfigRecord({"values": [float(v) for v in values]}),
            "node": ConfigRecord({"institution": name}),
        }
    )
    return Message(reply, reply_to=msg)
