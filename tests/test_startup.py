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
import optuna_dashboard
import pytest
from sklearn import datasets as sk_datasets
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

import hpsearch.api as hp
from hpsearch import __version__, data, engines, training
from hpsearch.cli import STORAGE_HELP, cli
from hpsearch.storage.urls import STORAGE_ENV

HEAVY = ("torch", "optuna", "pandas", "sklearn", "scipy", "matplotlib", "plotly")

# Writes which HEAVY packages the process loaded when it exits (the command ends without the
# interpreter's teardown, but runs the atexit handlers), then runs the code that follows.
RECORDER = """
import atexit, json, os, sys

@atexit.register
def record():
    heavy = set(os.environ["HPSEARCH_TEST_HEAVY"].split())
    with open(os.environ["HPSEARCH_TEST_MODULES"], "w") as out:
        json.dump(sorted({name.split(".")[0] for name in sys.modules} & heavy), out)
"""
# The `hpsearch` command, in this process.
WRAPPER = RECORDER + """
import runpy
sys.argv = ["hpsearch", *sys.argv[1:]]
runpy.run_module("hpsearch", run_name="__main__")
"""


def loaded_by(tmp_path: Path, *args: str, code: str = WRAPPER, stdin: str = "") -> list[str]:
    """The HEAVY packages `hpsearch ARGS` (or the Python `code`) imports, run in a fresh
    interpreter, which must exit 0."""
    record = tmp_path / "modules.json"
    env = {**os.environ, "HPSEARCH_TEST_MODULES": str(record),
           "HPSEARCH_TEST_HEAVY": " ".join(HEAVY)}
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, input=stdin,
                   text=True, cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=300)
    return json.loads(record.read_text())


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
    """The command's process leaves the refresh to its helper, which imported pandas, SciPy's
    statistics and plotly meanwhile; optuna-dashboard's package imports scikit-learn (its
    app's importances): the helper writes the note and figures without it."""
    study = tmp_path / "small.toml"
    study.write_text('[data]\ndataset = "wine"\n[training]\nepochs = 5\n')
    url = f"sqlite:///{tmp_path / 'small.db'}"
    loaded = loaded_by(tmp_path, "optimize", "--study", str(study), "--trials", "3",
                       "--storage", url, "--quiet")
    assert {"pandas", "plotly", "sklearn"}.isdisjoint(loaded)
    assert "Written by hpsearch" in optuna_dashboard.get_note(hp.load("small", url))

    helper = RECORDER + "from hpsearch.refresh_helper import serve; serve()"
    request = json.dumps({"storage": url, "study": "small", "parent": os.getpid()}) \
        + "\nrefresh\n"
    loaded = loaded_by(tmp_path, code=helper, stdin=request)
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


@pytest.mark.parametrize(("args", "code", "out", "err"), [
    (("--version",), 0, f"hpsearch, version {__version__}\n", ""),
    (("report", "--study", "wine", "--storage", "sqlite:///missing.db"), 1, "",
     "Error: cannot open storage sqlite:///missing.db: no such file\n"),
    (("no-such-command",), 2, "", "No such command 'no-such-command'"),
])
def test_the_command_exits_with_its_status_and_all_its_output(tmp_path, args, code, out, err):
    """The command ends without the interpreter's teardown: its exit status, what it printed
    and its error line all get out (and a mistyped storage path leaves no file)."""
    done = subprocess.run([sys.executable, "-m", "hpsearch", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert (done.returncode, done.stdout) == (code, out)
    assert done.stderr == err if code < 2 else err in done.stderr
    assert list(tmp_path.iterdir()) == []
