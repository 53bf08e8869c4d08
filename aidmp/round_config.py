"""The per-round config: what the coordinator tells each node about one round.

The coordinator builds a `RoundConfig` (server/federation.py `round_config_for`) and
sends it as the message's "config" ConfigRecord (`to_config_record`); a node reads it
back with `RoundConfig.from_record`, which names any missing or mistyped key. Both
sides import this module, never each other. The wire keys are hyphenated, as Flower's
are, and must not change: deployed nodes of other versions read them.

A strategy may add keys of its own in `configure_train` (`proximal-mu`, `he-momentum`,
`he-server-lr`, Flower's `clipping_norm`); they are fields here too, with the value a
node assumes when a round does not carry them. Keys a newer coordinator adds are
ignored. The dp-* keys are the run's *default* DP policy, absent (None) when not sent;
a node's own node config overrides them (privacy/policy.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from aidmp import __version__
from aidmp.errors import RoundConfigError

# Name of the ConfigRecord that carries it (Flower's FedAvg `configrecord_key`).
RECORD_NAME = "config"
# Keys a strategy adds to the coordinator's config in `configure_train`.
PROXIMAL_MU_KEY = "proximal-mu"  # Flower's FedProx; our EncryptedFedAvg under fedprox
HE_MOMENTUM_KEY = "he-momentum"  # EncryptedFedAvg
HE_SERVER_LR_KEY = "he-server-lr"  # EncryptedFedAvg
CLIPPING_NORM_KEY = KEY_CLIPPING_NORM  # Flower's client-side fixed clipping (client-level DP)

DP_FIELDS = frozenset(
    {
        "dp", "dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_noise_multiplier",
        "dp_accountant", "dp_grad_sample_mode", "dp_metrics", "dp_metrics_share",
    }
)  # fmt: skip

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
}


# A job id names files at a node (model-<job>.pt, governance-reports/<job>-round-N).
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{0,64}"


class RoundConfig(BaseModel):
    """One round's config. Strictly typed: a wrong type is an error, never coerced."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore", strict=True)

    # --- always sent by the coordinator --------------------------------------------
    task: str
    partition: str  # simulation: how the task's rows are split among the institutions
    seed: int
    local_epochs: int = Field(alias="local-epochs")
    batch_size: int = Field(alias="batch-size")
    learning_rate: float = Field(alias="learning-rate")
    server_round: int = Field(alias="server-round")
    # One training job may span several Flower runs (a coordinator restarted and
    # resumed); nodes enter a round they release again as a new release.
    # It names files at the node (model-<job>.pt, governance-reports/<job>-round-N):
    # letters, digits, '-' and '_' only, never a path.
    job_id: str = Field("", alias="job-id", pattern=f"^{JOB_ID_PATTERN}$")
    num_rounds: int = Field(alias="num-rounds")
    # --- the run's default DP policy (None: not sent); a node's own config wins ------
    dp: bool | None = None
    dp_epsilon: float | None = Field(None, alias="dp-epsilon")
    dp_delta: float | None = Field(None, alias="dp-delta")
    dp_max_grad_norm: float | None = Field(None, alias="dp-max-grad-norm")
    dp_noise_multiplier: float | None = Field(None, alias="dp-noise-multiplier")
    dp_accountant: str | None = Field(None, alias="dp-accountant")
    dp_metrics: str | None = Field(None, alias="dp-metrics")
    dp_metrics_share: float | None = Field(None, alias="dp-metrics-share")
    # Distributed DP (privacy/distributed.py): absent means local, today's mode. The
    # sample rate q and k_min (the run's min-nodes) are public, the same for every node.
    dp_mode: str = Field("local", alias="dp-mode")
    dp_sample_rate: float | None = Field(None, alias="dp-sample-rate")
    dp_min_contributions: int = Field(0, alias="dp-min-contributions")
    # Never sent by our coordinator; a node has always honoured it from a round config.
    dp_grad_sample_mode: str | None = Field(None, alias="dp-grad-sample-mode")
    # --- simulation only: a deployed node's own node config wins (''= not set) -------
    state_root: str = Field("", alias="state-root")
    he_keys: str = Field("", alias="he-keys")
    governance_policy: str = Field("", alias="governance-policy")
    governance_scenario: str = Field("", alias="governance-scenario")
    # --- added by strategies; the default is what a round without the key means ----
    proximal_mu: float = Field(0.0, alias=PROXIMAL_MU_KEY)
    he_momentum: float = Field(0.0, alias=HE_MOMENTUM_KEY)
    he_server_lr: float = Field(1.0, alias=HE_SERVER_LR_KEY)
    clipping_norm: float | None = Field(None, alias=CLIPPING_NORM_KEY)

    def to_config_record(self) -> ConfigRecord:
        """The wire form: every field that was given (and is not None), by its wire key."""
        return ConfigRecord(self.model_dump(by_alias=True, exclude_unset=True, exclude_none=True))

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> RoundConfig:
        """Parse a received config. Raises RoundConfigError (a decline with code 101,
        BAD_CONFIG) that names each missing key, or the first mistyped one."""
        if record is None:
            raise RoundConfigError(
                f"the message carries no round config (no '{RECORD_NAME}' record); {_versions()}"
            )
        try:
            return cls.model_validate(dict(record))
        except ValidationError as exc:
            raise RoundConfigError(_describe(exc)) from None

    @classmethod
    def salvage(cls, record: Mapping[str, Any] | None, name: str) -> Any:
        """One field of a config that may not parse, only to *record* the decline it caused
        (client/audit_trail.py): its value if present and well typed, else its default
        (None for a field without one). Never to act on."""
        field = cls.model_fields[name]
        default = None if field.is_required() else field.get_default()
        key = field.alias or name
        if record is None or key not in record or field.annotation is None:
            return default
        try:
            return TypeAdapter(field.annotation).validate_python(record[key], strict=True)
        except ValidationError:
            return default

    def dp_policy(self) -> dict[str, object]:
        """The run's default DP policy, by wire key, holding only the keys it was sent."""
        return self.model_dump(by_alias=True, include=set(DP_FIELDS), exclude_none=True)


def _versions() -> str:
    return f"the coordinator and this node (aidmp {__version__}) may run different versions"


def _describe(exc: ValidationError) -> str:
    """Which keys are missing or mistyped; a value's type is named, never the value."""
    missing = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "missing"]
    wrong = [e for e in exc.errors() if e["type"] != "missing"]
    parts = []
    if missing:
        parts.append("the round config lacks key(s) " + ", ".join(f"'{k}'" for k in missing))
    if wrong:
        first = wrong[0]
        key = ".".join(str(p) for p in first["loc"])
        expected = _EXPECTED.get(first["type"], first["msg"].lower())
        parts.append(
            f"the round config's '{key}' is of type {type(first['input']).__name__}, "
            f"expected {expected}"
        )
    return "; ".join(parts) + f"; {_versions()}"
