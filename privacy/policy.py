"""A node's DP policy. The node decides (DESIGN.md, "Parties and trust").

A node with its own data (`aidmp node start --data ...`) states its promise in its node
config (`--node-config "dp=true dp-epsilon=3 state-dir='/var/lib/aidmp'"`, or
`dp=false` for a node started with `--no-dp`), and every DP setting comes from there.
Whatever other DP setting a run asks for (dp=false, another ε, δ, clipping norm, σ or
accountant) is refused: the node trains under its own settings and names what it
refused, in its log and in its reply. A run asking for DP at a node started with
--no-dp is declined, since the node has no budget to spend. The coordinator's
`state-root` is never a ledger folder for such a node: a new out-dir must not mean a
fresh budget.

In simulation the researcher plays every institution, so the run config is every
node's policy, and a node config key (if any) overrides it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aidmp.errors import PrivacyError, describe_validation_error
from aidmp.node_config import has_own_data, truthy
from aidmp.round_config import RoundConfig

# Defined here, not beside DP-SGD (privacy/dp.py), so that reading a node's policy loads
# no torch or Opacus: a node process that answers a query or decrypts a sum needs neither.
#
# "linear" is our own clipping for Linear/ReLU stacks (privacy/fast_dp.py); "hooks"
# and "functorch" are Opacus's. "auto" takes "linear" where the model allows it,
# else "hooks", the faster of Opacus's two (benchmarks/dp_overhead.py). Opacus's
# "ew" mode fails on the empty batches that Poisson sampling draws, and such a step
# must still add noise and be counted, so it is not offered.
GRAD_SAMPLE_MODES = ("auto", "linear", "hooks", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = "auto"
# Any leftover budget "fits" if σ may grow without bound, but updates drowned in that
# much noise are useless: past this σ the node declines as out of budget instead.
MAX_NOISE_MULTIPLIER = 10.0
# The share of the budget a run's noised evaluation figures may cost on their own
# (privacy/metrics.py).
DEFAULT_SHARE = 0.1

log = logging.getLogger("aidmp.privacy")

POLICY_KEYS = (
    "dp", "dp-epsilon", "dp-delta", "dp-max-grad-norm", "dp-noise-multiplier",
    "dp-max-noise-multiplier", "dp-distributed-max-nodes",
    "dp-accountant", "dp-grad-sample-mode", "dp-rounds", "dp-metrics", "dp-metrics-share",
    "analytics-max-epsilon", "clustering-max-epsilon", "explain-max-epsilon",
)  # fmt: skip

# The most ε one analytics query may spend at a node unless its operator says otherwise
# (node config `analytics-max-epsilon`): a query asking more is declined (code 102), so
# that no single query can take a large part of a budget meant for training as well.
DEFAULT_ANALYTICS_MAX_EPSILON = 1.0
# The same for one clustering job, all its rounds together (node config
# `clustering-max-epsilon`; privacy/clustering_release.py).
DEFAULT_CLUSTERING_MAX_EPSILON = 1.0
# The same for one explanation (node config `explain-max-epsilon`;
# privacy/explain_release.py).
DEFAULT_EXPLAIN_MAX_EPSILON = 1.0


class DPPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    epsilon: float = Field(alias="dp-epsilon", gt=0)
    delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)
    max_grad_norm: float = Field(1.0, alias="dp-max-grad-norm", gt=0)
    noise_multiplier: float = Field(0.0, alias="dp-noise-multiplier", ge=0)
    # Above this σ the node declines (code 102) rather than send an update that is
    # mostly noise: what a nearly spent budget would otherwise buy.
    max_noise_multiplier: float = Field(
        MAX_NOISE_MULTIPLIER, alias="dp-max-noise-multiplier", gt=0, le=MAX_NOISE_MULTIPLIER
    )
    # Distributed DP: the largest k_min (the run's min-nodes) whose share σ/√k_min of the
    # noise this node adds to its own update. None: the node has not agreed to share out
    # its noise (a node with its own data must opt in; see `check_distributed`).
    distributed_max_nodes: int | None = Field(None, alias="dp-distributed-max-nodes", ge=3)
    accountant: Literal["pld", "rdp", "prv"] = Field("pld", alias="dp-accountant")
    grad_sample_mode: str = Field(DEFAULT_GRAD_SAMPLE_MODE, alias="dp-grad-sample-mode")
    # The evaluation figures of the validation rows are releases too (privacy/metrics.py):
    # noised and charged, planned to cost `metrics_share` of the budget a run starts
    # with, or never sent.
    metrics: Literal["noised", "withheld"] = Field("noised", alias="dp-metrics")
    metrics_share: float = Field(DEFAULT_SHARE, alias="dp-metrics-share", gt=0, lt=1)
    # The node's cap on one analytics query's ε (client/analytics_handler.py).
    analytics_max_epsilon: float = Field(
        DEFAULT_ANALYTICS_MAX_EPSILON, alias="analytics-max-epsilon", gt=0
    )
    # The node's cap on one clustering job's ε, all its rounds together.
    clustering_max_epsilon: float = Field(
        DEFAULT_CLUSTERING_MAX_EPSILON, alias="clustering-max-epsilon", gt=0
    )
    # The node's cap on one explanation's ε (privacy/explain_release.py).
    explain_max_epsilon: float = Field(
        DEFAULT_EXPLAIN_MAX_EPSILON, alias="explain-max-epsilon", gt=0
    )
    state_dir: Path


@dataclass(frozen=True)
class NodePrivacy:
    """The DP policy a node trains under (None: no DP), and what the run asked for that
    the node did not honour, as `key=value` of the run's request."""

    policy: DPPolicy | None
    refused: tuple[str, ...] = ()


def resolve_dp_policy(
    node_config: Mapping[str, Any], round_config: RoundConfig, institution: str
) -> DPPolicy | None:
    """The policy this node trains under, or None if it trains without DP."""
    return resolve_node_privacy(node_config, round_config, institution).policy


def resolve_node_privacy(
    node_config: Mapping[str, Any], round_config: RoundConfig, institution: str
) -> NodePrivacy:
    """The node's policy and its refusals; see the module docstring for who decides."""
    asked = round_config.dp_policy()  # only the dp-* keys the coordinator sent
    own_data = has_own_data(node_config)
    if own_data:
        settings, refused = _own_settings(node_config, asked)
    else:  # simulation: the run's policy, a node config key over it
        settings = {k: asked[k] for k in POLICY_KEYS if k in asked}
        settings |= {k: node_config[k] for k in POLICY_KEYS if k in node_config}
        refused = []
    if refused:
        log.warning("[%s] the run asked for %s; refused, this node's own settings apply",
                    institution, ", ".join(refused))  # fmt: skip
    if not truthy(settings.get("dp", False)):
        return NodePrivacy(None, tuple(refused))
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"]))
    elif round_config.state_root and not own_data:
        state_dir = Path(round_config.state_root) / institution
    else:
        raise PrivacyError(
            "DP is on but this node has no state folder for its privacy ledger; start it "
            "with --node-config \"state-dir='/path/kept/across/runs'\""
        )
    mode = settings.get("dp-grad-sample-mode", DEFAULT_GRAD_SAMPLE_MODE)
    if mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"dp-grad-sample-mode '{mode}' is not one of {GRAD_SAMPLE_MODES}")
    try:
        policy = DPPolicy.model_validate({**settings, "state_dir": state_dir})
    except ValidationError as exc:
        raise PrivacyError(describe_validation_error("dp policy", exc)) from None
    return NodePrivacy(policy, tuple(refused))


def _own_settings(
    node_config: Mapping[str, Any], asked: Mapping[str, object]
) -> tuple[dict[str, Any], list[str]]:
    """The DP settings of a node with its own data, and the run's requests it refuses:
    every dp-* value the run sent that differs from the node's own. (A smaller ε or δ
    would be stricter, but ε and δ belong to the node's ledger across all its jobs, so a
    job does not move them either.)"""
    if "dp" not in node_config:
        raise PrivacyError(
            "this node has its own data but states no DP choice, so it sends nothing; "
            "start it with --dp-epsilon E (DP-SGD, a budget of E) or --no-dp"
        )
    own = {k: node_config[k] for k in POLICY_KEYS if k in node_config}
    if not truthy(own["dp"]):
        if truthy(asked.get("dp", False)):
            raise PrivacyError(
                "the run asks for DP, and this node was started with --no-dp (it has no "
                "privacy budget to spend); it sits the run out"
            )
        return own, []
    defaults = {
        field.alias: field.default
        for field in DPPolicy.model_fields.values()
        if field.alias is not None and not field.is_required()
    }
    refused = []
    for key, value in asked.items():
        mine = own.get(key, defaults.get(key))
        if key == "dp":
            if not truthy(value):
                refused.append("dp=false")
        elif value != mine and not _same_number(value, mine):
            refused.append(f"{key}={value}")
    return own, refused


def _same_number(a: object, b: object) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)


def check_distributed(policy: DPPolicy, k_min: int, *, own_data: bool) -> None:
    """May this node add only σ/√k_min of the noise (dp-mode=distributed)? The coordinator
    names k_min, and a larger k_min means less noise in each update: against the other
    institutions, which hold the shared CKKS key, that is a looser setting. So a node with
    its own data takes part only up to the k_min its own config accepts; in simulation the
    researcher plays every part."""
    if not own_data:
        return
    cap = policy.distributed_max_nodes
    if cap is None:
        raise PrivacyError(
            "the run asks for distributed DP, which this node has not agreed to (each update "
            "would carry only a share of the noise); start it with "
            "--dp-distributed-max-nodes K to take part in federations of min-nodes up to K"
        )
    if k_min > cap:
        raise PrivacyError(
            f"the run's distributed DP has each node add a 1/{k_min} share of the noise "
            f"variance; this node accepts at most 1/{cap} (dp-distributed-max-nodes)"
        )
