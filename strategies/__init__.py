"""Server strategies: the plaintext FedAvg family and a robust choice.

They are Flower's own message-API strategies (`flwr.serverapp.strategy`), built
from our run config in one place, plus the state a checkpoint must keep so that a
resumed run aggregates exactly as an uninterrupted one would.
"""

from aidmp.strategies.factory import STRATEGY_NAMES, build_strategy
from aidmp.strategies.state import restore_strategy_state, strategy_state

__all__ = ["STRATEGY_NAMES", "build_strategy", "restore_strategy_state", "strategy_state"]
