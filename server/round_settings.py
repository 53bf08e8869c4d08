"""What the coordinator tells every node about a round: the task, its split, the
training settings and the default privacy policy (a node's own settings win:
privacy/policy.py). Training, statistics, k-means and explanation jobs all send it.

Apart from server/federation.py so that a statistics or k-means job's ServerApp does not
load the training side (torch, strategies) it never uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from aidmp.config import RunConfig
from aidmp.round_config import RoundConfig

# Run-config settings every node is told as they are (same name in both models).
_SAME_NAMED = {
    "task", "partition", "seed", "local_epochs", "batch_size", "learning_rate", "num_rounds",
    "dp", "dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_noise_multiplier",
    "dp_accountant", "dp_metrics", "dp_metrics_share", "governance_scenario",
}  # fmt: skip


def round_config_for(cfg: RunConfig, rnd: int, job_id: str = "") -> ConfigRecord:
    """What each node needs to train or evaluate in round `rnd` of training job `job_id`.

    The dp-* keys are a default policy: a node's own node config overrides them.
    """
    state_root = cfg.state_root or str(Path(cfg.out_dir).resolve() / "institutions")
    return RoundConfig(
        **cfg.model_dump(include=_SAME_NAMED),
        server_round=rnd,
        job_id=job_id,
        **_distributed_keys(cfg),
        state_root=state_root,
        # Simulation only: the key ceremony's folder, so virtual nodes find their
        # secret context in it. A deployed node's own he-keys node config wins.
        he_keys=str(Path(cfg.he_keys).resolve()) if cfg.he and cfg.he_keys else "",
        # Simulation only, likewise: a deployed node's own `policy` node config wins.
        governance_policy=str(Path(cfg.governance_policy).resolve())
        if cfg.governance_policy
        else "",
    ).to_config_record()


def _distributed_keys(cfg: RunConfig) -> dict[str, Any]:
    """dp-mode=distributed's public settings; nothing in local mode (older nodes)."""
    if cfg.dp_mode != "distributed":
        return {}
    return {
        "dp_mode": cfg.dp_mode,
        "dp_sample_rate": cfg.dp_sample_rate,
        "dp_min_contributions": cfg.min_nodes,
    }
