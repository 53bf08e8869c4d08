"""DP-SGD at the institution with Opacus: plan the noise, then train one round.

Sample-level (ε, δ)-DP: Poisson sampling, per-sample clipping to `max_grad_norm`,
Gaussian noise of `noise_multiplier * max_grad_norm`. The node plans σ itself,
from its own budget and its own ledger, so it never depends on the coordinator.
Sampling and noise come from privacy/noise.py: the CSPRNG at a node with its own data
(no seed), a seeded generator for a simulated institution.

FedProx under DP is a post-step pull towards the global model (privacy/proximal.py).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from aidmp.errors import PrivacyError
from aidmp.privacy import fast_dp
from aidmp.privacy.ledger import (
    DEFAULT_ACCOUNTANT,
    Accountant,
    BudgetExhausted,
    Charge,
    Event,
    epsilon_of,
)
from aidmp.privacy.noise import RandomSource, random_source
from aidmp.privacy.policy import DEFAULT_GRAD_SAMPLE_MODE, MAX_NOISE_MULTIPLIER
from aidmp.privacy.proximal import ProximalPull

# Torch's note on the full backward hooks that Opacus's hooks mode uses would print
# every round.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
# Planning stops when σ is this close to the smallest σ that fits the budget.
PLAN_TOLERANCE = 1e-3
# Planning looks no lower than this σ: a budget that fits it is spent only in part.
MIN_NOISE_MULTIPLIER = 0.1
# Secant steps before planning falls back to bisection (it typically needs 3 or 4).
SECANT_STEPS = 8


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
    history: tuple[Event, ...],
    budget: float,
    delta: float,
    shape: RoundShape,
    rounds: int,
    accountant: Accountant = DEFAULT_ACCOUNTANT,
    max_sigma: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """The smallest σ with which `rounds` more rounds of `shape` fit in `budget`; at most
    `max_sigma` (the node policy's cap), else BudgetExhausted.

    Like Opacus's `get_noise_multiplier`, but it composes with what the ledger has
    already spent, by the ledger's accountant: the figure it plans with is the one the
    ledger will hold after those rounds (the ledger composes a run's rounds as one
    mechanism). Found to within `PLAN_TOLERANCE` of the smallest σ in a handful of ε
    evaluations (`_smallest_fitting`); cached, as the answer only changes when the
    ledger does.
    """
    steps = shape.steps * rounds

    @functools.cache
    def eps(sigma: float) -> float:
        return epsilon_of([*history, Charge(sigma, shape.sample_rate, steps)], delta, accountant)

    spent = epsilon_of(list(history), delta, accountant)
    if spent >= budget:
        raise BudgetExhausted(f"privacy budget exhausted: eps {spent:.2f} of {budget:.2f} spent")
    # A bracket: σ 1 is usual; halve towards the floor or double towards the cap.
    sigma = 1.0
    if eps(sigma) <= budget:
        while eps(sigma) <= budget and sigma > MIN_NOISE_MULTIPLIER:
            high, sigma = sigma, max(sigma / 2, MIN_NOISE_MULTIPLIER)
        if eps(sigma) <= budget:
            return sigma
        low = sigma
    else:
        while eps(sigma) > budget:
            if sigma >= max_sigma:
                raise BudgetExhausted(
                    f"privacy budget exhausted: eps {spent:.2f} of {budget:.2f} spent, too "
                    f"little left for {rounds} more round(s) even at noise multiplier "
                    f"{max_sigma:g} (this node's cap, dp-max-noise-multiplier), where its "
                    "updates would be mostly noise"
                )
            low, sigma = sigma, min(sigma * 2, max_sigma)
        high = sigma
    return _smallest_fitting(eps, budget, low, high, PLAN_TOLERANCE)


def _smallest_fitting(
    eps: Callable[[float], float], budget: float, low: float, high: float, tolerance: float
) -> float:
    """The smallest σ in (low, high] with eps(σ) ≤ budget, to within `tolerance` (relative),
    given eps(low) > budget ≥ eps(high) and eps decreasing.

    ε is close to a power of σ, so each step is a secant step on log ε against log σ
    through the last two σ tried, kept inside the bracket. Once the steps are small, the
    next one tries σ just above and just below the estimate, which closes the bracket.
    After `SECANT_STEPS` steps it bisects, so a badly behaved ε cannot stall it.
    """
    recent = [low, high]

    def tried(sigma: float) -> None:
        nonlocal low, high
        recent[:] = [recent[-1], sigma]
        low, high = (low, sigma) if eps(sigma) <= budget else (sigma, high)

    for step in itertools.count():
        if high - low <= tolerance * high:
            return high
        guess = _secant_root(eps, budget, *recent) if step < SECANT_STEPS else None
        if guess is None or not low < guess < high:
            guess = (low + high) / 2
        if step < SECANT_STEPS and abs(guess - recent[-1]) < 4 * tolerance * guess:
            for sigma in (guess * (1 + tolerance / 2), guess * (1 - tolerance / 2)):
                if low < sigma < high:
                    tried(sigma)
        else:
            tried(guess)
    raise AssertionError("unreachable")


def _secant_root(eps: Callable[[float], float], budget: float, a: float, b: float) -> float | None:
    """Where the line through (log a, log ε(a)) and (log b, log ε(b)) meets log budget."""
    ea, eb = eps(a), eps(b)
    if a == b or not (0 < ea < math.inf and 0 < eb < math.inf) or ea == eb:
        return None
    t = math.log(ea / budget) / math.log(ea / eb)
    return math.exp(math.log(a) + t * math.log(b / a))


class _SourcedNoiseOptimizer(DPOptimizer):
    """Opacus's DPOptimizer, its Gaussian noise drawn from a `RandomSource`.

    Opacus draws noise from a torch.Generator (a Mersenne Twister), or from torchcsprng
    in its secure mode; this one draws all of a step's noise in one go from
    privacy/noise.py: the CSPRNG at a node with its own data.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, random: RandomSource, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.random = random

    def add_noise(self) -> None:
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
        noises = self.random.normal_like(
            [p.summed_grad for p in params], self.noise_multiplier * self.max_grad_norm
        )
        for p, noise in zip(params, noises, strict=True):
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def train_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int | None,
    noise_multiplier: float,
    max_grad_norm: float,
    proximal_mu: float = 0.0,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
) -> tuple[float, Charge]:
    """One round of DP-SGD on (x, y). Returns the last epoch's mean loss and the charge
    of the mechanism as it ran, which the caller writes to the ledger.

    `seed` None: Poisson sampling and noise from the CSPRNG, as at a node with its own
    data; a seed: torch's generator, so that a simulated run repeats.
    """
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
    random = random_source(seed)
    xs = torch.as_tensor(x, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)
    n = len(ys)
    # Exactly the shape that was planned and checked against the budget. Opacus's own
    # Poisson loader takes int(1/q) steps an epoch, which floating point makes one fewer
    # than 1/q for some batch counts (93, 99, 105, ...).
    shape = RoundShape.of(n, batch_size, 1)
    expected_batch = max(1, int(n * shape.sample_rate))  # Opacus's "mean" reduction
    ModuleValidator.validate(model, strict=True)  # as Opacus's PrivacyEngine does
    private_model = GradSampleModule(
        model,
        batch_first=True,
        loss_reduction="mean",
        force_functorch=grad_sample_mode == "functorch",
    )
    private_model.forbid_grad_accumulation()  # one Poisson batch, one step
    proximal = ProximalPull(model, learning_rate, proximal_mu)
    private_opt = _SourcedNoiseOptimizer(
        torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9),
        random=random,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch,
    )
    taken = 0

    def count(_: DPOptimizer) -> None:  # called once a step has been clipped and noised
        nonlocal taken
        taken += 1

    private_opt.attach_step_hook(count)
    criterion = nn.CrossEntropyLoss()
    private_model.train()
    last_epoch_loss = float("nan")
    try:
        for _ in range(epochs):
            total, seen = 0.0, 0
            for _ in range(shape.steps):
                chosen = random.uniform(n) < shape.sample_rate  # Poisson sampling
                xb, yb = xs[chosen], ys[chosen]
                # An empty batch goes through too: its step adds noise and is counted.
                private_opt.zero_grad(set_to_none=True)
                loss = criterion(private_model(xb), yb)
                loss.backward()
                private_opt.step()
                proximal.apply()
                if len(yb):  # an empty batch's loss is nan
                    total += float(loss.detach()) * len(yb)
                    seen += len(yb)
            last_epoch_loss = total / max(seen, 1)
    finally:
        private_model.remove_hooks()  # the caller's model is a plain module again
    return last_epoch_loss, Charge(noise_multiplier, shape.sample_rate, taken)
