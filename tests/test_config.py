"""Study files: the bundled studies load; every kind of bad file gets its one-line error."""

from __future__ import annotations

import pytest

from hpsearch.config import known_studies, load_study_config, parse_study
from hpsearch.errors import ConfigError


@pytest.mark.parametrize("name", ["wine", "linreg", "breast_cancer", "digits"])
def test_bundled_studies_load_and_round_trip_through_their_stored_form(name):
    config = load_study_config(name)
    assert config.name == name
    again = parse_study(config.as_dict(), default_name=name)
    assert again.as_dict() == config.as_dict()
    assert again.space.optimizers == config.space.optimizers


def test_wine_is_seed_004s_setup():
    config = load_study_config("wine")
    assert (config.data.dataset, config.training.epochs, config.training.batch_size) == (
        "wine", 100, 0)
    assert config.model.options["hidden"] == [10, 10]
    assert set(config.space.optimizers) >= {"sgd", "adam", "adamw", "rmsprop", "adagrad",
                                            "adadelta"}
    assert len(config.space.schedulers) == 9


def test_linreg_grid_is_seed_003s_scheduler_table():
    configurations = load_study_config("linreg").space.configurations()
    assert [c["scheduler"] for c in configurations] == [
        "none", "step", "cosine", "exponential", "plateau"]
    assert all(c["lr"] == 0.25 and c["optimizer"] == "sgd" for c in configurations)


def test_unknown_study_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        load_study_config("wien")
    assert str(error.value) == f"study 'wien' is unknown; known: {', '.join(known_studies())}"
    assert "wine" in known_studies()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed = \n", "invalid TOML: Invalid value (at line 1, column 8)"),
        ("[data]\ndataset = 'wine'\n[training]\nepoch = 3\n",
         "[training]: unknown key 'epoch'; known: epochs, batch_size"),
        ("[data]\ndataset = 'wines'\n",
         "[data].dataset 'wines' is unknown; known: wine, breast_cancer, digits, iris, linreg"),
        ("[training]\nepochs = 3\n", "missing table [data]"),
        ("[data]\ndataset = 'wine'\n[training]\nepochs = 0\n",
         "[training].epochs must be >= 1; got 0"),
        ("[data]\ndataset = 'wine'\n[training]\nepochs = 'ten'\n",
         "[training].epochs must be int; got 'ten'"),
        ("[data]\ndataset = 'wine'\n[search]\noptimizers = ['adamw', 'lion']\n",
         "optimizer must be one of sgd, adam, adamw, nadam, radam, adamax, rmsprop, adagrad, "
         "adadelta; got 'lion'"),
        ("[data]\ndataset = 'wine'\n[search]\nschedulers = ['cosin']\n",
         "scheduler must be one of none, step, multistep, exponential, cosine, plateau, lambda, "
         "onecycle, cosine_restarts; got 'cosin'"),
        ("[data]\ndataset = 'wine'\n[search.params]\nlr = { low = 1.0, high = 0.001 }\n",
         "lr: range is inverted (low 1 > high 0.001)"),
        ("[data]\ndataset = 'wine'\n[sampler]\nkind = 'bayes'\n",
         "[sampler].kind 'bayes' is unknown; known: tpe, random, grid"),
        ("[data]\ndataset = 'wine'\n[pruner]\nkind = 'median'\npercentile = 0\n",
         "[pruner].percentile must be > 0 and <= 100; got 0.0"),
        ("[data]\ndataset = 'wine'\n[sampler]\nkind = 'grid'\n",
         "the grid sampler needs a finite set of values for lr"),
        ("[data]\ndataset = 'wine'\nvalid_fraction = 0.5\ntest_fraction = 0.5\n",
         "valid_fraction + test_fraction must leave rows to train on; got 1"),
        ("[model]\nkind = 'transformer'\n[data]\ndataset = 'wine'\n",
         "[model].kind 'transformer' is unknown; known: mlp, linear"),
    ],
)
def test_bad_study_files_name_the_file_and_the_problem(write_study, text, message):
    path = write_study("bad", text=text)
    with pytest.raises(ConfigError) as error:
        load_study_config(str(path))
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_study_file():
    with pytest.raises(ConfigError, match=r"study file nowhere/x\.toml does not exist"):
        load_study_config("nowhere/x.toml")
