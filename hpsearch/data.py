"""DATASETS: name -> loader, and the train/validation/test split every trial of a study shares.

The split is seeded and (for classification) stratified; feature scaling is fit on the
training split only, so validation and test stay unseen. The test split is never used by the
search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpsearch.errors import DataError

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class RawData:
    features: np.ndarray
    target: np.ndarray
    task: str


@dataclass(frozen=True)
class Split:
    features: torch.Tensor
    target: torch.Tensor  # class indices (int64) or values of shape (n, 1) (float32)

    def __len__(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Dataset:
    """A study's data, split and scaled, as tensors."""

    name: str
    task: str
    train: Split
    valid: Split
    test: Split
    n_features: int
    n_outputs: int
    fingerprint: str  # identifies the exact splits: stored with the study


def _sklearn(loader_name: str, task: str) -> Callable[..., RawData]:
    def load() -> RawData:
        # Imported here: scikit-learn takes over a second to import, and most commands
        # (studies, report, dashboard) never load a dataset.
        from sklearn import datasets as sk_datasets

        bunch = getattr(sk_datasets, loader_name)()
        return RawData(np.asarray(bunch.data, float), np.asarray(bunch.target), task)

    return load


def _linreg(n: int = 1000, p: int = 5, noise: float = 0.2, seed: int = 0) -> RawData:
    """Seed 003's synthetic regression: y = x @ w_true + noise, w_true = [0, 2, 4, ...]."""
    if n < 10 or p < 1 or noise < 0:
        raise DataError(f"linreg needs n >= 10, p >= 1, noise >= 0; got n={n}, p={p}, "
                        f"noise={noise}")
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, p))
    target = features @ linreg_true_weights(p) + noise * rng.standard_normal(n)
    return RawData(features, target, REGRESSION)


def linreg_true_weights(p: int) -> np.ndarray:
    return np.array([i / 0.5 for i in range(p)])


DATASETS: dict[str, Callable[..., RawData]] = {
    "wine": _sklearn("load_wine", CLASSIFICATION),
    "breast_cancer": _sklearn("load_breast_cancer", CLASSIFICATION),
    "digits": _sklearn("load_digits", CLASSIFICATION),
    "iris": _sklearn("load_iris", CLASSIFICATION),
    "linreg": _linreg,
}


def load_dataset(
    name: str, options: Mapping[str, Any] | None = None, *, valid_fraction: float = 0.2,
    test_fraction: float = 0.2, split_seed: int = 0, scale: bool = True,
) -> Dataset:
    """Load `name`, split it train/valid/test and scale features on the train split."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown; known: {', '.join(DATASETS)}")
    try:
        raw = DATASETS[name](**dict(options or {}))
    except TypeError as exc:
        raise DataError(f"dataset {name!r}: bad options {dict(options or {})}: {exc}") from None
    from sklearn.preprocessing import StandardScaler

    classify = raw.task == CLASSIFICATION
    indices = np.arange(len(raw.target))
    stratify = raw.target if classify else None
    rest, test_idx = _split(indices, test_fraction, split_seed, stratify)
    rest_stratify = raw.target[rest] if classify else None
    train_idx, valid_idx = _split(
        rest, valid_fraction / (1.0 - test_fraction), split_seed, rest_stratify
    )
    features = raw.features.astype(np.float64)
    if scale:
        scaler = StandardScaler().fit(features[train_idx])
        features = scaler.transform(features)
    features = features.astype(np.float32)
    if classify:
        classes, target = np.unique(raw.target, return_inverse=True)
        target = target.astype(np.int64)
        n_outputs = len(classes)
    else:
        target = raw.target.astype(np.float32).reshape(-1, 1)
        n_outputs = 1

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(features[idx]), torch.from_numpy(target[idx]))

    digest = hashlib.sha256()
    for idx in (train_idx, valid_idx, test_idx):
        digest.update(features[idx].tobytes())
        digest.update(target[idx].tobytes())
    return Dataset(
        name=name, task=raw.task, train=split(train_idx), valid=split(valid_idx),
        test=split(test_idx), n_features=features.shape[1], n_outputs=n_outputs,
        fingerprint=digest.hexdigest()[:16],
    )


def _split(
    indices: np.ndarray, fraction: float, seed: int, stratify: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if fraction <= 0:
        return indices, indices[:0]
    try:
        return train_test_split(indices, test_size=fraction, random_state=seed,
                                stratify=stratify)
    except ValueError as exc:
        raise DataError(f"cannot split {len(indices)} rows with fraction {fraction:g}: "
                        f"{exc}") from None
