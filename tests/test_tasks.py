"""Task loaders: the bundled data, encoded, with a fixed stratified held-out split."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from aidmp.tasks import TASK_NAMES, get_task, load_dataset
from aidmp.tasks.base import stratified_holdout
from aidmp.tasks.breast_cancer import read_raw


def test_breast_cancer_csv_is_what_sklearn_loads():
    x, y = read_raw()
    bunch = load_breast_cancer()
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_stratified_holdout_keeps_class_shares_and_is_fixed():
    y = np.array([0] * 70 + [1] * 30)
    train, test = stratified_holdout(y, 0.2, seed=0)
    assert len(test) == 20 and np.bincount(y[test]).tolist() == [14, 6]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    again = stratified_holdout(y, 0.2, seed=0)
    assert np.array_equal(test, again[1])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_task_loads_and_its_model_fits_its_data(name):
    task, data = get_task(name), load_dataset(name)
    assert len(data.x_train) > len(data.x_test) > 0
    assert set(np.unique(data.y_test)) <= set(np.unique(data.y_train))
    model = task.build_model()
    logits = model(torch.as_tensor(data.x_test[:8]))
    assert logits.shape == (8, len(np.unique(data.y_train)))
    loss, acc = task.evaluate(model, data.x_test[:64], data.y_test[:64])
    assert loss > 0 and 0 <= acc <= 1


def test_adult_has_the_published_sizes():
    data = load_dataset("adult")
    assert (len(data.y_train), len(data.y_test)) == (32_561, 16_281)
    assert 0.23 < data.y_train.mean() < 0.25  # 24% earn >50K
