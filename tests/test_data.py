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


@pytest.mark.parametrize(("name", "loader"), [
    ("wine", "load_wine"), ("breast_cancer", "load_breast_cancer"), ("digits", "load_digits"),
    ("iris", "load_iris")])
def test_a_builtin_datasets_features_are_named_as_scikit_learn_names_them(name, loader):
    # The columns of scikit-learn's DataFrame: what a CSV of new rows to predict has.
    from sklearn import datasets

    frame = getattr(datasets, loader)(as_frame=True).frame
    assert load_dataset(name).feature_names == tuple(frame.columns[:-1])
    assert load_dataset("linreg", {"p": 3}).feature_names == ("x0", "x1", "x2")


def test_a_regression_target_is_standardized_on_the_training_split_only():
    raw = load_dataset("linreg", {"n": 400, "noise": 1.0}, split_seed=3)
    scaled = load_dataset("linreg", {"n": 400, "noise": 1.0}, split_seed=3, scale_target=True)
    target = scaled.train.target.double()
    assert target.mean().item() == pytest.approx(0, abs=1e-6)
    assert target.std(unbiased=False).item() == pytest.approx(1, abs=1e-6)
    assert abs(scaled.valid.target.double().mean().item()) > 1e-3  # not fit on valid
    fitted = scaled.preprocessing
    train = raw.train.target.double()
    assert fitted.target_mean == pytest.approx(train.mean().item(), rel=1e-6)
    assert fitted.target_scale == pytest.approx(train.std(unbiased=False).item(), rel=1e-6)
    for name in ("train", "valid", "test"):
        back = getattr(scaled, name).target.double() * fitted.target_scale + fitted.target_mean
        assert torch.allclose(back, getattr(raw, name).target.double(), rtol=1e-5, atol=1e-5)
    # A loss of the scaled target, as an RMSE in the target's units.
    assert fitted.rmse(0.25) == pytest.approx(0.5 * fitted.target_scale)
    assert (raw.preprocessing.target_mean, raw.preprocessing.target_scale) == (0.0, 1.0)
    assert raw.preprocessing.rmse(0.25) == 0.5
    assert torch.equal(raw.train.features, scaled.train.features)
    assert raw.fingerprint != scaled.fingerprint


def test_a_class_target_is_never_scaled():
    plain = load_dataset("wine", split_seed=4)
    asked = load_dataset("wine", split_seed=4, scale_target=True)
    assert plain.fingerprint == asked.fingerprint
    assert torch.equal(plain.train.target, asked.train.target)
    assert asked.preprocessing.labels == (0, 1, 2) and asked.classes == ("0", "1", "2")
