"""DP-SGD for stacks of Linear and ReLU layers, without per-sample gradient tensors.

The mechanism is Opacus's: Poisson sampling with rate q, each example's gradient
clipped to norm C, Gaussian noise N(0, σ²C²) on the sum, divided by the expected
batch size. So it is accounted the same way, as (σ, q, steps).

It is cheaper on our small MLPs, where Opacus's per-step Python work costs 3 to
6 times the training. For a Linear layer y = W a + b, the gradient of example i
is the outer product g_i a_iᵀ (g_i = ∂loss_i/∂y_i), so
  ‖∇W_i‖² = ‖g_i‖² ‖a_i‖²   and   Σ_i c_i g_i a_iᵀ = (c ⊙ G)ᵀ A,
and both the clipping factors c_i and the clipped sum come from matrices that
backpropagation already has ("ghost clipping", Goodfellow 2015; Li et al. 2022).
"""

from __future__ import annotations

import math
from typing import TypeGuard

import numpy as np
import torch
from torch import nn

from aidmp.errors import PrivacyError
from aidmp.privacy.ledger import Charge
from aidmp.privacy.noise import random_source
from aidmp.privacy.proximal import ProximalPull


def supports(model: nn.Module) -> TypeGuard[nn.Sequential]:
    """True for an nn.Sequential of Linear (with or without bias) and ReLU layers only,
    every parameter trainable: the clipped sum below has one term per parameter."""
    return (
        isinstance(model, nn.Sequential)
        and all(isinstance(layer, nn.Linear | nn.ReLU) for layer in model)
        and all(p.requires_grad for p in model.parameters())
    )


def clipped_gradient_sum(
    model: nn.Sequential, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float
) -> tuple[list[torch.Tensor], float]:
    """Σ_i clip(∇loss_i, C) for each parameter (in model.parameters() order), and Σ_i loss_i."""
    inputs, outputs, biased = [], [], []
    h = xb
    for layer in model:
        if isinstance(layer, nn.Linear):
            inputs.append(h)
            biased.append(layer.bias is not None)
            h = layer(h)
            outputs.append(h)
        else:
            h = layer(h)
    loss = nn.functional.cross_entropy(h, yb, reduction="sum")
    grads = torch.autograd.grad(loss, outputs)
    with torch.no_grad():
        sq_norms = sum(
            (
                g.pow(2).sum(1) * (a.pow(2).sum(1) + float(b))  # weight ‖g‖²‖a‖², bias ‖g‖²
                for a, g, b in zip(inputs, grads, biased, strict=True)
            ),
            torch.zeros(()),  # a tensor from the start (0.0 + x is x, exactly)
        )
        factor = (max_grad_norm / (sq_norms.sqrt() + 1e-6)).clamp(max=1.0)
        sums = []
        for a, g, b in zip(inputs, grads, biased, strict=True):
            scaled = g * factor[:, None]
            sums += [scaled.T @ a, scaled.sum(0)] if b else [scaled.T @ a]  # parameters() order
    return sums, float(loss.detach())


def train_dp_linear(
    model: nn.Module,  # one that `supports`, or a PrivacyError
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
) -> tuple[float, Charge]:
    """One round of DP-SGD, as `privacy.dp.train_dp` but for Linear/ReLU stacks.

    `seed` None: Poisson sampling and noise from the CSPRNG (privacy/noise.py).
    """
    if not supports(model):
        raise PrivacyError(
            "dp-grad-sample-mode 'linear' needs a model of only Linear and ReLU layers; "
            "use 'auto' or 'hooks' for this task"
        )
    xs = torch.as_tensor(x, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)
    n = len(ys)
    batches = math.ceil(n / batch_size)
    sample_rate = 1.0 / batches  # as Opacus's Poisson loader: q = 1 / len(loader)
    expected_batch = max(1, int(n * sample_rate))  # as Opacus's "mean" loss reduction
    random = random_source(seed)
    params = list(model.parameters())
    proximal = ProximalPull(model, learning_rate, proximal_mu)
    optimizer = torch.optim.SGD(params, lr=learning_rate, momentum=0.9)
    model.train()
    last_epoch_loss = float("nan")
    for _ in range(epochs):
        total, seen = 0.0, 0
        for _ in range(batches):
            chosen = random.uniform(n) < sample_rate
            xb, yb = xs[chosen], ys[chosen]
            if len(yb):
                sums, batch_loss = clipped_gradient_sum(model, xb, yb, max_grad_norm)
                total, seen = total + batch_loss, seen + len(yb)
            else:  # an empty batch still takes a noisy step, and is counted
                sums = [torch.zeros_like(p) for p in params]
            noises = random.normal_like(params, noise_multiplier * max_grad_norm)
            for p, s, noise in zip(params, sums, noises, strict=True):
                p.grad = (s + noise) / expected_batch
            optimizer.step()
            proximal.apply()  # FedProx as post-processing
        last_epoch_loss = total / max(seen, 1)
    return last_epoch_loss, Charge(noise_multiplier, sample_rate, epochs * batches)
