"""The end of a deployed training job: the coordinator sends the final global model, as
it holds it (ciphertext under HE), to every connected site, and each site keeps it,
decrypted with its own key, in its state folder (client/final_model.py). The
coordinator learns only which sites kept it.
"""

from __future__ import annotations

from logging import getLogger
from pathlib import Path

from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp import Grid

from aidmp.config import RunConfig
from aidmp.round_config import RECORD_NAME
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.server.round_settings import round_config_for
from aidmp.server.rounds import ask_each, replier_name

log = getLogger("aidmp.server")

MESSAGE_TYPE = "query.final_model"


def deliver_final_model(grid: Grid, cfg: RunConfig, job_id: str) -> list[str]:
    """Send the checkpoint's model to every connected node; the names of those that kept
    it. Under HE it travels as the ciphertexts the coordinator holds."""
    ckpt = load_checkpoint(Path(cfg.out_dir) / CHECKPOINT_NAME)
    content = RecordDict({RECORD_NAME: round_config_for(cfg, ckpt.round, job_id)})
    if cfg.he:
        from aidmp.privacy.he.state import WIRE_KEY, EncryptedGlobal

        content[WIRE_KEY] = EncryptedGlobal.from_arrays(ckpt.model).to_wire()
    else:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in ckpt.model.items()})
    _, replies = ask_each(grid, list(grid.get_node_ids()), content, MESSAGE_TYPE,
                          cfg.round_timeout)  # fmt: skip
    kept = []
    for reply in replies:
        node = None if reply.has_error() else reply.content.config_records.get("node")
        if node is not None and node.get("model-kept") is True:
            kept.append(replier_name(reply))
    kept.sort()
    log.info(
        "final model (round %d) kept by %s", ckpt.round, ", ".join(kept) if kept else "no site"
    )
    return kept
