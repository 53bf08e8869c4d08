"""Wisconsin diagnostic breast cancer (scikit-learn's bundled copy): small and fast.

Used by the tests. The held-out test split is fixed (seed 0, stratified 20%), so
figures compare across runs with different federation seeds.

We read the CSV that scikit-learn ships rather than call `load_breast_cancer()`:
the same numbers (a test checks it), without 2 s of scikit-learn imports in each
simulated node's process.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from torch import nn

from aidmp.tasks.base import (
    Dataset,
    Task,
    evaluate_classifier,
    stratified_holdout,
    train_classifier,
)

NUM_FEATURES = 30


def read_raw() -> tuple[np.ndarray, np.ndarray]:
    """Features (569 x 30) and labels (1 = benign), as `load_breast_cancer()` gives them."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "scikit-learn is a dependency"
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "breast_cancer.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, :NUM_FEATURES], table[:, NUM_FEATURES].astype(np.int64)


def load() -> Dataset:
    raw_x, y = read_raw()
    x = np.log1p(raw_x)  # all features are positive, most skewed
    train, test = stratified_holdout(y, 0.2, seed=0)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
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
