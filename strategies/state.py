"""Strategy state that must survive a checkpoint.

FedAvgM carries its server momentum between rounds, and client-level DP its
accountant's history; the others are stateless given the global model.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.serverapp.strategy import FedAvgM, Strategy

from aidmp.strategies.client_dp import ClientLevelDP


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Arrays to store beside the global model (empty for stateless strategies)."""
    if isinstance(strategy, ClientLevelDP) and strategy.accountant is not None:
        blob = json.dumps(strategy.accountant.state_dict()).encode()
        return {"client-dp-accountant": np.frombuffer(blob, dtype=np.uint8)}
    if isinstance(strategy, FedAvgM) and strategy.momentum_vector is not None:
        return {f"momentum.{i}": np.asarray(v) for i, v in enumerate(strategy.momentum_vector)}
    return {}


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put back what `strategy_state` stored."""
    if isinstance(strategy, ClientLevelDP) and strategy.accountant is not None:
        if "client-dp-accountant" in state:
            blob = bytes(state["client-dp-accountant"])
            strategy.accountant.load_state_dict(json.loads(blob.decode()))
        return
    if isinstance(strategy, FedAvgM):
        keys = sorted((k for k in state if k.startswith("momentum.")), key=lambda k: int(k[9:]))
        strategy.momentum_vector = [state[k] for k in keys] or None
