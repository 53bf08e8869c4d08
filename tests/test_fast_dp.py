"""Our Linear/ReLU DP-SGD: the same mechanism as Opacus, computed without per-sample tensors."""

import numpy as np
import pytest
import torch
from torch import nn

from aidmp.errors import PrivacyError
from aidmp.privacy.dp import RoundShape, train_dp
from aidmp.privacy.fast_dp import clipped_gradient_sum, supports, train_dp_linear
from aidmp.tasks import get_task


def _explicit_clipped_sum(model, xb, yb, clip):
    """The definition: each example's own gradient, clipped to `clip`, summed."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(yb)):
        model.zero_grad()
        nn.functional.cross_entropy(model(xb[i : i + 1]), yb[i : i + 1]).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
        for t, g in zip(total, grads, strict=True):
            t += min(1.0, clip / (norm + 1e-6)) * g
    return total


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
def test_clipped_sum_equals_per_example_clipping(clip):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)
    )
    xb, yb = torch.randn(25, 30) * 3, torch.randint(0, 2, (25,))
    fast, _ = clipped_gradient_sum(model, xb, yb, clip)
    for a, b in zip(fast, _explicit_clipped_sum(model, xb, yb, clip), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_noise_has_the_calibrated_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 50))
    before = model[0].weight.detach().clone()
    x = np.zeros((1000, 200), dtype=np.float32)  # zero inputs: the weight update is pure noise
    y = np.zeros(1000, dtype=np.int64)
    train_dp_linear(model, x, y, epochs=1, batch_size=1000, learning_rate=1.0, seed=0,
                    noise_multiplier=2.0, max_grad_norm=0.5)  # fmt: skip
    # one step: noise N(0, (σC)²) / expected batch (1000), times lr 1
    std = (model[0].weight.detach() - before).std().item()
    assert std == pytest.approx(2.0 * 0.5 / 1000, rel=0.05)


def test_charge_matches_opacus_loader_shape():
    model = get_task("breast-cancer").build_model()
    x = np.random.default_rng(0).normal(size=(300, 30)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 300)
    common = dict(epochs=2, batch_size=64, learning_rate=0.05, seed=0, noise_multiplier=1.0,
                  max_grad_norm=1.0)  # fmt: skip
    _, fast = train_dp(model, x, y, grad_sample_mode="linear", **common)
    other = get_task("breast-cancer").build_model()
    _, opacus = train_dp(other, x, y, grad_sample_mode="hooks", **common)
    assert fast == opacus == RoundShape.of(300, 64, 2).charge(1.0)


def test_only_linear_relu_stacks_take_the_fast_path():
    assert supports(get_task("adult").build_model())
    assert supports(get_task("breast-cancer").build_model())
    assert not supports(get_task("mnist").build_model())
    x = np.zeros((10, 1, 28, 28), dtype=np.float32)
    with pytest.raises(PrivacyError, match="'linear' needs a model of only Linear and ReLU"):
        train_dp(get_task("mnist").build_model(), x, np.zeros(10, dtype=np.int64), epochs=1,
                 batch_size=5, learning_rate=0.1, seed=0, noise_multiplier=1.0,
                 max_grad_norm=1.0, grad_sample_mode="linear")  # fmt: skip


@pytest.mark.parametrize("mode", ["linear", "hooks"])
def test_fedprox_pull_keeps_dp_training_near_the_global_model(mode):
    x = np.random.default_rng(0).normal(size=(300, 30)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 300)

    def drift(mu):
        torch.manual_seed(0)
        model = get_task("breast-cancer").build_model()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        train_dp(model, x, y, epochs=5, batch_size=32, learning_rate=0.05, seed=0,
                 noise_multiplier=0.5, max_grad_norm=1.0, proximal_mu=mu,
                 grad_sample_mode=mode)  # fmt: skip
        return sum(float((model.state_dict()[k] - v).pow(2).sum()) for k, v in start.items())

    assert drift(5.0) < 0.1 * drift(0.0)


def test_bias_free_layers_are_supported_and_clipped_per_example():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6, bias=False), nn.ReLU(), nn.Linear(6, 2))
    assert supports(model)
    xb, yb = torch.randn(20, 12) * 3, torch.randint(0, 2, (20,))
    fast, _ = clipped_gradient_sum(model, xb, yb, 0.5)
    assert [t.shape for t in fast] == [p.shape for p in model.parameters()]
    for a, b in zip(fast, _explicit_clipped_sum(model, xb, yb, 0.5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    x = np.random.default_rng(0).normal(size=(100, 12)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 100)
    train_dp_linear(model, x, y, epochs=1, batch_size=25, learning_rate=0.1, seed=0,
                    noise_multiplier=1.0, max_grad_norm=1.0)  # fmt: skip


def test_a_frozen_parameter_is_not_supported():
    model = nn.Sequential(nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    assert not supports(model)


@pytest.mark.parametrize("mode", ["hooks", "linear"])
def test_both_paths_take_exactly_the_planned_steps_where_opacus_would_take_one_fewer(mode):
    """Opacus's sampler takes int(1/q) steps: 92 for 93 batches, as float division goes."""
    rows, batch = 93, 1
    shape = RoundShape.of(rows, batch, epochs=2)
    assert shape.steps == 186 and int(1 / shape.sample_rate) == 92
    model = nn.Sequential(nn.Linear(3, 2))
    x = np.random.default_rng(0).normal(size=(rows, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, rows)
    common = dict(epochs=2, batch_size=batch, learning_rate=0.05, seed=0, noise_multiplier=1.0)
    _, charge = train_dp(model, x, y, max_grad_norm=1.0, grad_sample_mode=mode, **common)
    assert charge == shape.charge(1.0)
