"""FedProx under DP: a pull towards the global model after each private step.

Opacus privatises only per-sample gradients, so a proximal term added to the loss
would be silently dropped. Instead, after each step, w -= lr * mu * (w - w_global):
it touches no data, so it is post-processing and costs no privacy.
"""

from __future__ import annotations

import torch
from torch import nn


class ProximalPull:
    """Snapshot the global model now; `apply()` after each optimizer step."""

    def __init__(self, model: nn.Module, learning_rate: float, mu: float) -> None:
        self._params = list(model.parameters())
        self._rate = learning_rate * mu
        self._global = [p.detach().clone() for p in self._params] if mu > 0 else None

    @torch.no_grad()
    def apply(self) -> None:
        if self._global is None:  # plain FedAvg: nothing to pull
            return
        for p, g in zip(self._params, self._global, strict=True):
            p.sub_(self._rate * (p - g))
