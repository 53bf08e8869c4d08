"""Distributed DP-SGD: one round is one DP-SGD step over the sampled institutions' rows.

The mechanism, per round t, with q (the public sample rate), C (the clip norm), σ (the
noise multiplier) and k_min (the run's min-nodes) all public:

  institution i   Poisson-samples each of its rows with probability q, sums the rows'
                  clipped gradients g_i = Σ_j clip(∇ℓ_j, C), and adds its share of the
                  noise, z_i ~ N(0, σ²C²/k_min · I). It encrypts u_i = −η·(g_i + z_i)
                  (η the round's learning rate) and sends it, with its row count n_i.
  coordinator     S = Σ_i u_i over the k replies (ciphertexts, public key only); a sum
                  of k < k_min contributions is dropped undecrypted (server/rounds.py);
                  G_{t+1} = G_t + S/(q·Σ n_i), one plaintext multiply and an add.

So G_{t+1} = G_t − η·(Σ g_i + Z)/(q·N), Z ~ N(0, (k/k_min)·σ²C²), k ≥ k_min: the update of
central DP-SGD (Opacus's "mean" reduction, expected batch q·N) over the pooled rows of the
k institutions, with at least σ²C² of noise variance. Each institution therefore charges
its ledger Charge(σ, q, 1) for each round it contributes to: the events a central
DP-SGD over the pooled data would charge its rows. One step a round: a second local step
would need the noisy sum of the first, which only exists after aggregation.

Trust: against the coordinator and outsiders, who see only ciphertexts and the decrypted
sum's consequences, every row is protected by the full σ. Every institution holds the
shared CKKS secret key, so one that obtained another's single ciphertext could decrypt it
and would see that institution's g_i with noise σ/√k_min only. Each share also assumes
the other contributors add theirs with the same σ, which nodes planning with the same
budget, δ, rounds, q and accountant do (the noise multiplier travels in each spend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aidmp.errors import PrivacyError
from aidmp.privacy import fast_dp
from aidmp.privacy.dp import RoundShape
from aidmp.privacy.noise import random_source

# Fewer contributions than this leave too little of the noise in a sum to protect anyone:
# with two, one institution that saw the sum could subtract its own and read the other's.
MIN_CONTRIBUTIONS = 3


def distributed_shape(sample_rate: float) -> RoundShape:
    """One DP-SGD step at the public rate q: the events the ledger charges a round."""
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"dp-sample-rate must be in (0, 1], got {sample_rate:g}")
    return RoundShape(sample_rate=sample_rate, steps=1)


@dataclass(frozen=True)
class NoisyShare:
    """One institution's contribution to a round's sum, in plaintext, before encryption."""

    gradient_sum: np.ndarray  # Σ clipped gradients + this node's noise share, flattened
    sampled: int  # rows Poisson-sampled this round (stays at the node)
    loss_sum: float  # Σ loss over the sampled rows (stays at the node)


def noise_share_std(noise_multiplier: float, max_grad_norm: float, min_contributions: int) -> float:
    """The std of one institution's noise: σC/√k_min, so k_min shares carry σ²C²."""
    if min_contributions < MIN_CONTRIBUTIONS:
        raise PrivacyError(
            f"distributed DP needs at least {MIN_CONTRIBUTIONS} contributions a round, "
            f"the run says {min_contributions}"
        )
    return noise_multiplier * max_grad_norm / math.sqrt(min_contributions)


def noisy_gradient_share(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    min_contributions: int,
    seed: int | None,
) -> NoisyShare:
    """Poisson-sample rows at rate q, sum their clipped gradients, add a noise share.

    `seed` None: sampling and noise from the CSPRNG (a node with its own data).
    The vector is in `flatten_state` order (the model's state dict: its parameters).
    """
    if not fast_dp.supports(model):
        raise PrivacyError(
            "dp-mode=distributed needs a model of only Linear and ReLU layers (its clipped "
            "gradient sum comes from privacy/fast_dp.py); use dp-mode=local for this task"
        )
    std = noise_share_std(noise_multiplier, max_grad_norm, min_contributions)
    names = [name for name, _ in model.named_parameters()]
    if names != list(model.state_dict()):
        raise PrivacyError("the model holds buffers besides its parameters")
    xs = torch.as_tensor(x, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)
    random = random_source(seed)
    chosen = random.uniform(len(ys)) < sample_rate  # Poisson sampling at the public q
    params = list(model.parameters())
    loss_sum = 0.0
    if int(chosen.sum()):
        sums, loss_sum = fast_dp.clipped_gradient_sum(model, xs[chosen], ys[chosen], max_grad_norm)
    else:  # no row sampled: the share is noise only, and still sent
        sums = [torch.zeros_like(p) for p in params]
    noises = random.normal_like([s.double() for s in sums], std)
    flat = np.concatenate(
        [(s.double() + z).numpy().ravel() for s, z in zip(sums, noises, strict=True)]
    )
    return NoisyShare(flat, int(chosen.sum()), loss_sum)


# CKKS error on one value of one share, encrypted at scale 2^25 (N=4096): measured at most
# 1.2e-4 (std 1.5e-5); this bound is twice that. Shares are sent as (g_i + z_i)/m, so in
# gradient-sum units a sum of k shares errs by at most k·m·HE_SHARE_ERROR a parameter.
HE_SHARE_ERROR = 2.0**-12


def he_error_bound(contributions: int, weight_unit: float) -> float:
    """The most CKKS adds to one parameter of a sum of `contributions` shares."""
    return contributions * weight_unit * HE_SHARE_ERROR


def distributed_summary(
    sample_rate: float,
    min_contributions: int,
    max_grad_norm: float,
    noise_multipliers: list[float],
    max_contributions: int,
    weight_unit: float,
) -> dict[str, object]:
    """summary.json's account of distributed mode: the public settings, the noise the
    decrypted sums carried, and the HE error next to it (per parameter, gradient units)."""
    sigma = min(noise_multipliers) if noise_multipliers else None
    noise_std = None if sigma is None else sigma * max_grad_norm
    bound = he_error_bound(max(max_contributions, 1), weight_unit)
    return {
        "mode": "distributed",
        "sample_rate": sample_rate,
        "min_contributions": min_contributions,
        "steps_per_round": 1,
        "noise_multipliers": sorted(set(noise_multipliers)),
        "noise_share_std": None if noise_std is None else noise_std / math.sqrt(min_contributions),
        "sum_noise_std_at_least": noise_std,
        "he_error_bound": bound,
        "he_error_over_noise_std": None if not noise_std else bound / noise_std,
    }
