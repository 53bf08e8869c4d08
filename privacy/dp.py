"""DP-SGD at the institution with Opacus: plan the noise, then train one round.

Sample-level (ε, δ)-DP: Poisson sampling, per-sample clipping to `max_grad_norm`,
Gaussian noise of `noise_multiplier * max_grad_norm`. The node plans σ itself,
from its own budget and its own ledger, so it never depends on the coordinator.

FedProx under DP is a post-step pull towards the global model (privacy/proximal.py).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aidmp.errors import PrivacyError
from aidmp.privacy import fast_dp
from aidmp.privacy.ledger import Accountant, BudgetExhausted, Charge, epsilon_of
from aidmp.privacy.proximal import ProximalPull

# "linear" is our own clipping for Linear/ReLU stacks (privacy/fast_dp.py); "hooks"
# and "functorch" are Opacus's. "auto" takes "linear" where the model allows it,
# else "hooks", the faster of Opacus's two (benchmarks/dp_overhead.py). Opacus's
# "ew" mode fails on the empty batches that Poisson sampling draws, and such a step
# must still add noise and be counted, so it is not offered.
GRAD_SAMPLE_MODES = ("auto", "linear", "hooks", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = "auto"

# Opacus's secure-RNG notice (secure_mode is a deployment choice), and torch's note
# on full backward hooks that Opacus's hooks mode triggers, would print every round.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
# Planning stops when σ is this close to the smallest σ that fits the budget.
PLAN_TOLERANCE = 1e-3
# Any leftover budget "fits" if σ may grow without bound, but updates drowned in that
# much noise are useless: past this σ the node declines as out of budget instead.
MAX_NOISE_MULTIPLIER = 10.0


@dataclass(frozen=True)
class RoundShape:
    """How much one round of local training touches the data, before it runs."""

    sample_rate: float
    steps: int

    @classmethod
    def of(cls, num_rows: int, batch_size: int, epochs: int) -> RoundShape:
        # Opacus's Poisson loader: q = 1 / len(loader), and len(loader) steps an epoch.
        batches = math.ceil(num_rows / batch_size)
        return cls(sample_rate=1.0 / batches, steps=epochs * batches)

    def charge(self, noise_multiplier: float) -> Charge:
        return Charge(noise_multiplier, self.sample_rate, self.steps)


def check_delta(delta: float, num_rows: int) -> None:
    """δ must be small next to 1/n, or DP allows leaking a whole row outright."""
    if not 0 < delta < 1.0 / num_rows:
        raise PrivacyError(
            f"dp delta {delta:g} must be above 0 and below 1/n = {1.0 / num_rows:.3g} for this "
            f"node's {num_rows} rows; choose a smaller delta (1e-5 is usual)"
        )


@functools.lru_cache(maxsize=64)
def plan_noise_multiplier(
    history: tuple[Charge, ...],
    budget: float,
    delta: float,
    shape: RoundShape,
    rounds: int,
    accountant: Accountant = "rdp",
) -> float:
    """The smallest σ with which `rounds` more rounds of `shape` fit in `budget`.

    Like Opacus's `get_noise_multiplier`, but it composes with what the ledger has
    already spent. Cached: bisection costs up to a second and the answer only
    changes when the ledger does.
    """
    future = Charge(1.0, shape.sample_rate, shape.steps * rounds)

    def eps(sigma: float) -> float:
        plan = Charge(sigma, future.sample_rate, future.steps)
        return epsilon_of([*history, plan], delta, accountant)

    spent = epsilon_of(list(history), delta, accountant)
    if spent >= budget:
        raise BudgetExhausted(f"privacy budget exhausted: eps {spent:.2f} of {budget:.2f} spent")
    if eps(MAX_NOISE_MULTIPLIER) > budget:
        raise BudgetExhausted(
            f"privacy budget exhausted: eps {spent:.2f} of {budget:.2f} spent, too little left "
            f"for {rounds} more round(s) even at noise multiplier {MAX_NOISE_MULTIPLIER:g}"
        )
    low, high = 0.1, 1.0
    while eps(high) > budget:
        low, high = high, min(high * 2, MAX_NOISE_MULTIPLIER)
    if eps(low) <= budget:
        return low
    while high - low > PLAN_TOLERANCE * high:
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= budget else (mid, high)
    return high


def train_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    proximal_mu: float = 0.0,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    accountant: Accountant = "rdp",
) -> tuple[float, Charge]:
    """One round of DP-SGD on (x, y). Returns the last epoch's mean loss and the charge
    that the accountant recorded, which the caller writes to the ledger."""
    if grad_sample_mode == "auto":
        grad_sample_mode = "linear" if fast_dp.supports(model) else "hooks"
    if grad_sample_mode == "linear":
        return fast_dp.train_dp_linear(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            proximal_mu=proximal_mu,
        )
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    )
    loader = DataLoader(data, batch_size=batch_size, generator=generator)
    proximal = ProximalPull(model, learning_rate, proximal_mu)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    engine = PrivacyEngine(accountant=accountant)
    private_model, private_opt, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
        noise_generator=generator,
    )
    criterion = nn.CrossEntropyLoss()
    private_model.train()
    last_epoch_loss = float("nan")
    for _ in range(epochs):
        total, seen = 0.0, 0
        for xb, yb in private_loader:
            # An empty Poisson batch goes through too: its step adds noise and is counted.
            private_opt.zero_grad(set_to_none=True)
            loss = criterion(private_model(xb), yb)
            loss.backward()
            private_opt.step()
            proximal.apply()
            if len(yb):  # an empty batch's loss is nan
                total += float(loss.detach()) * len(yb)
                seen += len(yb)
        last_epoch_loss = total / max(seen, 1)
    history = engine.accountant.history
    charge = Charge(float(history[0][0]), float(history[0][1]), int(sum(h[2] for h in history)))
    return last_epoch_loss, charge
