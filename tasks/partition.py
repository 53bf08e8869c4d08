"""Split a training set into N virtual institutions: iid, label skew, size skew.

Specs are strings so they fit on a command line and in a Flower run config:
  iid              every institution gets an equal random share
  dirichlet:ALPHA  label skew: each class is spread over institutions by Dir(ALPHA)
  quantity:ALPHA   size skew: institution sizes are drawn from Dir(ALPHA)
Smaller ALPHA means more skew. Every split is seeded and deterministic, the parts
are disjoint and together cover the training set, and each part has at least
`MIN_ROWS` rows (one to train on, one to validate on).

It lives with the tasks, not in simulations/, because a node needs it too: a simulated
institution serves its part of a split, and a node with its own rows splits them into
train and validation (`local_split`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from aidmp.errors import AidmpError

if TYPE_CHECKING:  # base loads torch; checking a spec (the command line) should not
    from aidmp.tasks.data import Dataset, LocalData

MIN_ROWS = 2
# Label-skew draws can leave an institution with too few rows; we redraw (seeded)
# this many times before telling the user to relax the spec.
MAX_DIRICHLET_DRAWS = 200
# Splits kept per process: a Ray actor serving hundreds of virtual institutions would
# otherwise redraw the whole split for every message (O(N) work per message, O(N²) per
# round at N institutions).
SPLIT_CACHE_SIZE = 4
_splits: OrderedDict[tuple[str, int, str, int], list[np.ndarray]] = OrderedDict()
SPEC_HELP = "use iid, dirichlet:ALPHA or quantity:ALPHA with ALPHA > 0, e.g. dirichlet:0.5"


@dataclass(frozen=True)
class PartitionSpec:
    kind: Literal["iid", "dirichlet", "quantity"]
    alpha: float | None = None

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse 'iid', 'dirichlet:0.5' or 'quantity:1'; anything else is a clear error."""
    text = spec.strip().lower()
    if text == "iid":
        return PartitionSpec("iid")
    kind, sep, value = text.partition(":")
    if kind not in ("dirichlet", "quantity") or not sep:
        raise AidmpError(f"bad partition spec '{spec}': {SPEC_HELP}")
    try:
        alpha = float(value)
    except ValueError:
        raise AidmpError(
            f"bad partition spec '{spec}': ALPHA must be a number; {SPEC_HELP}"
        ) from None
    if not np.isfinite(alpha) or alpha <= 0:
        raise AidmpError(f"bad partition spec '{spec}': ALPHA must be > 0; {SPEC_HELP}")
    return PartitionSpec(kind, alpha)  # type: ignore[arg-type]


def partition_indices(
    labels: np.ndarray, num_institutions: int, spec: PartitionSpec | str, seed: int
) -> list[np.ndarray]:
    """Row indices (sorted) for each institution; the arrays are read-only, and the same
    ones are returned for the same labels, spec and seed (computed once per process)."""
    spec = parse_partition(spec) if isinstance(spec, str) else spec
    key = (hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(),
           num_institutions, str(spec), seed)  # fmt: skip
    if key in _splits:
        _splits.move_to_end(key)
        return _splits[key]
    parts = _split(labels, num_institutions, spec, seed)
    for part in parts:
        part.setflags(write=False)
    _splits[key] = parts
    while len(_splits) > SPLIT_CACHE_SIZE:
        _splits.popitem(last=False)
    return parts


def _split(
    labels: np.ndarray, num_institutions: int, spec: PartitionSpec, seed: int
) -> list[np.ndarray]:
    n_rows = len(labels)
    if num_institutions < 1:
        raise AidmpError("the number of institutions must be at least 1")
    if n_rows < num_institutions * MIN_ROWS:
        raise AidmpError(
            f"{num_institutions} institutions need at least {num_institutions * MIN_ROWS} "
            f"training rows ({MIN_ROWS} each) but the data has {n_rows}; "
            "use fewer institutions"
        )
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n_rows), num_institutions)
    elif spec.kind == "quantity":
        parts = _quantity_skew(n_rows, num_institutions, spec.alpha or 1.0, rng)
    else:
        parts = _label_skew(labels, num_institutions, spec.alpha or 1.0, rng, spec)
    return [np.sort(p) for p in parts]


def _quantity_skew(n_rows: int, n: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    # Everyone gets MIN_ROWS; the rest is shared out by Dir(alpha) proportions.
    spare = n_rows - n * MIN_ROWS
    sizes = MIN_ROWS + rng.multinomial(spare, rng.dirichlet(np.full(n, alpha)))
    return np.split(rng.permutation(n_rows), np.cumsum(sizes)[:-1])


def _label_skew(
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, spec: PartitionSpec
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for cls in classes:
            rows = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha)))[:-1] * len(rows)).astype(int)
            for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
                part.append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= MIN_ROWS:
            return merged
    raise AidmpError(
        f"partition {spec} leaves some of the {n} institutions with fewer than {MIN_ROWS} "
        f"of the {len(labels)} training rows; use fewer institutions or a larger ALPHA"
    )


def local_split(n_rows: int, seed: int, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """An institution's own train/validation split of its rows (federated evaluation)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_val = min(max(1, round(n_rows * val_fraction)), n_rows - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def institution_data(
    dataset: Dataset, num_institutions: int, spec: PartitionSpec | str, seed: int, index: int
) -> LocalData:
    """The simulated institution `index`'s rows, split into local train and validation."""
    from aidmp.tasks.data import LocalData

    if not 0 <= index < num_institutions:
        raise AidmpError(f"institution index {index} is outside 0..{num_institutions - 1}")
    rows = partition_indices(dataset.y_train, num_institutions, spec, seed)[index]
    train, val = local_split(len(rows), seed=seed + index)
    x, y = dataset.x_train[rows], dataset.y_train[rows]
    return LocalData(x[train], y[train], x[val], y[val])
