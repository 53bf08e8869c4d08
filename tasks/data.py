"""The rows a task holds (`Dataset`) and one institution's share of them (`LocalData`).

Numpy only, apart from the models and training loops (tasks/base.py), so that code which
only moves rows (partitioning, governance, a node answering a statistics query) does not
load torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Features already encoded for the model, and a held-out test split.

    No institution ever trains on `x_test`/`y_test`: partitioning only splits the
    training part.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("features and labels differ in length")


@dataclass(frozen=True, eq=False)  # hashed by identity: it is cached per process
class LocalData:
    """One institution's rows: what it trains on and what it validates on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
