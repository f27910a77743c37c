"""Start-up: which modules each command imports (not how long it takes), and the numpy splits
and scaling that spare a search scikit-learn's import (bit for bit scikit-learn's)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

import hpsearch.api as hp
from hpsearch import data, engines, training
from hpsearch.cli import STORAGE_HELP, cli
from hpsearch.storage.urls import STORAGE_ENV

HEAVY = ("torch", "optuna", "pandas", "sklearn", "scipy", "matplotlib", "plotly")

# Runs the `hpsearch` command in this process, then writes which HEAVY packages it loaded.
WRAPPER = """
import json, os, runpy, sys
sys.argv = ["hpsearch", *sys.argv[1:]]
try:
    runpy.run_module("hpsearch", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
heavy = set(os.environ["HPSEARCH_TEST_HEAVY"].split())
loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
with open(os.environ["HPSEARCH_TEST_MODULES"], "w") as out:
    json.dump({"code": code, "loaded": loaded}, out)
"""


def loaded_by(tmp_path: Path, *args: str) -> list[str]:
    """The HEAVY packages `hpsearch ARGS` imports, run in a fresh interpreter."""
    record = tmp_path / "modules.json"
    env = {**os.environ, "HPSEARCH_TEST_MODULES": str(record),
           "HPSEARCH_TEST_HEAVY": " ".join(HEAVY)}
    subprocess.run([sys.executable, "-c", WRAPPER, *args], check=True, env=env,
                   cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=300)
    result = json.loads(record.read_text())
    assert result["code"] == 0, args
    return result["loaded"]


def test_the_cli_spells_the_values_of_the_modules_it_does_not_import():
    assert (hp.AUTO, hp.REFERENCE, hp.COHORT) == (engines.AUTO, engines.REFERENCE,
                                                  engines.COHORT)
    assert hp.ENGINES == engines.ENGINES
    assert hp.DEFAULT_COHORT_SIZE == engines.DEFAULT_COHORT_SIZE
    assert hp.DEVICES == training.DEVICES
    assert f"${STORAGE_ENV}," in STORAGE_HELP


@pytest.mark.parametrize("args", [("--help",), ("--version",)]
                         + [(name, "--help") for name in sorted(cli.commands)])
def test_help_imports_neither_torch_nor_optuna_nor_pandas(tmp_path, args):
    assert loaded_by(tmp_path, *args) == []


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("stored")
    study = folder / "small.toml"
    study.write_text('[data]\ndataset = "wine"\n[training]\nepochs = 5\n'
                     '[search]\noptimizers = ["adam", "sgd"]\n')
    url = f"sqlite:///{folder / 'study.db'}"
    hp.optimize(str(study), trials=3, storage=url, device="cpu")
    return url


@pytest.mark.parametrize("args", [
    ("studies",), ("space", "--study", "wine"), ("report", "--study", "small"),
    ("export", "--study", "small", "--out", "exported"),
    ("dashboard", "--study", "small", "--refresh"),
])
def test_the_reading_commands_never_import_torch(tmp_path, stored, args):
    assert "torch" not in loaded_by(tmp_path, *args, *(() if "space" in args else
                                                       ("--storage", stored)))


def test_a_search_and_its_dashboard_refresh_never_import_scikit_learn(tmp_path):
    """optuna-dashboard's package imports scikit-learn (its app's importances): the refresh at
    the end of a search writes the note and figures without it."""
    study = tmp_path / "small.toml"
    study.write_text('[data]\ndataset = "wine"\n[training]\nepochs = 5\n')
    loaded = loaded_by(tmp_path, "optimize", "--study", str(study), "--trials", "3",
                       "--storage", f"sqlite:///{tmp_path / 'small.db'}", "--quiet")
    assert "plotly" in loaded  # the figures were made
    assert "sklearn" not in loaded


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "digits", "iris"])
def test_the_bundled_datasets_are_scikit_learns(name):
    raw = data.DATASETS[name]()
    bunch = getattr(sk_datasets, f"load_{name}")()
    features, target = np.asarray(bunch.data, float), np.asarray(bunch.target)
    assert raw.features.dtype == features.dtype and raw.target.dtype == target.dtype
    assert raw.features.tobytes() == features.tobytes()
    assert raw.target.tobytes() == target.tobytes()


def same(got: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> bool:
    return all(a.dtype == b.dtype and np.array_equal(a, b)
               for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "digits"])
def test_splits_folds_and_scaling_are_scikit_learns(name):
    raw = data.DATASETS[name]()
    features, target = raw.features, raw.target
    indices = np.arange(len(target))
    for seed, fraction in itertools.product([0, 7, 42], [0.1, 0.2, 0.25, 1 / 3]):
        for stratify in (target, None):
            rest, held = data._split(indices, fraction, seed, stratify)
            assert same((rest, held), tuple(train_test_split(
                indices, test_size=fraction, random_state=seed, stratify=stratify)))
        for folds, classify in itertools.product([2, 5, 10], [True, False]):
            splitter = (StratifiedKFold if classify else KFold)(
                n_splits=folds, shuffle=True, random_state=seed)
            expected = [(rest[a], rest[b]) for a, b in splitter.split(
                rest, target[rest] if classify else None)]
            got = data._k_folds(rest, target, folds, seed, classify)
            assert all(same(g, e) for g, e in zip(got, expected, strict=True))
        train = features[rest]
        assert data._standardized(features, *data._scaler(features, train)).tobytes() == \
            StandardScaler().fit(train).transform(features).tobytes()


def test_random_splits_and_scaling_are_scikit_learns():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, k = int(rng.integers(12, 300)), int(rng.integers(2, 6))
        target = rng.integers(0, k, n)
        features = rng.standard_normal((n, 4)) * rng.uniform(0, 1e3, 4) \
            + rng.uniform(-1e4, 1e4, 4)
        features[:, 0] = 3.3  # a constant column is only centred
        fraction, seed = float(rng.uniform(0.05, 0.6)), int(rng.integers(0, 1000))
        for stratify in (target, None):
            try:
                expected = train_test_split(np.arange(n), test_size=fraction,
                                            random_state=seed, stratify=stratify)
            except ValueError:  # data._split leaves these to scikit-learn
                continue
            assert same(data._split(np.arange(n), fraction, seed, stratify), tuple(expected))
        train = features[: n // 2]
        assert data._standardized(features, *data._scaler(features, train)).tobytes() == \
            StandardScaler().fit(train).transform(features).tobytes()
