"""hpsearch from a notebook: run a study from a config object, a dict or a path, get the Optuna
study back, and read it with the report functions."""

from __future__ import annotations

import pandas as pd
import pytest

import hpsearch.api as hp
from hpsearch.config import load_study_config
from hpsearch.errors import ConfigError, StorageError

DOCUMENT = {
    "name": "notebook", "seed": 4,
    "data": {"dataset": "iris", "split_seed": 1},
    "model": {"kind": "mlp", "hidden": [8]},
    "training": {"epochs": 6},
    "search": {"optimizers": ["adam", "sgd"], "schedulers": ["none", "cosine"]},
    "sampler": {"kind": "random"},
    "pruner": {"kind": "none"},
}


def test_a_study_is_a_config_a_name_a_path_or_a_dict(write_study):
    path = write_study()
    by_path = hp.config(path)
    assert by_path.name == "small" and hp.config(str(path)).as_dict() == by_path.as_dict()
    assert hp.config(by_path) is by_path
    assert hp.config("wine").as_dict() == load_study_config("wine").as_dict()
    from_dict = hp.config(DOCUMENT)
    assert (from_dict.name, from_dict.data.dataset, from_dict.space.optimizers) == (
        "notebook", "iris", ("adam", "sgd"))
    assert hp.config(DOCUMENT, name="renamed").name == "renamed"
    with pytest.raises(ConfigError, match="study document: unknown key 'epoch'"):
        hp.config({**DOCUMENT, "epoch": 3})
    with pytest.raises(ConfigError, match="a study must be a StudyConfig, a name, a path or a "
                                          "dict; got int"):
        hp.config(3)


def test_train_one_configuration_from_python():
    params, run = hp.train(DOCUMENT, {"optimizer": "adam", "lr": 0.05}, seed=1, device="cpu")
    assert params["optimizer"] == "adam" and params["lr"] == 0.05
    assert len(run.result.history) == 6 and run.result.last.val_accuracy > 0.5


def test_load_a_stored_study_and_report_on_it(small_study):
    url, name = small_study
    study = hp.load(name, storage=url)
    assert len(study.trials) == 16
    assert hp.stored(study).name == name
    frame = hp.trials_frame(study)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 16
    board = hp.leaderboard(frame, top=3)
    assert board["number"].iloc[0] == study.best_trial.number
    assert set(hp.summary(frame, "scheduler")["scheduler"]) <= set(frame["scheduler"])
    assert "best" in hp.verdict(frame).lower()
    again = hp.retrain(name, study.best_trial.number, storage=url)
    assert again.retrained_loss == again.stored_loss
    with pytest.raises(StorageError, match="no study 'nothing'"):
        hp.load("nothing", storage=url)


def test_optimize_runs_and_resumes_a_study_from_a_dict(tmp_path):
    url = f"sqlite:///{tmp_path / 'nb.db'}"
    study = hp.optimize(DOCUMENT, trials=3, storage=url, device="cpu")
    assert study.study_name == "notebook" and len(study.trials) == 3
    assert {t.user_attrs["device"] for t in study.trials} == {"cpu"}
    study = hp.optimize(DOCUMENT, trials=5, storage=url, device="cpu")
    assert len(study.trials) == 5
