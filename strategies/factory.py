"""Build a Flower strategy from the run config.

Flower's FedAvg sizes its sample before it waits for `min_available_nodes`, so a
round could sample only 2 of 10 nodes while the rest are still connecting. So a
round first waits for `min-available-nodes` (the simulation sets it to the whole
federation), then samples int(nodes * fraction), never fewer than `min-nodes`.
"""

from __future__ import annotations

from typing import get_args

from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg

from aidmp.config import RunConfig, StrategyName

STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)


def build_strategy(cfg: RunConfig) -> FedAvg:
    """The strategy named by `cfg.strategy`, with the sampling minimums set."""
    floor = min(cfg.min_nodes, cfg.min_available_nodes)
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=floor,
        min_evaluate_nodes=floor,
        min_available_nodes=cfg.min_available_nodes,
    )
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
