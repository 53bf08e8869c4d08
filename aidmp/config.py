"""The run configuration that the coordinator, the CLI and `flwr run` share.

Keys are hyphenated, as Flower run configs are (`flwr run . --run-config
"num-rounds=5 strategy='fedprox'"`). The defaults here are the same as the
`[tool.flwr.app.config]` table in pyproject.toml; a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aidmp.errors import AidmpError, describe_validation_error

StrategyName = Literal["fedavg", "fedprox", "fedavgm", "trimmed-mean", "median"]
# Strategies whose server step is linear in the updates, so it can run on ciphertexts
# (FedProx differs from FedAvg only at the nodes). FedAdam/FedYogi, which need the
# coordinator to divide by a function of the update, are not offered at all.
HE_STRATEGIES = ("fedavg", "fedprox", "fedavgm")


def registered_names(text: str) -> dict[int, str]:
    """The `node-names` run-config value: a JSON object of node id -> site name."""
    if not text:
        return {}
    import json

    try:
        names = json.loads(text)
        return {int(node): str(name) for node, name in names.items()}
    except (ValueError, AttributeError, TypeError):
        raise ValueError(
            'node-names must be a JSON object of node ids and names: {"123": "site-0"}'
        ) from None


class RunConfig(BaseModel):
    """Everything one federated run needs to know. Validated once, at the start."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    task: str = Field("adult", description="learning task: adult, breast-cancer or mnist")
    num_rounds: int = Field(10, alias="num-rounds", ge=1)
    strategy: StrategyName = "fedavg"
    local_epochs: int = Field(1, alias="local-epochs", ge=1)
    batch_size: int = Field(64, alias="batch-size", ge=1)
    learning_rate: float = Field(0.05, alias="learning-rate", gt=0)
    fraction_train: float = Field(1.0, alias="fraction-train", gt=0, le=1)
    fraction_evaluate: float = Field(1.0, alias="fraction-evaluate", ge=0, le=1)
    min_nodes: int = Field(
        2,
        alias="min-nodes",
        ge=1,
        description="fewest nodes a round samples, and fewest updates it aggregates",
    )
    min_available_nodes: int = Field(
        2, alias="min-available-nodes", ge=1, description="nodes to wait for before a round"
    )
    proximal_mu: float = Field(0.01, alias="proximal-mu", ge=0)
    server_momentum: float = Field(0.9, alias="server-momentum", ge=0, lt=1)
    server_learning_rate: float = Field(1.0, alias="server-learning-rate", gt=0)
    trim_beta: float = Field(0.2, alias="trim-beta", ge=0, lt=0.5)
    partition: str = Field("iid", description="simulation only: iid, dirichlet:A, quantity:A")
    seed: int = 0
    central_eval: bool = Field(True, alias="central-eval")
    out_dir: str = Field("runs/latest", alias="out-dir")
    resume: bool = False
    round_timeout: float = Field(600.0, alias="round-timeout", gt=0)
    # --- sample-level DP-SGD at each node (privacy/dp.py). In deployment a node's own
    # --node-config values win over these; in simulation these are every node's policy.
    dp: bool = True
    dp_epsilon: float = Field(3.0, alias="dp-epsilon", gt=0, description="budget per dataset")
    dp_delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, alias="dp-max-grad-norm", gt=0)
    dp_noise_multiplier: float = Field(
        0.0, alias="dp-noise-multiplier", ge=0, description="0: plan it from dp-epsilon"
    )
    dp_accountant: Literal["pld", "rdp", "prv"] = Field(
        "pld", alias="dp-accountant", description="pld (tightest), rdp or prv"
    )
    dp_metrics: Literal["noised", "withheld"] = Field(
        "noised",
        alias="dp-metrics",
        description="under DP, evaluation figures noised and charged, or withheld",
    )
    dp_metrics_share: float = Field(
        0.1, alias="dp-metrics-share", gt=0, lt=1, description="of the budget, for figures"
    )
    # local: each node runs DP-SGD on its own and noises its own update. distributed: a
    # round is one DP-SGD step over the sampled nodes' pooled rows; each node adds a
    # 1/min-nodes share of the noise variance to its clipped gradient sum (HE required).
    dp_mode: Literal["local", "distributed"] = Field(
        "local", alias="dp-mode", description="local, or distributed (HE, min-nodes >= 3)"
    )
    dp_sample_rate: float = Field(
        0.05,
        alias="dp-sample-rate",
        gt=0,
        le=1,
        description="distributed mode: the public Poisson rate q every node samples rows with",
    )
    # --- client-level DP (plaintext runs): nodes clip their update, the coordinator adds
    # noise to the mean (Flower's DifferentialPrivacyClientSideFixedClipping).
    client_dp: bool = Field(False, alias="client-dp")
    client_dp_noise_multiplier: float = Field(1.0, alias="client-dp-noise-multiplier", gt=0)
    client_dp_clipping_norm: float = Field(1.0, alias="client-dp-clipping-norm", gt=0)
    # --- homomorphic encryption (privacy/he): nodes send CKKS ciphertexts, the
    # coordinator sums them with the public key only and keeps the model encrypted.
    he: bool = False
    he_keys: str = Field(
        "",
        alias="he-keys",
        description="coordinator.ckks, or the key ceremony's folder (simulation: both sides)",
    )
    # --- local governance (governance/): in deployment each node's own `policy` node
    # config rules; in simulation this policy stands in for every node.
    governance_policy: str = Field(
        "", alias="governance-policy", description="simulation: every node's policy YAML"
    )
    governance_scenario: str = Field(
        "", alias="governance-scenario", description="simulation: e.g. 'pii:0,2;dirty:1'"
    )
    state_root: str = Field(
        "",
        alias="state-root",
        description="simulation: nodes' state folders; '' = OUT/institutions",
    )
    # --- analytics (server/analysis.py): a query's canonical JSON; the run then asks the
    # nodes for it instead of training (`aidmp run --analysis Q.yaml` fills it in).
    analysis: str = Field("", description="a query's canonical JSON: run it instead of training")
    # --- clustering (server/clustering.py): a k-means job's canonical JSON; the run then
    # runs it instead of training (`aidmp run --cluster JOB.yaml` fills it in).
    clustering: str = Field("", description="a k-means job's canonical JSON: run it instead")
    # --- deployment: the names the coordinator gave the sites' keys at `aidmp coordinator
    # register-node --name`, so a site that never replies is named, not numbered.
    # `aidmp run` fills it in from its connection folder.
    node_names: str = Field(
        "", alias="node-names", description='deployment: {"NODE_ID": "NAME", ...} as JSON'
    )

    @field_validator("node_names")
    @classmethod
    def _names_are_a_json_object(cls, value: str) -> str:
        if value:
            registered_names(value)  # raises ValueError, which pydantic reports by key
        return value

    def registered_names(self) -> dict[int, str]:
        """node id -> the name it was registered under (empty when none were given)."""
        return registered_names(self.node_names)

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Validate a Flower run config; a wrong key or value names itself and the fix."""
        known = {f.alias or name for name, f in cls.model_fields.items()}
        unknown = sorted(set(run_config) - known)
        if unknown:
            import difflib

            guesses = [
                f"{key} (did you mean {close[0]}?)" if close else key
                for key in unknown
                for close in [difflib.get_close_matches(key, known, n=1)]
            ]
            raise AidmpError(
                f"unknown run-config key(s) {', '.join(guesses)}; "
                f"valid keys are: {', '.join(sorted(known))}"
            )
        try:
            cfg = cls.model_validate(dict(run_config))
        except ValidationError as exc:
            raise AidmpError(describe_validation_error("run-config", exc)) from None
        cfg.check_combinations()
        return cfg

    def check_combinations(self) -> None:
        """Refuse settings that cannot work together, rather than quietly drop one."""
        if self.min_nodes > self.min_available_nodes:
            raise AidmpError(
                f"min-nodes={self.min_nodes} is more than min-available-nodes="
                f"{self.min_available_nodes}: rounds could start with fewer nodes than one "
                "needs to aggregate; lower min-nodes too, or raise min-available-nodes"
            )
        if self.dp_mode == "distributed":
            self._check_distributed()
        if not self.he:
            return
        if not self.he_keys:
            raise AidmpError(
                "he=true needs he-keys: the path of coordinator.ckks from `aidmp keys init`"
            )
        if self.analysis or self.clustering:  # a query or a k-means job trains no model
            return
        if self.strategy not in HE_STRATEGIES:
            raise AidmpError(
                f"he=true works with {', '.join(HE_STRATEGIES)} only: {self.strategy} must "
                "compare or sort individual updates, which ciphertexts do not allow"
            )
        if self.central_eval:
            raise AidmpError(
                "he=true needs central-eval=false: under HE the coordinator cannot read the "
                "global model, so evaluation happens at the institutions (federated)"
            )
        if self.client_dp:
            raise AidmpError(
                "he=true cannot be combined with client-dp=true: client-level DP adds noise "
                "to the plaintext mean at the coordinator. Use the nodes' DP-SGD (dp=true)"
            )

    def _check_distributed(self) -> None:
        """dp-mode=distributed: each node adds only a 1/min-nodes share of the noise, so
        the coordinator must never see one contribution alone (HE), and a sum must hold
        at least min-nodes of them (privacy/distributed.py)."""
        if not self.dp:
            raise AidmpError(
                "dp-mode=distributed needs dp=true: it is a way of adding DP-SGD's noise"
            )
        if not self.he:
            raise AidmpError(
                "dp-mode=distributed needs he=true: each institution adds only a share of "
                "the noise, so the coordinator must never see an individual contribution; "
                "run with he=true, or use dp-mode=local"
            )
        if self.min_nodes < 3:
            raise AidmpError(
                f"dp-mode=distributed needs min-nodes >= 3 (got {self.min_nodes}): each "
                "institution adds 1/min-nodes of the noise variance, and with fewer "
                "contributions an institution that saw the sum could subtract its own and "
                "read the other's; set min-nodes close to the federation's size"
            )
        if self.strategy != "fedavg":
            raise AidmpError(
                f"dp-mode=distributed takes one DP-SGD step a round, summed at the "
                f"coordinator: strategy fedavg only, not {self.strategy}"
            )

    def to_flower(self) -> dict[str, Any]:
        """The hyphenated dict that Flower's run config and our ConfigRecords carry."""
        return self.model_dump(by_alias=True)
