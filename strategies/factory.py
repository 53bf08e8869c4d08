"""Build a Flower strategy from the run config.

Flower's FedAvg sizes its sample before it waits for `min_available_nodes`, so a
round could sample only 2 of 10 nodes while the rest are still connecting. So a
round first waits for `min-available-nodes` (the simulation sets it to the whole
federation), then samples int(nodes * fraction), never fewer than `min-nodes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict, get_args

from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

from aidmp.config import RunConfig, StrategyName
from aidmp.errors import AidmpError
from aidmp.privacy.he.keys import key_file_for, load_context
from aidmp.strategies.client_dp import CLIENT_WEIGHT_KEY, ClientLevelDP
from aidmp.strategies.encrypted import EncryptedFedAvg

STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)


def build_strategy(cfg: RunConfig) -> Strategy:
    """The strategy named by `cfg.strategy`, with the sampling minimums set; its encrypted
    form when `cfg.he`, or wrapped for client-level DP when `cfg.client_dp`."""
    if cfg.he:
        return _encrypted_strategy(cfg)
    base = _base_strategy(cfg)
    if not cfg.client_dp:
        return base
    if cfg.strategy not in ("fedavg", "fedprox"):
        raise AidmpError(
            f"client-level DP needs strategy fedavg or fedprox (Flower accounts only for "
            f"FedAvg's aggregation), not {cfg.strategy}; change --strategy or drop client DP"
        )
    floor = min(cfg.min_nodes, cfg.min_available_nodes)
    sampled = max(int(cfg.min_available_nodes * cfg.fraction_train), floor)
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=cfg.min_available_nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return ClientLevelDP(
        base,
        noise_multiplier=cfg.client_dp_noise_multiplier,
        clipping_norm=cfg.client_dp_clipping_norm,
        num_sampled_clients=sampled,
        accountant=accountant,
    )


def _encrypted_strategy(cfg: RunConfig) -> EncryptedFedAvg:
    cfg.check_combinations()  # a config built in code skips from_flower's check
    # Where the coordinator's key lives: he-keys names coordinator.ckks (or its folder).
    context = load_context(key_file_for(Path(cfg.he_keys), "coordinator"), "coordinator")
    momentum = cfg.strategy == "fedavgm"
    return EncryptedFedAvg(
        context,
        server_momentum=cfg.server_momentum if momentum else 0.0,
        server_learning_rate=cfg.server_learning_rate if momentum else 1.0,
        proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
        distributed_sample_rate=cfg.dp_sample_rate if cfg.dp_mode == "distributed" else None,
        distributed_learning_rate=cfg.learning_rate,
        **_sampling(cfg),
    )


class _Sampling(TypedDict):
    """The keyword arguments every FedAvg-family strategy takes from the run config."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    weighted_by_key: str


def _sampling(cfg: RunConfig) -> _Sampling:
    floor = min(cfg.min_nodes, cfg.min_available_nodes)
    return _Sampling(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=floor,
        min_evaluate_nodes=floor,
        min_available_nodes=cfg.min_available_nodes,
        weighted_by_key=CLIENT_WEIGHT_KEY if cfg.client_dp else "num-examples",
    )


def _base_strategy(cfg: RunConfig) -> FedAvg:
    common = _sampling(cfg)
    if cfg.strategy == "fedavg":
        return FedAvg(**common)
    if cfg.strategy == "fedprox":
        # FedProx only ships `proximal-mu` to clients; our client applies the term.
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedavgm":
        return FedAvgM(
            **common,
            server_learning_rate=cfg.server_learning_rate,
            server_momentum=cfg.server_momentum,
        )
    if cfg.strategy == "trimmed-mean":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    if cfg.strategy == "median":
        return FedMedian(**common)
    raise AssertionError(f"unhandled strategy {cfg.strategy}")  # RunConfig forbids this
