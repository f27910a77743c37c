"""DATASETS: name -> loader; CSV/Parquet files; the train/validation/test split every trial of a
study shares.

The split is seeded and (for classification) stratified; everything learned from the data
(feature scaling, imputed values, the categories of text columns, the target's scaling) is fit
on the training split only, so validation and test stay unseen. The test split is never used by
the search. What was fit is kept as a `Preprocessing` (plain data), which encodes new rows the
same way (`hpsearch predict`).

A file is checked before anything trains, and each problem is one line naming it: a missing
file or target column, a target with one class, values that can't be encoded, missing values
(never silently dropped: impute them explicitly, or fix the file).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpsearch.errors import DataError

if TYPE_CHECKING:
    import torch

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class RawData:
    features: np.ndarray
    target: np.ndarray
    task: str
    names: tuple[str, ...] = ()  # the features' names: the columns new rows to predict have


@dataclass(frozen=True)
class Split:
    # Tensors; numpy arrays where the data is only described (`load_dataset(arrays=True)`).
    features: torch.Tensor
    target: torch.Tensor  # class indices (int64) or values of shape (n, 1) (float32)

    def __len__(self) -> int:
        return len(self.features)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.features.to(device), self.target.to(device))


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
    preprocessing: Preprocessing  # what the splits went through, fit on the train split
    # k-fold cross-validation: every fold's splits (train: the other folds, valid: this one,
    # test: the held-out rows, each scaled as fit on its train part); fold 0 is this dataset's
    # own. Empty: one validation split.
    folds: tuple[Dataset, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The model's inputs by name: columns as encoded (`color=red`, ...)."""
        return self.preprocessing.feature_names

    @property
    def classes(self) -> tuple[str, ...]:
        """Classification: the label of each output, in order."""
        return tuple(str(label) for label in self.preprocessing.labels)

    @property
    def device(self) -> torch.device:
        return self.train.features.device

    @property
    def n_folds(self) -> int:
        return len(self.folds) or 1

    def describe(self) -> list[str]:
        """What was inferred from the data, for people: the task and its loss, the rows of
        each split (and of each fold's), the model's inputs after encoding."""
        p = self.preprocessing
        if self.task == CLASSIFICATION:
            labels = ", ".join(map(str, p.labels[:8])) + (", ..." if len(p.labels) > 8 else "")
            task = f"classification into {len(p.labels)} classes ({labels}); loss: cross-entropy"
        else:
            scaled = (f"the target standardized on the training split (mean {p.target_mean:.4g}, "
                      f"std {p.target_scale:.4g})" if p.target_scale != 1.0 or p.target_mean
                      else "the target as it is")
            task = f"regression; loss: mean squared error of {scaled}"
        held_out = f"{len(self.test)} test (held out: the search never sees them)"
        if self.folds:
            def sizes(split: str) -> str:
                return " or ".join(map(str, sorted({len(getattr(f, split)) for f in self.folds})))

            rows = (f"rows: {len(self.train) + len(self.valid)} cut into {self.n_folds} folds "
                    f"(each run trains on {sizes('train')} and validates on {sizes('valid')}), "
                    f"{held_out}")
        else:
            rows = f"rows: {len(self.train)} train, {len(self.valid)} validation, {held_out}"
        numeric = [c for c in p.columns if c.kind == NUMERIC]
        encoded = [c for c in p.columns if c.kind == CATEGORICAL]
        inputs = f"inputs: {self.n_features} features"
        if encoded:
            one_hot = ", ".join(f"{len(c.categories)} one-hot from {c.name!r}" for c in encoded)
            inputs += f" ({len(numeric)} numeric, {one_hot})"
        else:
            inputs += " (numeric)"
        if any(p.mean) or any(scale != 1.0 for scale in p.scale):
            inputs += ", numbers standardized on each run's training rows"
        return [f"{self.name}: {task}", rows, inputs]

    def fold(self, index: int) -> Dataset:
        """Fold `index`'s splits (0 without folds: this dataset)."""
        return self.folds[index] if self.folds else self

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on `device` (itself if it is there already)."""
        import torch

        if self.device == torch.device(device):
            return self
        folds = tuple(fold.to(device) for fold in self.folds)
        first = folds[0] if folds else replace(
            self, train=self.train.to(device), valid=self.valid.to(device),
            test=self.test.to(device))
        return replace(first, folds=folds)


@dataclass(frozen=True)
class InputColumn:
    """How one input column becomes model inputs, as fit on a training split: a number (its
    missing values take `fill`), or one-hot over `categories` (a value not among them encodes
    as all zeros; a missing one takes `fill`). `fill` None: a missing value is an error."""

    name: str
    kind: str  # NUMERIC | CATEGORICAL
    fill: float | str | None = None
    categories: tuple[str, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        if self.kind == NUMERIC:
            return (self.name,)
        return tuple(f"{self.name}={c}" for c in self.categories)


@dataclass(frozen=True)
class Preprocessing:
    """Everything a run's data went through, fit on its training split: each input column's
    encoding, each feature's standardization, and the target's: the class labels, or the
    regression target's mean and scale (the model predicts `(y - target_mean) /
    target_scale`). Plain data, so that a model file can keep it (`as_dict`, `from_dict`)."""

    task: str
    columns: tuple[InputColumn, ...]
    mean: tuple[float, ...]  # per feature: 0 where it is not standardized
    scale: tuple[float, ...]  # per feature: 1 where it is not standardized
    labels: tuple[str | int, ...] = ()  # classification: each output's label, as in the data
    target_mean: float = 0.0  # regression
    target_scale: float = 1.0

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for column in self.columns for name in column.feature_names)

    @property
    def n_features(self) -> int:
        return len(self.mean)

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.task == CLASSIFICATION else 1

    def rmse(self, mse: float) -> float:
        """A mean squared error of the scaled target (a regression's loss) as the root mean
        squared error in the target's own units."""
        return math.sqrt(mse) * self.target_scale

    def transform(self, frame: Any, where: str = "") -> np.ndarray:
        """The model's inputs (float32) for the rows of `frame` (a pandas DataFrame with the
        input columns; others are ignored), encoded and scaled as the training rows were."""
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"{where}no column {missing[0]!r}{more}; the model's input columns "
                            f"are {_names(c.name for c in self.columns)}")
        features = _encode_columns(frame, self.columns, where)
        return _standardized(features, np.array(self.mean), np.array(self.scale)).astype(
            np.float32)

    def targets(self, outputs: np.ndarray) -> np.ndarray:
        """Regression: the model's outputs (one column) in the target's own units."""
        return outputs[:, 0].astype(np.float64) * self.target_scale + self.target_mean

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "columns": [vars(c) | {"categories": list(c.categories)}
                                               for c in self.columns],
                "mean": list(self.mean), "scale": list(self.scale),
                "labels": list(self.labels), "target_mean": self.target_mean,
                "target_scale": self.target_scale}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Preprocessing:
        columns = tuple(InputColumn(**{**c, "categories": tuple(c["categories"])})
                        for c in document["columns"])
        return cls(document["task"], columns, tuple(document["mean"]),
                   tuple(document["scale"]), tuple(document["labels"]),
                   document["target_mean"], document["target_scale"])


def _sklearn(loader_name: str, data_file: str, task: str,
             names: Sequence[str]) -> Callable[..., RawData]:
    def load() -> RawData:
        path = _sklearn_data_file(data_file)
        if path is None:  # not where this scikit-learn keeps it: its own loader reads it
            from sklearn import datasets as sk_datasets

            bunch = getattr(sk_datasets, loader_name)()
            return RawData(np.asarray(bunch.data, float), np.asarray(bunch.target), task,
                           tuple(names))
        return replace(_read_sklearn_csv(path, task), names=tuple(names))

    return load


def _sklearn_data_file(name: str) -> Path | None:
    """scikit-learn's copy of a bundled dataset, found without importing scikit-learn (which
    takes longer to import than the search of a small study takes to run)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None


def _read_sklearn_csv(path: Path, task: str) -> RawData:
    """A scikit-learn data file: the features, then the class index, on each line; the plain
    files start with a line "rows,columns,class names". The same numbers as its loaders."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as text:
            table = np.loadtxt(text, delimiter=",")
    else:
        table = np.loadtxt(path, delimiter=",", skiprows=1)
    return RawData(table[:, :-1], table[:, -1].astype(int), task)


def _linreg(n: int = 1000, p: int = 5, noise: float = 0.2, seed: int = 0) -> RawData:
    """Seed 003's synthetic regression: y = x @ w_true + noise, w_true = [0, 2, 4, ...]."""
    if n < 10 or p < 1 or noise < 0:
        raise DataError(f"linreg needs n >= 10, p >= 1, noise >= 0; got n={n}, p={p}, "
                        f"noise={noise}")
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, p))
    target = features @ linreg_true_weights(p) + noise * rng.standard_normal(n)
    return RawData(features, target, REGRESSION, tuple(f"x{i}" for i in range(p)))


def linreg_true_weights(p: int) -> np.ndarray:
    return np.array([i / 0.5 for i in range(p)])


# scikit-learn's feature names (its loaders' `feature_names`, the columns of
# `load_wine(as_frame=True).frame`), spelled here because the data files lack them and
# importing scikit-learn takes longer than a small search (tests/test_data.py compares them).
_WINE_NAMES = ("alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium",
               "total_phenols", "flavanoids", "nonflavanoid_phenols", "proanthocyanins",
               "color_intensity", "hue", "od280/od315_of_diluted_wines", "proline")
_CANCER_MEASURES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness",
                    "concavity", "concave points", "symmetry", "fractal dimension")
_CANCER_NAMES = (*(f"mean {m}" for m in _CANCER_MEASURES),
                 *(f"{m} error" for m in _CANCER_MEASURES),
                 *(f"worst {m}" for m in _CANCER_MEASURES))
_DIGITS_NAMES = tuple(f"pixel_{row}_{column}" for row in range(8) for column in range(8))
_IRIS_NAMES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)",
               "petal width (cm)")

DATASETS: dict[str, Callable[..., RawData]] = {
    "wine": _sklearn("load_wine", "wine_data.csv", CLASSIFICATION, _WINE_NAMES),
    "breast_cancer": _sklearn("load_breast_cancer", "breast_cancer.csv", CLASSIFICATION,
                              _CANCER_NAMES),
    "digits": _sklearn("load_digits", "digits.csv.gz", CLASSIFICATION, _DIGITS_NAMES),
    "iris": _sklearn("load_iris", "iris.csv", CLASSIFICATION, _IRIS_NAMES),
    "linreg": _linreg,
}


def load_dataset(
    name: str, options: Mapping[str, Any] | None = None, *, valid_fraction: float = 0.2,
    test_fraction: float = 0.2, split_seed: int = 0, scale: bool = True, folds: int = 1,
    scale_target: bool = False, refit: bool = False, arrays: bool = False,
) -> Dataset:
    """Load `name`, split it train/valid/test (or into `folds` folds beside the test rows) and
    scale features (and, with `scale_target`, a regression target) on each training part.
    `refit`: train on every row not held out for test (see `_assemble`). `arrays`: splits of
    numpy arrays, not tensors (to describe the data without importing torch)."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown; known: {', '.join(DATASETS)}")
    try:
        raw = DATASETS[name](**dict(options or {}))
    except TypeError as exc:
        raise DataError(f"dataset {name!r}: bad options {dict(options or {})}: {exc}") from None
    features = raw.features.astype(np.float64)
    names = raw.names or tuple(f"x{i}" for i in range(features.shape[1]))
    columns = tuple(InputColumn(str(n), NUMERIC) for n in names)

    def encode(_train_idx: np.ndarray) -> _Encoded:
        return _Encoded(features, columns)

    return _assemble(name, raw.task, raw.target, encode, valid_fraction=valid_fraction,
                     test_fraction=test_fraction, split_seed=split_seed, scale=scale,
                     folds=folds, scale_target=scale_target, refit=refit, arrays=arrays)


@dataclass(frozen=True)
class _Encoded:
    """Features as numbers (float64, every row) and the input columns they encode."""

    features: np.ndarray
    columns: tuple[InputColumn, ...]

    @property
    def scaled(self) -> np.ndarray:
        """Which features are standardized (bool per feature): the numbers, not the one-hot
        ones."""
        return np.array([c.kind == NUMERIC for c in self.columns
                         for _ in c.feature_names], bool)


def _assemble(
    name: str, task: str, target: np.ndarray, encode: Callable[[np.ndarray], _Encoded], *,
    valid_fraction: float, test_fraction: float, split_seed: int, scale: bool,
    where: str = "", folds: int = 1, scale_target: bool = False, refit: bool = False,
    arrays: bool = False,
) -> Dataset:
    """Split (seeded, stratified for classification): the test rows first, then the rest into
    train and valid, or into `folds` folds (each fold the valid part once, the others its
    train part); encode and scale, fit on each training part; tensors, and a fingerprint of
    the exact splits. `refit`: train on all the rest (a final model); its valid split is then
    the same rows (a schedule that steps on the validation loss steps on theirs)."""
    classify = task == CLASSIFICATION
    indices = np.arange(len(target))
    stratify = target if classify else None
    rest, test_idx = _split(indices, test_fraction, split_seed, stratify, where)
    scaling = {"scale": scale, "scale_target": scale_target and not classify, "arrays": arrays}
    if refit:
        return _fold(name, task, target, encode, rest, rest, test_idx, **scaling)
    if folds == 1:
        rest_stratify = target[rest] if classify else None
        train_idx, valid_idx = _split(
            rest, valid_fraction / (1.0 - test_fraction), split_seed, rest_stratify, where
        )
        return _fold(name, task, target, encode, train_idx, valid_idx, test_idx, **scaling)
    parts = [_fold(name, task, target, encode, train_idx, valid_idx, test_idx, **scaling)
             for train_idx, valid_idx in _k_folds(rest, target, folds, split_seed, classify,
                                                  where)]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.fingerprint.encode())
    return replace(parts[0], folds=tuple(parts), fingerprint=digest.hexdigest()[:16])


def _fold(name: str, task: str, target: np.ndarray, encode: Callable[[np.ndarray], _Encoded],
          train_idx: np.ndarray, valid_idx: np.ndarray, test_idx: np.ndarray,
          scale: bool, scale_target: bool = False, arrays: bool = False) -> Dataset:
    """The train, valid and test splits of these rows, encoded and scaled as fit on the train
    rows (a regression target too, with `scale_target`); as tensors, or numpy `arrays`."""

    classify = task == CLASSIFICATION
    encoded = encode(train_idx)
    features = encoded.features
    mean = np.zeros(features.shape[1])
    spread = np.ones(features.shape[1])
    columns = encoded.scaled if scale else np.zeros(features.shape[1], bool)
    if columns.any():
        mean[columns], spread[columns] = _scaler(features[:, columns],
                                                 features[train_idx][:, columns])
        features = _standardized(features, mean, spread)
    features = features.astype(np.float32)
    labels: tuple[str | int, ...] = ()
    target_mean, target_scale = 0.0, 1.0
    if classify:
        values, target = np.unique(target, return_inverse=True)
        target = target.astype(np.int64)
        n_outputs = len(values)
        labels = tuple(values.tolist())
    else:
        if scale_target:
            column = target.astype(np.float64)[:, None]
            (target_mean,), (target_scale,) = _scaler(column, column[train_idx])
            target = _standardized(column, target_mean, target_scale)
        target = target.astype(np.float32).reshape(-1, 1)
        n_outputs = 1
    preprocessing = Preprocessing(task, encoded.columns, tuple(mean.tolist()),
                                  tuple(spread.tolist()), labels, float(target_mean),
                                  float(target_scale))

    def split(idx: np.ndarray) -> Split:
        if arrays:
            return Split(features[idx], target[idx])
        # Imported here, with the data: a study file is read (`hpsearch space`) without torch.
        import torch

        return Split(torch.from_numpy(features[idx]), torch.from_numpy(target[idx]))

    digest = hashlib.sha256()
    for idx in (train_idx, valid_idx, test_idx):
        digest.update(features[idx].tobytes())
        digest.update(target[idx].tobytes())
    return Dataset(
        name=name, task=task, train=split(train_idx), valid=split(valid_idx),
        test=split(test_idx), n_features=features.shape[1], n_outputs=n_outputs,
        fingerprint=digest.hexdigest()[:16], preprocessing=preprocessing,
    )


def _k_folds(rest: np.ndarray, target: np.ndarray, folds: int, seed: int, classify: bool,
             where: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """`folds` (train, valid) index pairs over `rest`: seeded, stratified for classification;
    every row of `rest` in exactly one valid part (scikit-learn's (Stratified)KFold, shuffled)."""
    y = target[rest]
    if len(rest) >= folds and (not classify or (_integral(y) and min(_counts(y)) >= folds)):
        if classify:
            fold_of = _stratified_fold_of(y, folds, np.random.RandomState(seed))
        else:
            fold_of = np.empty(len(rest), dtype="i")
            order = np.arange(len(rest))
            np.random.RandomState(seed).shuffle(order)
            for k, part in enumerate(np.array_split(order, folds)):
                fold_of[part] = k
        return [(rest[fold_of != k], rest[fold_of == k]) for k in range(folds)]
    # A cut these can't make: scikit-learn's own checks say why (or warn of sparse classes).
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (StratifiedKFold if classify else KFold)(n_splits=folds, shuffle=True,
                                                         random_state=seed)
    try:
        return [(rest[train], rest[valid])
                for train, valid in splitter.split(rest, target[rest] if classify else None)]
    except ValueError as exc:
        raise DataError(f"{where}cannot cut {len(rest)} rows into {folds} folds: "
                        f"{' '.join(str(exc).split())}") from None


def _split(
    indices: np.ndarray, fraction: float, seed: int, stratify: np.ndarray | None,
    where: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """`indices` cut into (rest, the `fraction` part): scikit-learn's train_test_split."""
    if fraction <= 0:
        return indices, indices[:0]
    n_test = math.ceil(fraction * len(indices)) if fraction < 1 else 0
    n_train = len(indices) - n_test
    if n_test and n_train and stratify is None:
        order = np.random.RandomState(seed).permutation(len(indices))
        return indices[order[n_test:]], indices[order[:n_test]]
    if n_test and n_train and _integral(stratify):
        counts = _counts(stratify)
        if min(counts) >= 2 and min(n_train, n_test) >= len(counts):
            train, test = _stratified_split(stratify, n_train, n_test,
                                            np.random.RandomState(seed))
            return indices[train], indices[test]
    # A split these can't make: scikit-learn's own checks say why.
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(indices, test_size=fraction, random_state=seed,
                                stratify=stratify)
    except ValueError as exc:
        raise DataError(f"{where}cannot split {len(indices)} rows with fraction {fraction:g}: "
                        f"{' '.join(str(exc).split())}") from None


# -- scikit-learn's splits and scaling in numpy ------------------------------------------------
# The same arithmetic and the same random draws as scikit-learn 1.x's StandardScaler,
# train_test_split (ShuffleSplit, StratifiedShuffleSplit) and shuffled (Stratified)KFold, for
# the inputs they accept, so that a study's splits are the ones it always had
# (tests/test_startup.py compares them): importing scikit-learn costs more than a small
# study's search. Other inputs go to scikit-learn, whose errors say what is wrong.

def _integral(y: np.ndarray | None) -> bool:
    return y is not None and np.issubdtype(y.dtype, np.integer)


def _counts(y: np.ndarray) -> np.ndarray:
    return np.unique(y, return_counts=True)[1]


def _scaler(features: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation of `train`'s columns, the scale 1 for a constant
    column (StandardScaler().fit(train)'s mean_ and scale_), to standardize `features`."""
    if not (np.isfinite(features).all() and np.isfinite(train).all()):
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(train)
        scaler.transform(features)  # what is wrong with these values: its error says
        return scaler.mean_, scaler.scale_
    n = np.full(train.shape[1], float(len(train)))
    column_sum = np.sum(train, axis=0)
    mean = (np.zeros(train.shape[1]) + column_sum) / n
    deviation = train - column_sum / n
    correction = np.sum(deviation, axis=0)
    deviation **= 2
    variance = (np.sum(deviation, axis=0) - correction**2 / n) / n
    eps = np.finfo(np.float64).eps
    constant = variance <= n[0] * eps * variance + (n[0] * mean * eps) ** 2
    scale = np.sqrt(variance)
    scale[constant] = 1.0
    return mean, scale


def _standardized(features: np.ndarray, mean: Any, scale: Any) -> np.ndarray:
    """`features` centred on `mean` and divided by `scale` (StandardScaler's transform)."""
    scaled = np.array(features, dtype=np.float64, copy=True)
    scaled -= mean
    scaled /= scale
    return scaled


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """How many of each class a stratified part of `n_draws` rows takes: the floor of its
    share, then one more for the largest remainders (ties drawn at random)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratified_split(y: np.ndarray, n_train: int, n_test: int,
                      rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a stratified (train, test) cut of `y` (StratifiedShuffleSplit's first)."""
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"),
                             np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, members in enumerate(class_indices):
        shuffled = members.take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        test.extend(shuffled[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _stratified_fold_of(y: np.ndarray, folds: int, rng: np.random.RandomState) -> np.ndarray:
    """Each row's fold in a shuffled stratified k-fold cut of `y` (StratifiedKFold's)."""
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)
    encoded = class_perm[inverse]  # classes numbered in order of first appearance
    n_classes = len(first)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::folds], minlength=n_classes)
                             for i in range(folds)])
    fold_of = np.empty(len(y), dtype="i")
    for k in range(n_classes):
        of_class = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(of_class)
        fold_of[encoded == k] = of_class
    return fold_of


# -- CSV and Parquet files ---------------------------------------------------------------------

TASKS = ("auto", CLASSIFICATION, REGRESSION)
IMPUTE = ("mean", "median", "most_frequent")
# An integer target with at most this many distinct values is taken as class labels.
MAX_INFERRED_CLASSES = 20
_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")
NUMERIC, CATEGORICAL = "numeric", "categorical"


@dataclass(frozen=True)
class TableSource:
    """A CSV/TSV/Parquet file as a study's data (the [data] keys of a file dataset)."""

    path: str
    target: str
    task: str = "auto"  # auto | classification | regression
    impute: str | None = None  # mean | median | most_frequent; None: missing values are errors
    drop: tuple[str, ...] = ()  # columns to ignore (ids, leaks)
    max_categories: int = 50  # a text column with more distinct values is not a category
    separator: str | None = None  # CSV: None = by suffix (',' or a tab for .tsv)

    @property
    def label(self) -> str:
        return Path(self.path).name


def load_table(
    source: TableSource, *, valid_fraction: float = 0.2, test_fraction: float = 0.2,
    split_seed: int = 0, scale: bool = True, folds: int = 1, scale_target: bool = False,
    refit: bool = False, arrays: bool = False,
) -> Dataset:
    """Load a CSV or Parquet file: the target and the task; numeric features scaled and text
    columns one-hot encoded (fit on the training split); a seeded, stratified split. The
    other options are `load_dataset`'s."""
    where = f"{source.path}: "
    frame = read_table(source)
    if source.target not in frame.columns:
        raise DataError(f"{where}no target column {source.target!r}; columns: "
                        f"{_names(frame.columns)}")
    unknown = [c for c in source.drop if c not in frame.columns]
    if unknown:
        raise DataError(f"{where}no column {unknown[0]!r} to drop; columns: "
                        f"{_names(frame.columns)}")
    if source.target in source.drop:
        raise DataError(f"{where}the target column {source.target!r} is also in drop")
    if len(frame) == 0:
        raise DataError(f"{where}the file has a header but no rows")
    target, task = _target(frame[source.target], source, where)
    columns = [c for c in frame.columns if c != source.target and c not in source.drop]
    if not columns:
        raise DataError(f"{where}no feature columns: the file has only the target "
                        f"{source.target!r}{' and dropped columns' if source.drop else ''}")
    kinds = {column: _column_kind(frame[column], column, source, where) for column in columns}
    _check_missing(frame, columns, source, where)
    if task == CLASSIFICATION:
        _check_classes(target, source, where, splits=2 if test_fraction > 0 else 1)

    def encode(train_idx: np.ndarray) -> _Encoded:
        columns = _fit_columns(frame, kinds, train_idx, source, where)
        return _Encoded(_encode_columns(frame, columns, where), columns)

    return _assemble(source.label, task, target, encode, valid_fraction=valid_fraction,
                     test_fraction=test_fraction, split_seed=split_seed, scale=scale,
                     where=where, folds=folds, scale_target=scale_target, refit=refit,
                     arrays=arrays)


def read_table(source: TableSource, text_columns: Sequence[str] = ()) -> Any:
    """The file as a pandas DataFrame (pandas is imported here: most commands never need it).
    `text_columns` are read as text whatever they hold (a CSV of new rows whose category
    column happens to hold only numbers)."""
    import pandas as pd

    path = Path(source.path)
    suffixes = [s.lower() for s in path.suffixes]
    is_parquet = bool(suffixes) and suffixes[-1] in _PARQUET
    separator = source.separator or next(
        (_SEPARATORS[s] for s in suffixes if s in _SEPARATORS), None)
    if not is_parquet and separator is None:
        raise DataError(f"{source.path}: a data file must end in .csv, .tsv or .parquet "
                        "(or give separator = \"...\" for another text file)")
    if not path.is_file():
        raise DataError(f"data file {source.path} does not exist")
    try:
        if is_parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=separator, dtype=dict.fromkeys(text_columns, str))
    except ImportError as exc:
        raise DataError(f"{source.path}: reading Parquet needs pyarrow: pip install "
                        f"'hpsearch[parquet]' ({' '.join(str(exc).split())})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.path}: the file is empty") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        kind = "Parquet" if is_parquet else "CSV"
        raise DataError(f"{source.path}: cannot read as {kind}: "
                        f"{' '.join(str(exc).split())}") from None


def _target(column: Any, source: TableSource, where: str) -> tuple[np.ndarray, str]:
    """The target as an array (labels or floats), and the task, stated or inferred."""
    import pandas as pd

    name = source.target
    missing = column.isna()
    if missing.any():
        raise DataError(f"{where}target column {name!r} has {int(missing.sum())} missing "
                        f"values ({_rows(missing, source)}); hpsearch never drops rows: fill "
                        "or remove them in the file")
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
        raise DataError(f"{where}target column {name!r} holds dates or times; use numbers or "
                        "labels")
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if not numeric and source.task == REGRESSION:
        as_numbers = pd.to_numeric(column.astype(str), errors="coerce")
        if as_numbers.isna().any():
            example = column[as_numbers.isna()].iloc[0]
            raise DataError(f"{where}target column {name!r} holds text (e.g. {example!r}); "
                            "regression needs numbers: use task = \"classification\"")
        column, numeric = as_numbers, True
    if not numeric:
        return column.astype(str).to_numpy(dtype=object), CLASSIFICATION
    values = column.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}target column {name!r} holds infinite values")
    integral = bool(np.all(values == np.round(values)))
    task = source.task
    if task == "auto":
        few = len(np.unique(values)) <= MAX_INFERRED_CLASSES
        task = CLASSIFICATION if integral and few else REGRESSION
    if task == CLASSIFICATION and not integral:
        example = values[values != np.round(values)][0]
        raise DataError(f"{where}target column {name!r} holds non-integer numbers (e.g. "
                        f"{example:g}) that can't be class labels: use task = \"regression\"")
    return (values.astype(np.int64) if task == CLASSIFICATION else values), task


def _check_classes(target: np.ndarray, source: TableSource, where: str, splits: int) -> None:
    labels, counts = np.unique(target, return_counts=True)
    if len(labels) < 2:
        raise DataError(f"{where}target column {source.target!r} has one class "
                        f"({_label(labels[0])}) in {len(target)} rows; classification needs "
                        "at least two")
    fewest = int(counts.argmin())
    if counts[fewest] <= splits:
        raise DataError(f"{where}class {_label(labels[fewest])} of target column "
                        f"{source.target!r} has {counts[fewest]} row"
                        f"{'s' if counts[fewest] > 1 else ''}; a stratified train/valid"
                        f"{'/test' if splits == 2 else ''} split needs at least {splits + 1} "
                        "per class")


def _label(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _column_kind(column: Any, name: str, source: TableSource, where: str) -> str:
    """How a feature column is encoded: as a number, or one-hot as a category."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return NUMERIC
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
        raise DataError(f"{where}column {name!r} holds dates or times ({column.dtype}) that "
                        f"can't be encoded: convert them to numbers or drop the column "
                        f"(drop = [\"{name}\"])")
    present = column.dropna()
    odd = present[~present.map(lambda v: isinstance(v, str | bool | int | float))]
    if len(odd):
        raise DataError(f"{where}column {name!r} holds {type(odd.iloc[0]).__name__} values "
                        f"(e.g. {odd.iloc[0]!r}) that can't be encoded; drop the column "
                        f"(drop = [\"{name}\"])")
    text = present.astype(str)
    not_numbers = pd.to_numeric(text, errors="coerce").isna()
    if len(present) and not not_numbers.any():
        return NUMERIC
    if len(present) and not_numbers.mean() <= 0.5:
        # Mostly numbers: the others are typos or unmarked missing values, not categories.
        bad = text[not_numbers]
        at = _rows(column.index.isin(bad.index), source, limit=3)
        raise DataError(f"{where}column {name!r} is numeric but {len(bad)} value"
                        f"{'s are' if len(bad) > 1 else ' is'} not a number ({bad.iloc[0]!r} "
                        f"on {at}); fix them, leave them empty and set impute, or drop the "
                        f"column (drop = [\"{name}\"])")
    distinct = text.nunique()
    if distinct > source.max_categories:
        raise DataError(f"{where}column {name!r} has {distinct} distinct text values (more "
                        f"than max_categories = {source.max_categories}): it looks like free "
                        f"text or an id; drop it (drop = [\"{name}\"]) or raise max_categories")
    return CATEGORICAL


def _check_missing(frame: Any, columns: Sequence[str], source: TableSource, where: str) -> None:
    if source.impute is not None:
        return
    counts = {str(c): int(n) for c, n in frame[columns].isna().sum().items() if n}
    if counts:
        listed = ", ".join(f"{c} ({n})" for c, n in counts.items())
        raise DataError(f"{where}missing values in {len(counts)} feature column"
                        f"{'s' if len(counts) > 1 else ''}: {listed}; set [data] impute = "
                        "\"mean\", \"median\" or \"most_frequent\" to fill them from the "
                        "training split (text columns take the most frequent), or fix the file")


def _fit_columns(frame: Any, kinds: Mapping[str, str], train_idx: np.ndarray,
                 source: TableSource, where: str) -> tuple[InputColumn, ...]:
    """Each feature column's encoding, fit on the training split: text one-hot over the
    training split's categories; with `impute`, the value a missing one takes."""
    columns = []
    for name, kind in kinds.items():
        train = _typed(frame[name], kind).iloc[train_idx]
        fill = None
        if source.impute is not None:
            if train.isna().all():
                raise DataError(f"{where}column {name!r} has no values in the training split "
                                "to impute from")
            fill = _fill_value(train, kind, source.impute)
        categories = tuple(sorted(set(train.dropna()))) if kind == CATEGORICAL else ()
        columns.append(InputColumn(str(name), kind, fill, categories))
    return tuple(columns)


def _encode_columns(frame: Any, columns: Sequence[InputColumn], where: str) -> np.ndarray:
    """The rows of `frame` as features (float64): numbers as they are, text one-hot (an
    unseen category as all zeros), missing values filled as each column says."""
    blocks: list[np.ndarray] = []
    for spec in columns:
        raw = frame[spec.name]
        column = _typed(raw, spec.kind)
        missing = column.isna()
        if spec.kind == NUMERIC and (missing & raw.notna()).any():
            # Only rows to predict get here: a study's file was checked as it was read.
            bad = raw[missing & raw.notna()]
            raise DataError(f"{where}column {spec.name!r} is numeric but {len(bad)} value"
                            f"{'s are' if len(bad) > 1 else ' is'} not a number (e.g. "
                            f"{bad.iloc[0]!r})")
        if missing.any():
            if spec.fill is None:
                raise DataError(f"{where}column {spec.name!r} has {int(missing.sum())} missing "
                                "values, and the study fills none (its [data] sets no impute)")
            column = column.fillna(spec.fill)
        if spec.kind == NUMERIC:
            blocks.append(column.to_numpy(dtype=np.float64)[:, None])
            continue
        values = column.to_numpy(dtype=object)
        blocks.append(np.stack([values == c for c in spec.categories], axis=1)
                      .astype(np.float64))
    return np.concatenate(blocks, axis=1)


def _typed(column: Any, kind: str) -> Any:
    """A column as its kind encodes it: float64 (a non-number is missing), or text (None
    where missing)."""
    import pandas as pd

    if kind == NUMERIC:
        if not pd.api.types.is_numeric_dtype(column):
            column = pd.to_numeric(column.astype(object), errors="coerce")
        return column.astype(np.float64)
    return column.astype(object).where(column.notna(), None).map(
        lambda v: v if v is None else str(v))


def _fill_value(train: Any, kind: str, impute: str | None) -> Any:
    if kind == CATEGORICAL or impute == "most_frequent":
        # Ties go to the smallest value, so the choice is reproducible.
        counts = train.dropna().value_counts()
        value = min(counts.index[counts == counts.max()])
        return str(value) if kind == CATEGORICAL else float(value)
    return float(train.mean() if impute == "mean" else train.median())


def _rows(mask: Any, source: TableSource, limit: int = 5) -> str:
    """Where the masked rows are in the file: CSV line numbers (the header is line 1)."""
    positions = np.flatnonzero(np.asarray(mask))
    if Path(source.path).suffix.lower() in _PARQUET:
        label, numbers = "row", positions + 1
    else:
        label, numbers = "line", positions + 2
    shown = ", ".join(str(n) for n in numbers[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"{label}{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _names(columns: Any, limit: int = 12) -> str:
    names = [str(c) for c in columns]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
