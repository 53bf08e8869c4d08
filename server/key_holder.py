"""Who decrypts a sum at a deployed coordinator: a site that contributed to it.

The coordinator holds the CKKS public context only, so under HE it adds the nodes'
encrypted partials of a query (or of a k-means round) and then asks one of the nodes
that answered to decrypt that one sum (`message_type="query.decrypt"`,
client/decrypt_handler.py). A node decrypts only a sum that holds its own release,
charged to its own ledger in this job; if it declines or does not answer, the next one
is asked. In simulation the researcher holds every key and decrypts directly
(simulations/analysis.py), so this is the deployment's path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.server.round_settings import round_config_for
from aidmp.server.rounds import ask_each

log = logging.getLogger("aidmp")

MESSAGE_TYPE = "query.decrypt"  # the ClientApp's @app.query("decrypt")
REQUEST_RECORD = "decrypt"
REPLY_RECORD = "decrypted"

Decrypt = Callable[[list[bytes], int, int], np.ndarray]


def sites_decrypt(
    grid: Grid,
    cfg: RunConfig,
    job_id: str,
    releases: Mapping[int, str],
    fingerprint: str,
) -> Decrypt:
    """A `decrypt(chunks, size, contributions)` that asks the nodes in `releases` (node
    id -> the id of the message whose answer went into the sum), one at a time."""

    def decrypt(chunks: list[bytes], size: int, contributions: int) -> np.ndarray:
        reasons: list[str] = []
        for node, release in sorted(releases.items()):
            record = ConfigRecord(
                {
                    "chunks": list(chunks),
                    "size": size,
                    "contributions": contributions,
                    "fingerprint": fingerprint,
                    "release": release,
                }
            )
            content = RecordDict(
                {"config": round_config_for(cfg, 1, job_id), REQUEST_RECORD: record}
            )
            _, replies = ask_each(grid, [node], content, MESSAGE_TYPE, cfg.round_timeout)
            if not replies:
                reasons.append(f"node {node}: no answer within {cfg.round_timeout:g}s")
                continue
            (reply,) = replies
            if reply.has_error():
                reasons.append(f"node {node}: code {reply.error.code}: {reply.error.reason}")
                continue
            values = reply.content.config_records.get(REPLY_RECORD, ConfigRecord()).get("values")
            if not isinstance(values, list) or len(values) != size:
                reasons.append(f"node {node}: the reply holds no {size} decrypted values")
                continue
            log.info("the sum of %d encrypted partials was decrypted by node %d",
                     contributions, node)  # fmt: skip
            return np.asarray(values, dtype=np.float64)
        raise AidmpError(
            "no node that answered would decrypt the sum of their encrypted partials ("
            + "; ".join(reasons)
            + "); the coordinator holds the public key only"
        )

    return decrypt
