"""A node's DP policy: its own settings first, the run's only where it has none.

In deployment an institution states its promise in its node config
(`flower-supernode --node-config "dp-epsilon=3 state-dir='/var/lib/aidmp'"`), and
no run config can loosen it. In simulation the researcher plays every
institution, so the run config is every node's policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aidmp.errors import PrivacyError, describe_validation_error
from aidmp.privacy.dp import DEFAULT_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES
from aidmp.round_config import RoundConfig

POLICY_KEYS = (
    "dp", "dp-epsilon", "dp-delta", "dp-max-grad-norm", "dp-noise-multiplier",
    "dp-accountant", "dp-grad-sample-mode", "dp-rounds",
)  # fmt: skip


class DPPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    epsilon: float = Field(alias="dp-epsilon", gt=0)
    delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)
    max_grad_norm: float = Field(1.0, alias="dp-max-grad-norm", gt=0)
    noise_multiplier: float = Field(0.0, alias="dp-noise-multiplier", ge=0)
    accountant: Literal["rdp", "prv"] = Field("rdp", alias="dp-accountant")
    grad_sample_mode: str = Field(DEFAULT_GRAD_SAMPLE_MODE, alias="dp-grad-sample-mode")
    state_dir: Path


def resolve_dp_policy(
    node_config: Mapping[str, Any], round_config: RoundConfig, institution: str
) -> DPPolicy | None:
    """The policy this node trains under, or None if it trains without DP."""
    run_policy = round_config.dp_policy()  # only the dp-* keys the coordinator sent
    merged = {k: run_policy[k] for k in POLICY_KEYS if k in run_policy}
    merged |= {k: node_config[k] for k in POLICY_KEYS if k in node_config}
    if not merged.get("dp", False):
        return None
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"]))
    elif round_config.state_root:
        state_dir = Path(round_config.state_root) / institution
    else:
        raise PrivacyError(
            "DP is on but this node has no state folder for its privacy ledger; start it "
            "with --node-config \"state-dir='/path/kept/across/runs'\""
        )
    mode = merged.get("dp-grad-sample-mode", DEFAULT_GRAD_SAMPLE_MODE)
    if mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"dp-grad-sample-mode '{mode}' is not one of {GRAD_SAMPLE_MODES}")
    try:
        return DPPolicy.model_validate({**merged, "state_dir": state_dir})
    except ValidationError as exc:
        raise PrivacyError(describe_validation_error("dp policy", exc)) from None
