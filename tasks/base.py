"""What every learning task provides, and the one training loop they share.

A task is a dataset loader, a model builder, and train/evaluate functions. The
classification loop lives here once; task modules expose it under their own
names so a reader finds everything about a task in its module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from aidmp.tasks.data import Dataset


@dataclass(frozen=True)
class Task:
    """A learning task as the rest of the project sees it."""

    name: str
    description: str
    load: Callable[[], Dataset]
    build_model: Callable[[], nn.Module]
    train: Callable[..., float]
    evaluate: Callable[..., tuple[float, float]]
    # Tabular tasks that local governance can run on: the raw training rows (in the
    # order of `Dataset.x_train`), and how a governed frame becomes features and labels.
    raw_train: Callable[[], pd.DataFrame] | None = None
    encode: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]] | None = None
    # The held-out rows as the source has them (the order of `Dataset.x_test`): what a
    # simulation scores unsupervised results on, such as clustering's inertia.
    raw_test: Callable[[], pd.DataFrame] | None = None
    # The encoded features' names (`column=category` for a one-hot block), in the order of
    # `Dataset.x_train`'s columns: explanations sum them back to their source columns.
    feature_names: tuple[str, ...] | None = None


def stratified_holdout(
    y: np.ndarray, test_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices with each class's share kept in the test part.

    numpy only: scikit-learn's `train_test_split` costs 2 s of imports in every
    simulated node's process.
    """
    rng = np.random.default_rng(seed)
    n_test = test_size if isinstance(test_size, int) else round(len(y) * test_size)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts * n_test / len(y)).astype(int)
    # Hand out the rounding remainder to the classes with the largest fractional share.
    remainder = counts * n_test / len(y) - quota
    quota[np.argsort(-remainder)[: n_test - quota.sum()]] += 1
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota, strict=True)]
    )
    return np.setdiff1d(np.arange(len(y)), test), np.sort(test)


def _as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> float:
    """Local SGD (momentum 0.9) with cross-entropy; returns the mean loss of the last epoch.

    With `proximal_mu > 0` this is FedProx's local objective: the loss plus
    mu/2 * ||w - w_global||^2, where w_global is the model as it arrived.
    """
    xs, ys = _as_tensors(x, y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    global_params: Sequence[torch.Tensor] = (
        [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    )
    model.train()
    last_epoch_loss = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xs[idx]), ys[idx])
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if global_params:
                params = zip(model.parameters(), global_params, strict=True)
                loss = loss + (proximal_mu / 2) * sum((p - g).pow(2).sum() for p, g in params)
            loss.backward()
            optimizer.step()
        last_epoch_loss = total / max(seen, 1)
    return last_epoch_loss


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty set")
    xs, ys = _as_tensors(x, y)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(xs), batch_size):
        logits = model(xs[start : start + batch_size])
        target = ys[start : start + batch_size]
        loss += float(criterion(logits, target))
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss / len(xs), correct / len(xs)
