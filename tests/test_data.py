"""Datasets: seeded, stratified, disjoint splits; scaling fit on the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpsearch.data import DATASETS, linreg_true_weights, load_dataset
from hpsearch.errors import DataError


def test_wine_splits_are_disjoint_stratified_and_scaled_on_train():
    data = load_dataset("wine", valid_fraction=0.2, test_fraction=0.2, split_seed=42)
    assert (len(data.train), len(data.valid), len(data.test)) == (106, 36, 36)
    assert (data.n_features, data.n_outputs, data.task) == (13, 3, "classification")
    rows = {tuple(r) for split in (data.train, data.valid, data.test)
            for r in split.features.tolist()}
    assert len(rows) == 178  # no row in two splits
    means = data.train.features.mean(dim=0)
    assert torch.allclose(means, torch.zeros(13), atol=1e-5)  # fit on train ...
    assert not torch.allclose(data.valid.features.mean(dim=0), torch.zeros(13), atol=1e-3)
    for split in (data.train, data.valid, data.test):  # ... and every class in every split
        assert set(split.target.tolist()) == {0, 1, 2}


def test_same_seed_same_split_and_fingerprint_other_seed_other():
    a = load_dataset("wine", split_seed=1)
    b = load_dataset("wine", split_seed=1)
    c = load_dataset("wine", split_seed=2)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert torch.equal(a.valid.features, b.valid.features)


def test_linreg_is_seed_003s_data():
    data = load_dataset("linreg", {"n": 1000, "p": 5, "noise": 0.2}, scale=False,
                        test_fraction=0.0)
    assert linreg_true_weights(5).tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert data.task == "regression" and data.train.target.shape == (800, 1)
    features = np.concatenate([data.train.features.numpy(), data.valid.features.numpy()])
    target = np.concatenate([data.train.target.numpy(), data.valid.target.numpy()])[:, 0]
    solution, *_ = np.linalg.lstsq(features, target, rcond=None)
    assert solution == pytest.approx([0, 2, 4, 6, 8], abs=0.03)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads(name):
    data = load_dataset(name)
    assert len(data.train) > len(data.valid) > 0
    assert data.n_features == data.train.features.shape[1]


def test_bad_dataset_inputs():
    with pytest.raises(DataError, match="dataset 'wines' is unknown; known: wine"):
        load_dataset("wines")
    with pytest.raises(DataError, match="dataset 'linreg': bad options"):
        load_dataset("linreg", {"rows": 5})
    with pytest.raises(DataError, match="linreg needs n >= 10"):
        load_dataset("linreg", {"n": 3})
