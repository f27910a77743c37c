"""A regression target standardized on the training split, as the features are (so learning
rates carry across datasets), by default in new study files; a stored study without the
setting keeps the raw target it trained on, and resumes."""

from __future__ import annotations

import math

import optuna
import pytest
from click.testing import CliRunner

import hpsearch.api as hp
from hpsearch.cli import cli
from hpsearch.config import parse_study, stored_study_config
from hpsearch.errors import ConfigError
from hpsearch.records import ATTR_CONFIG


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _document(**data: object) -> dict:
    return {"data": {"dataset": "linreg", **data}, "training": {"epochs": 3}}


def test_a_study_file_scales_a_regression_target_as_it_scales_the_features():
    scaled = parse_study(_document(), "a")
    assert scaled.data.scale_target and scaled.as_dict()["data"]["scale_target"] is True
    assert not parse_study(_document(scale=False), "a").data.scale_target
    assert not parse_study(_document(scale_target=False), "a").data.scale_target
    assert parse_study(_document(scale=False, scale_target=True), "a").data.scale_target
    with pytest.raises(ConfigError, match=r"\[data\].scale_target must be bool; got 'yes'"):
        parse_study(_document(scale_target="yes"), "a")
    # Stored: the setting as recorded; a config stored without it trained on the raw target.
    assert stored_study_config(scaled.as_dict()).data.scale_target
    older = scaled.as_dict()
    del older["data"]["scale_target"]
    assert not stored_study_config(older).data.scale_target


def _forget_scale_target(url: str, name: str) -> None:
    """Make the stored config one that an hpsearch without target scaling stored."""
    study = optuna.load_study(study_name=name, storage=url)
    document = study.user_attrs[ATTR_CONFIG]
    del document["data"]["scale_target"]
    study.set_user_attr(ATTR_CONFIG, document)


def test_a_stored_classification_study_without_the_setting_resumes(write_study, tmp_path):
    path = write_study()
    url = f"sqlite:///{tmp_path / 's.db'}"
    options = ["--storage", url, "--engine", "reference", "--quiet"]
    assert run("optimize", "--study", str(path), "--trials", "2", *options).exit_code == 0
    _forget_scale_target(url, "small")
    again = run("optimize", "--study", str(path), "--trials", "3", *options)
    assert again.exit_code == 0, again.output
    assert "3 of 3 finished trials (ran 1 trials" in again.output


LINREG = """
seed = 5
[data]
dataset = "linreg"
options = {{ n = 200 }}
{scale_target}
[model]
kind = "linear"
[training]
epochs = 6
[search]
optimizers = ["sgd"]
schedulers = ["none"]
[sampler]
kind = "random"
[pruner]
kind = "none"
"""


def test_a_stored_regression_study_without_the_setting_keeps_its_raw_target(
        write_study, tmp_path):
    raw = write_study("lin", text=LINREG.format(scale_target="scale_target = false"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    options = ["--storage", url, "--engine", "reference", "--quiet"]
    assert run("optimize", "--study", str(raw), "--trials", "2", *options).exit_code == 0
    _forget_scale_target(url, "lin")
    # Its stored config trains on the raw target: trial 0 again, to the bit.
    again = run("train", "--study", "lin", "--trial", "0", "--storage", url)
    assert again.exit_code == 0, again.output
    assert "(identical)" in again.output
    # The study file without the setting now means a scaled target, but the stored study
    # resumes unchanged: on the raw target it trained on.
    scaled = write_study("lin", text=LINREG.format(scale_target=""))
    resumed = run("optimize", "--study", str(scaled), "--trials", "3", *options)
    assert resumed.exit_code == 0, resumed.output
    assert "3 of 3 finished trials (ran 1 trials" in resumed.output
    newest = run("train", "--study", "lin", "--trial", "2", "--storage", url)
    assert newest.exit_code == 0 and "(identical)" in newest.output, newest.output
    # A new study from that file scales its target.
    fresh = run("optimize", "--study", str(scaled), "--name", "lin2", "--trials", "1", *options)
    assert fresh.exit_code == 0, fresh.output
    stored = optuna.load_study(study_name="lin2", storage=url).user_attrs[ATTR_CONFIG]
    assert stored["data"]["scale_target"] is True


@pytest.mark.parametrize("engine", ["reference", "cohort"])
@pytest.mark.parametrize("folds", [1, 3])
def test_a_regression_trial_records_its_validation_rmse_in_the_targets_units(tmp_path, engine,
                                                                            folds):
    """The mean over its runs of each run's RMSE (each fold scales the target on its own
    training rows); reports show it next to the loss."""
    config = parse_study({**_document(options={"n": 300, "p": 3, "noise": 0.5, "seed": 0}),
                    "search": {"optimizers": ["sgd"], "schedulers": ["none"]},
                    "evaluation": {"folds": folds, "seeds": 1}, "pruner": {"kind": "none"}},
                   "reg")
    data = config.load_data()
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    study = hp.search(config, 3, storage=url, engine=engine).study
    for trial in study.trials:
        runs = trial.user_attrs.get("run_val_loss", [trial.value])
        expected = sum(math.sqrt(loss) * data.fold(k).preprocessing.target_scale
                       for k, loss in enumerate(runs)) / len(runs)
        assert trial.user_attrs["val_rmse"] == pytest.approx(expected, rel=1e-9)
    report = run("report", "--study", "reg", "--storage", url, "--top", "1")
    assert report.exit_code == 0, report.output
    header = next(line for line in report.output.splitlines() if line.startswith("rank "))
    assert header.split()[3:5] == ["value", "val_rmse"]
    assert "RMSE" in report.output
