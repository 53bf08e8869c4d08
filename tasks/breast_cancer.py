"""Wisconsin diagnostic breast cancer (scikit-learn's bundled copy): small and fast.

Used by the tests. The held-out test split is fixed (seed 0, stratified 20%), so
figures compare across runs with different federation seeds.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

from tasks.base import Dataset, Task, evaluate_classifier, train_classifier

NUM_FEATURES = 30


def load() -> Dataset:
    bunch = load_breast_cancer()
    x = np.log1p(bunch.data.astype(np.float64))  # all features are positive, most skewed
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    # One standardisation for every institution, fixed by the shared training split:
    # the simulated institutions all receive data already encoded this way.
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-12
    return Dataset(
        ((x_tr - mean) / std).astype(np.float32),
        y_tr,
        ((x_te - mean) / std).astype(np.float32),
        y_te,
    )


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))


train = train_classifier
evaluate = evaluate_classifier

TASK = Task(
    name="breast-cancer",
    description="Wisconsin diagnostic breast cancer, 30 features, binary (455 / 114)",
    load=load,
    build_model=build_model,
    train=train,
    evaluate=evaluate,
)
