"""Evaluation figures under DP: what a node's validation rows say about a model is a
release from private rows too, charged to the same ledger (DESIGN.md, "One budget per
population"). Planned, checked and charged in privacy/node_round.py.

Each evaluation sends two noisy bounded sums over the node's n validation rows, each
divided by n:

- the count of rows the model gets right, + N(0, σ_m²): one row moves it by at most 1;
- the sum of per-row losses, each clipped to [0, B], + N(0, (σ_m·B)²): one row moves it by
  at most B (`LOSS_BOUND`, public).

Each is a Gaussian mechanism of noise multiplier σ_m. The ledger enters the pair as one
"gaussian" entry: noise std σ_m, sensitivity 1, count 2 (the loss sum counted in units of
B). The reply carries each figure's noise std (σ_m/n and σ_m·B/n), so the coordinator
reports them as noisy, with their scale. n itself is treated as public, as the example
count of every reply is (DESIGN.md's wire list); both estimates are unbiased (the loss
for the clipped loss), so they are not clipped to their range after the noise.

σ_m (`plan_metrics_noise`): by default the metric releases of a whole run cost, on their
own, 10% of the ε the node has left when the run starts (`dp-metrics-share`), and the
training σ is planned with those releases already in the ledger (node_round.plan_sigma),
so the run still ends within budget. Why 10% is cheap for the model: Gaussian
mechanisms compose in quadrature (μ-GDP: μ² adds up; DP-SGD's many subsampled steps come
close to it), so figures that alone would cost a tenth of ε take about a hundredth of
what the training may spend. Measured on the demo (adult, 5 institutions, Dirichlet 0.5,
ε 3, 10 rounds, in-process, seeds 0 and 1): σ_m 50.3; the training σ 0.2% to 0.6% higher
than with the figures withheld; final held-out accuracy 0.8469 and 0.8404 against 0.8465
and 0.8403 withheld. What it buys: an accuracy std of 50.3/n per node (about 0.08 at the
demo's 650 validation rows a node) and 0.035 for the federated figure over 3,256 rows. A
smaller share would make the figures noisier for no visible gain in the model; a larger
one (`dp-metrics-share`) makes them sharper at a cost to training that grows with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aidmp.privacy.dp import _smallest_fitting
from aidmp.privacy.ledger import (
    DEFAULT_ACCOUNTANT,
    Accountant,
    BudgetExhausted,
    Event,
    GaussianRelease,
    epsilon_of,
)
from aidmp.privacy.noise import RandomSource
from aidmp.privacy.policy import DEFAULT_SHARE

# The public bound on one row's loss. Cross-entropy above 10 means the model gave the
# true class a probability under e⁻¹⁰, which a trained (let alone DP-trained) model
# rarely does, so the clipped mean is the mean; the bound costs noise in proportion.
LOSS_BOUND = 10.0
STATISTICS = 2  # per evaluation: the correct count and the clipped loss sum
# Metric noise multipliers searched: from tiny (a huge budget) to figures that are all
# noise (a nearly spent one; the planner then says so rather than release them).
MIN_METRICS_SIGMA = 0.01
MAX_METRICS_SIGMA = 1e6
PLAN_TOLERANCE = 1e-3
# The figures' wire keys: each noisy figure's noise std goes beside it.
ACCURACY_KEY, LOSS_KEY = "eval-accuracy", "eval-loss"
STD_SUFFIX = "-std"


def metrics_event(noise_multiplier: float, evaluations: int = 1) -> GaussianRelease:
    """The ledger's mechanism for `evaluations` evaluations' figures at σ_m."""
    return GaussianRelease(noise_multiplier, 1.0, STATISTICS * evaluations)


@functools.lru_cache(maxsize=64)
def plan_metrics_noise(
    history: tuple[Event, ...],
    budget: float,
    delta: float,
    evaluations: int,
    share: float = DEFAULT_SHARE,
    accountant: Accountant = DEFAULT_ACCOUNTANT,
) -> float:
    """The smallest σ_m with which `evaluations` evaluations' figures, on their own, cost
    at most `share` of what `history` leaves of `budget` (by `accountant`, at `delta`).
    BudgetExhausted when nothing is left, or when even σ_m `MAX_METRICS_SIGMA` costs more.
    Cached: the same run asks again at every evaluation."""
    target = share * (budget - epsilon_of(list(history), delta, accountant))
    if target <= 0:
        raise BudgetExhausted("privacy budget exhausted: nothing left for evaluation figures")

    @functools.cache
    def eps(sigma: float) -> float:
        return epsilon_of([metrics_event(sigma, evaluations)], delta, accountant)

    low, high = MIN_METRICS_SIGMA, 1.0
    if eps(low) <= target:
        return low
    while eps(high) > target:
        if high >= MAX_METRICS_SIGMA:
            raise BudgetExhausted(
                f"privacy budget exhausted: eps {target:.2g} for evaluation figures buys only noise"
            )
        low, high = high, min(high * 4, MAX_METRICS_SIGMA)
    return _smallest_fitting(eps, target, low, high, PLAN_TOLERANCE)


def bounded_sums(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, loss_bound: float = LOSS_BOUND
) -> tuple[float, float]:
    """The count of rows of (x, y) that `model` classifies right, and the sum of their
    cross-entropy losses each clipped to [0, `loss_bound`]: one row moves them by at most
    1 and `loss_bound`."""
    xs = torch.as_tensor(x, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)
    model.eval()
    correct, loss = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(xs), 1024):
            logits = model(xs[start : start + 1024])
            target = ys[start : start + 1024]
            losses = nn.functional.cross_entropy(logits, target, reduction="none")
            loss += float(losses.clamp(0.0, loss_bound).sum())
            correct += float((logits.argmax(dim=1) == target).sum())
    return correct, loss


@dataclass(frozen=True)
class NoisyMetrics:
    """One evaluation's figures as they leave: noisy means and each one's noise std."""

    accuracy: float
    loss: float
    accuracy_std: float
    loss_std: float
    noise_multiplier: float

    def as_metrics(self) -> dict[str, float]:
        return {
            ACCURACY_KEY: self.accuracy,
            ACCURACY_KEY + STD_SUFFIX: self.accuracy_std,
            LOSS_KEY: self.loss,
            LOSS_KEY + STD_SUFFIX: self.loss_std,
        }


def noisy_metrics(
    correct: float,
    loss_sum: float,
    n: int,
    noise_multiplier: float,
    random: RandomSource,
    *,
    loss_bound: float = LOSS_BOUND,
) -> NoisyMetrics:
    """The two sums with their Gaussian noise (σ_m and σ_m·B), each divided by `n`. The
    noise comes from `random`: the CSPRNG at a node with its own data."""
    (z,) = random.normal_like([torch.zeros(STATISTICS, dtype=torch.float64)], 1.0)
    noise = [float(v) for v in z]
    sigma = noise_multiplier
    return NoisyMetrics(
        accuracy=(correct + sigma * noise[0]) / n,
        loss=(loss_sum + sigma * loss_bound * noise[1]) / n,
        accuracy_std=sigma / n,
        loss_std=sigma * loss_bound / n,
        noise_multiplier=sigma,
    )
