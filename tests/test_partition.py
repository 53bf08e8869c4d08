"""Partitioners: deterministic, disjoint, covering, and the skews really skew."""

import numpy as np
import pytest

from aidmp.errors import AidmpError
from aidmp.tasks.data import Dataset
from aidmp.tasks.partition import (
    MIN_ROWS,
    institution_data,
    local_split,
    parse_partition,
    partition_indices,
)

LABELS = np.repeat(np.arange(4), 500)  # 2000 rows, 4 balanced classes


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "quantity:0.5", "dirichlet:100"])
def test_parts_are_deterministic_disjoint_and_cover(spec):
    a = partition_indices(LABELS, 7, spec, seed=3)
    b = partition_indices(LABELS, 7, spec, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    joined = np.concatenate(a)
    assert len(joined) == len(LABELS)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # disjoint + covering
    assert min(len(p) for p in a) >= MIN_ROWS


def test_seed_changes_the_split():
    a = partition_indices(LABELS, 5, "iid", seed=0)
    b = partition_indices(LABELS, 5, "iid", seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _label_share_spread(parts):
    """Mean over institutions of the total-variation distance to the global label mix."""
    global_mix = np.bincount(LABELS, minlength=4) / len(LABELS)
    return np.mean(
        [
            0.5 * np.abs(np.bincount(LABELS[p], minlength=4) / len(p) - global_mix).sum()
            for p in parts
        ]
    )


def test_dirichlet_skews_labels_and_alpha_controls_it():
    iid = _label_share_spread(partition_indices(LABELS, 10, "iid", seed=0))
    mild = _label_share_spread(partition_indices(LABELS, 10, "dirichlet:10", seed=0))
    strong = _label_share_spread(partition_indices(LABELS, 10, "dirichlet:0.1", seed=0))
    assert iid < 0.05
    assert strong > 0.4
    assert iid < mild < strong


def test_quantity_skews_sizes_not_labels():
    iid_sizes = [len(p) for p in partition_indices(LABELS, 10, "iid", seed=0)]
    skewed = partition_indices(LABELS, 10, "quantity:0.3", seed=0)
    sizes = [len(p) for p in skewed]
    assert max(iid_sizes) - min(iid_sizes) <= 1
    assert max(sizes) > 3 * min(sizes)
    big = max(skewed, key=len)  # a large part is still a random sample of labels
    assert _label_share_spread([big]) < 0.1


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "random",
        "dirichlet",
        "dirichlet:",
        "dirichlet:abc",
        "dirichlet:0",
        "quantity:-1",
        "iid:2",
    ],
)
def test_bad_specs_name_the_fix(spec):
    with pytest.raises(AidmpError, match="dirichlet:ALPHA"):
        parse_partition(spec)


def test_spec_round_trips():
    assert str(parse_partition(" Dirichlet:0.50 ")) == "dirichlet:0.5"
    assert str(parse_partition("iid")) == "iid"


def test_too_many_institutions_is_a_clear_error():
    with pytest.raises(AidmpError, match="use fewer institutions"):
        partition_indices(LABELS[:10], 6, "iid", seed=0)


def test_impossible_label_skew_is_a_clear_error():
    labels = np.repeat([0, 1], 20)
    with pytest.raises(AidmpError, match="larger ALPHA"):
        partition_indices(labels, 15, "dirichlet:0.01", seed=0)


def test_local_split_keeps_one_row_each_side():
    train, val = local_split(2, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = local_split(100, seed=0)
    assert len(val) == 10 and len(np.intersect1d(train, val)) == 0


def test_institutions_never_see_the_held_out_test_split():
    data = Dataset(
        x_train=np.arange(100, dtype=np.float32)[:, None],
        y_train=np.arange(100) % 2,
        x_test=np.arange(1000, 1020, dtype=np.float32)[:, None],
        y_test=np.arange(20) % 2,
    )
    rows = np.concatenate(
        [
            np.concatenate([d.x_train, d.x_val])
            for d in (institution_data(data, 4, "iid", 0, i) for i in range(4))
        ]
    )
    assert rows.max() < 100 and len(rows) == 100
