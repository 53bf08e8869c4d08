"""Adult's encoding comes from the schema, so every institution encodes alike."""

import numpy as np
import pandas as pd
import pytest

from aidmp.errors import AidmpError
from aidmp.tasks.adult import CATEGORIES, FEATURE_NAMES, NUMERIC, encode_features, encode_labels


def _rows():
    return pd.DataFrame(
        {
            "age": [17, 90, 40],
            "workclass": ["Private", "?", "State-gov"],
            "fnlwgt": [12_285, 1_484_705, 200_000],
            "education": ["Bachelors", "HS-grad", "Doctorate"],
            "education-num": [13, 9, 16],
            "marital-status": ["Never-married", "Divorced", "Married-civ-spouse"],
            "occupation": ["Sales", None, "Prof-specialty"],
            "relationship": ["Own-child", "Unmarried", "Husband"],
            "race": ["White", "Black", "Other"],
            "sex": ["Female", "Male", "Male"],
            "capital-gain": [0, 99_999, 5_000],
            "capital-loss": [0, 4_356, 0],
            "hours-per-week": [1, 99, 40],
            "native-country": ["United-States", "Atlantis", "India"],
            "income": ["<=50K", ">50K.", ">50K"],
        }
    )


def test_width_is_fixed_by_the_schema():
    x = encode_features(_rows())
    assert x.shape == (3, len(NUMERIC) + sum(len(c) for c in CATEGORIES.values()))
    assert x.shape[1] == len(FEATURE_NAMES) == 105
    assert x.dtype == np.float32


def test_each_row_encodes_independently_of_the_others():
    rows = _rows()
    whole = encode_features(rows)
    for i in range(len(rows)):
        np.testing.assert_array_equal(encode_features(rows.iloc[[i]]), whole[[i]])


def test_numeric_ranges_map_to_unit_interval():
    x = encode_features(_rows())
    numeric = x[:, : len(NUMERIC)]
    np.testing.assert_allclose(numeric[0], [0, 0, 12 / 15, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(numeric[1], [1, 1, 8 / 15, 1, 1, 1], atol=1e-6)


def test_one_hot_blocks_and_unknowns():
    x = encode_features(_rows())
    col = FEATURE_NAMES.index("workclass=Private")
    assert x[0, col] == 1 and x[1, col] == 0
    block = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("workclass=")]
    assert x[0, block].sum() == 1
    assert x[1, block].sum() == 0  # '?' moves no weight
    country = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("native-country=")]
    assert x[1, country].sum() == 0  # an unseen category too


def test_labels_accept_the_test_files_trailing_dot():
    assert encode_labels(_rows()).tolist() == [0, 1, 1]


def test_missing_column_names_itself():
    with pytest.raises(AidmpError, match="occupation"):
        encode_features(_rows().drop(columns=["occupation"]))
