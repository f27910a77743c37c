"""A tuned model to keep and use: `hpsearch train --save` writes a model file, `hpsearch
predict` (and `hp.load_model(path).predict`) preprocesses new rows as the training rows were
and predicts them, in the data's own labels and units."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import hpsearch.api as hp
from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.data import REGRESSION
from hpsearch.errors import DataError

CHURN_CSV = Path(__file__).parent.parent / "studies" / "data" / "churn.csv"
ADAM = {"optimizer": "adam", "lr": "0.01"}
ADAM_SET = ["--set", "optimizer=adam", "--set", "lr=0.01"]
CHURN_COLUMNS = "tenure_months, contract, monthly_charge, support_calls, paperless"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _new_customers(tmp_path: Path) -> Path:
    """Five customers of the study's file, one with a missing monthly charge and a contract
    the training rows never had; with the target and a column the model never saw."""
    frame = pd.read_csv(CHURN_CSV).head(5).assign(note="extra")
    frame.loc[4, ["monthly_charge", "contract"]] = [np.nan, "lifetime"]
    path = tmp_path / "new.csv"
    frame.to_csv(path, index=False)
    return path


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool, torch.Tensor)


def test_a_saved_model_predicts_new_rows_as_the_trained_model_does(tmp_path):
    path = tmp_path / "churn.pt"
    saved = run("train", "--study", "churn", *ADAM_SET, "--save", str(path))
    assert saved.exit_code == 0, saved.output
    assert f"Saved the model (120 training rows) to {path}; " in saved.output
    params, trained = hp.train("churn", ADAM)
    loaded = hp.load_model(path)
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert loaded.params == params and loaded.train_rows == 120 and not loaded.refit
    rows = _new_customers(tmp_path)
    expected = trained.predict(rows)
    assert list(expected.columns) == ["prediction", "probability_no", "probability_yes"]
    assert set(expected.prediction) <= {"no", "yes"} and len(expected) == 5
    np.testing.assert_allclose(expected.iloc[:, 1:].sum(axis=1), 1.0, rtol=1e-12)
    assert (expected.prediction == np.where(expected.probability_yes > 0.5, "yes", "no")).all()
    pd.testing.assert_frame_equal(loaded.predict(rows), expected)  # bit for bit
    # The same rows as a DataFrame: the same predictions.
    pd.testing.assert_frame_equal(loaded.predict(pd.read_csv(rows)), expected)
    # The command: CSV on stdout, or to --out.
    printed = run("predict", "--model", str(path), "--data", str(rows))
    assert printed.exit_code == 0, printed.output
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(printed.output)), expected,
                                  check_exact=False, rtol=1e-15)
    out = tmp_path / "predictions.csv"
    written = run("predict", "--model", str(path), "--data", str(rows), "--out", str(out))
    assert written.output == f"Wrote 5 predictions to {out}.\n"
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(io.StringIO(printed.output)))


def test_new_rows_are_encoded_exactly_as_the_training_rows_were():
    data = load_study_config("churn").load_data(folds=1)
    preprocessing = data.preprocessing
    frame = pd.read_csv(CHURN_CSV)
    features = preprocessing.transform(frame)
    assert features.dtype == np.float32
    splits = torch.cat([data.train.features, data.valid.features, data.test.features]).numpy()
    # Every row of the file, the three with a missing charge included, as the splits have it.
    assert sorted(r.tobytes() for r in features) == sorted(r.tobytes() for r in splits)
    names = preprocessing.feature_names
    charge = names.index("monthly_charge")
    column = next(c for c in preprocessing.columns if c.name == "monthly_charge")
    row_of = {row.tobytes(): i for i, row in enumerate(features)}
    train_rows = [row_of[row.tobytes()] for row in data.train.features.numpy()]
    assert len(set(train_rows)) == 120
    assert column.fill == frame.monthly_charge.iloc[train_rows].median()  # the training rows'
    missing = frame.monthly_charge.isna().to_numpy()
    assert missing.sum() == 3
    filled = np.float32((column.fill - preprocessing.mean[charge]) / preprocessing.scale[charge])
    assert (features[missing, charge] == filled).all()
    # A contract the training rows never had encodes as all zeros.
    unseen = preprocessing.transform(frame.head(1).assign(contract="lifetime"))[0]
    contract = [i for i, name in enumerate(names) if name.startswith("contract=")]
    assert len(contract) == 3 and unseen[contract].tolist() == [0.0, 0.0, 0.0]


def test_the_model_file_is_plain_data_and_weights(tmp_path):
    params, trained = hp.train("churn", ADAM)
    path = trained.save(tmp_path / "churn.pt")
    document = torch.load(path, weights_only=True)
    assert _plain(document)
    assert document["format"] == "hpsearch-model" and document["format_version"] == 1
    assert document["study"] == load_study_config("churn").as_dict()
    assert document["params"] == params
    assert (document["seed"], document["epochs"], document["train_rows"], document["refit"],
            document["trial"], document["fold"]) == (7, 60, 120, False, None, None)
    assert [e["val_loss"] for e in document["history"]] == [
        s.val_loss for s in trained.result.history]
    preprocessing = document["preprocessing"]
    assert preprocessing["labels"] == ["no", "yes"]
    assert [c["name"] for c in preprocessing["columns"]] == CHURN_COLUMNS.split(", ")
    contract = preprocessing["columns"][1]
    assert contract == {"name": "contract", "kind": "categorical", "fill": "month-to-month",
                        "categories": ["month-to-month", "one-year", "two-year"]}
    assert set(document["state_dict"]) == set(trained.model.state_dict())


def test_a_missing_column_or_a_file_that_is_no_model_is_one_line(tmp_path):
    path = tmp_path / "churn.pt"
    assert run("train", "--study", "churn", *ADAM_SET, "--save", str(path)).exit_code == 0
    bad = tmp_path / "bad.csv"
    pd.read_csv(_new_customers(tmp_path)).drop(columns="tenure_months").to_csv(bad, index=False)
    result = run("predict", "--model", str(path), "--data", str(bad))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {bad}: no column 'tenure_months'; the model's input columns are "
        f"{CHURN_COLUMNS}"]
    text = tmp_path / "text.csv"
    pd.read_csv(CHURN_CSV).head(3).assign(support_calls="many").to_csv(text, index=False)
    result = run("predict", "--model", str(path), "--data", str(text))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {text}: column 'support_calls' is numeric but 3 values are not a number "
        "(e.g. 'many')"]
    result = run("predict", "--model", str(CHURN_CSV), "--data", str(bad))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: model file {CHURN_CSV} is not an hpsearch model file (it does not load with "
        "torch.load(path, weights_only=True))"]
    result = run("predict", "--model", str(tmp_path / "none.pt"), "--data", str(bad))
    assert result.output.splitlines() == [f"Error: model file {tmp_path / 'none.pt'} does "
                                          "not exist"]


def test_refit_trains_on_the_training_and_validation_rows(tmp_path):
    path = tmp_path / "refit.pt"
    result = run("train", "--study", "churn", *ADAM_SET, "--refit", "--save", str(path))
    assert result.exit_code == 0, result.output
    assert ("Refit on the training and validation rows together (160 rows): val_loss below is "
            "the loss on those same rows.") in result.output
    assert (f"Saved the model (160 training rows, refit on training + validation) to {path}"
            in result.output)
    refit = hp.load_model(path)
    assert refit.refit and refit.train_rows == 160 and len(refit.result.history) == 60
    document = torch.load(path, weights_only=True)
    assert document["refit"] is True and document["train_rows"] == 160
    # Its preprocessing is fit on the 160 rows: not the 120 of the training split.
    _, plain = hp.train("churn", ADAM)
    assert refit.preprocessing.mean[0] != plain.preprocessing.mean[0]
    assert refit.predict(CHURN_CSV).shape == (200, 3)


def test_a_stored_trial_saves_its_first_run_or_a_refit_for_the_epochs_it_ran(
        tmp_path, write_study):
    path = write_study(text=textwrap.dedent("""
        seed = 1
        [data]
        dataset = "wine"
        split_seed = 42
        [model]
        hidden = [8]
        [training]
        epochs = 8
        [search]
        optimizers = ["adam"]
        schedulers = ["none"]
        [sampler]
        kind = "random"
        [pruner]
        kind = "none"
        [evaluation]
        folds = 2
        seeds = 2
    """))
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run("optimize", "--study", str(path), "--trials", "2", "--storage", url, "--quiet",
               "--engine", "reference").exit_code == 0
    first = tmp_path / "first.pt"
    result = run("train", "--study", "small", "--trial", "1", "--storage", url, "--save",
                 str(first))
    assert result.exit_code == 0, result.output
    # Wine's 142 rows beside the test rows, in 2 folds: each run trains on 71.
    assert ("Saved the model (the first of 4 runs (fold 0, seed 1): 71 training rows) to "
            f"{first}") in result.output
    again = hp.retrain("small", 1, storage=url)
    saved = hp.load_model(first)
    assert (saved.trial, saved.fold, saved.seed) == (1, 0, 1)
    pd.testing.assert_frame_equal(saved.predict(_wine_csv(tmp_path)),
                                  again.runs[0].predict(_wine_csv(tmp_path)))


def test_the_refit_of_a_stored_trial_trains_for_the_epochs_it_ran(tmp_path, small_study):
    url, name = small_study
    pruned = next(t for t in optuna.load_study(study_name=name, storage=url).trials
                  if t.state == optuna.trial.TrialState.PRUNED
                  and t.user_attrs["end_reason"] == "pruned")
    epochs = pruned.user_attrs["epochs_run"]
    assert epochs < 12
    refit = tmp_path / "refit.pt"
    result = run("train", "--study", name, "--trial", str(pruned.number), "--storage", url,
                 "--refit", "--save", str(refit))
    assert result.exit_code == 0, result.output
    seed = pruned.user_attrs["seed"]
    assert f"(pruned, refit: seed {seed}, {epochs} epochs)" in result.output
    assert "stored validation loss" not in result.output
    document = torch.load(refit, weights_only=True)
    # Wine's 178 rows less 36 for test.
    assert (document["refit"], document["train_rows"], document["epochs"], document["trial"],
            document["seed"]) == (True, 142, epochs, pruned.number, seed)


def _wine_csv(tmp_path: Path) -> Path:
    """Wine as scikit-learn's DataFrame writes it: the feature names, and `target`."""
    from sklearn.datasets import load_wine

    path = tmp_path / "wine.csv"
    if not path.exists():
        load_wine(as_frame=True).frame.to_csv(path, index=False)
    return path


def test_a_builtin_dataset_predicts_rows_named_by_scikit_learns_feature_names(tmp_path):
    _, trained = hp.train("wine", ADAM)
    model = trained.save(tmp_path / "wine.pt")
    result = run("predict", "--model", str(model), "--data", str(_wine_csv(tmp_path)))
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(io.StringIO(result.output))
    assert list(predicted.columns) == ["prediction", "probability_0", "probability_1",
                                       "probability_2"]
    truth = pd.read_csv(_wine_csv(tmp_path)).target
    assert len(predicted) == 178 and (predicted.prediction == truth).mean() > 0.9
    frame = hp.load_model(model).predict(_wine_csv(tmp_path))
    assert frame.prediction.dtype == np.int64  # wine's labels are the integers 0, 1, 2
    # A built-in dataset's study fills no missing value.
    gap = pd.read_csv(_wine_csv(tmp_path)).head(2)
    gap.loc[0, "hue"] = np.nan
    with pytest.raises(DataError, match="column 'hue' has 1 missing values, and the study "
                                        "fills none"):
        hp.load_model(model).predict(gap)


def _regression_csv(tmp_path: Path, n: int = 150) -> Path:
    """y in its own units (mean about 100, spread about 30): a linear function of x and
    the colour, with noise; every x distinct."""
    rng = np.random.default_rng(5)
    x = rng.permutation(n) / n * 10
    color = rng.choice(["red", "green", "blue"], n)
    y = 60 + 8 * x + 15 * (color == "red") + rng.normal(0, 2, n)
    path = tmp_path / "values.csv"
    pd.DataFrame({"x": x, "color": color, "y": y.round(4)}).to_csv(path, index=False)
    return path


def test_a_regression_model_predicts_in_the_targets_own_units(tmp_path, write_study):
    csv = _regression_csv(tmp_path)
    study = write_study("values", text=f"""
        seed = 2
        [data]
        path = "{csv}"
        target = "y"
        [model]
        hidden = [16]
        [training]
        epochs = 150
        [search]
        optimizers = ["adam"]
        schedulers = ["none"]
        [sampler]
        kind = "random"
        [pruner]
        kind = "none"
    """)
    config = load_study_config(str(study))
    assert config.data.scale_target
    model = tmp_path / "values.pt"
    result = run("train", "--study", str(study), "--set", "optimizer=adam", "--set",
                 "lr=0.03", "--save", str(model))
    assert result.exit_code == 0, result.output
    rmse_line = next(line for line in result.output.splitlines() if line.startswith("RMSE"))
    assert rmse_line.startswith("RMSE on the validation split, in the target's units: ")
    assert rmse_line.endswith(" (the losses above are of the standardized target)")
    loaded = hp.load_model(model)
    assert loaded.preprocessing.task == REGRESSION
    frame = pd.read_csv(csv)
    predicted = loaded.predict(csv)
    assert list(predicted.columns) == ["prediction"]
    # The validation rows' predictions, in y's units, give the RMSE the command printed.
    data = config.load_data(folds=1)
    features = loaded.preprocessing.transform(frame)
    row_of = {row.tobytes(): i for i, row in enumerate(features)}
    valid = [row_of[row.tobytes()] for row in data.valid.features.numpy()]
    errors = predicted.prediction.to_numpy()[valid] - frame.y.to_numpy()[valid]
    rmse = float(np.sqrt(np.mean(errors ** 2)))
    assert rmse == pytest.approx(float(rmse_line.split(": ")[1].split()[0]), rel=1e-4)
    assert rmse == pytest.approx(loaded.preprocessing.rmse(loaded.result.last.val_loss),
                                 rel=1e-4)
    assert 1.0 < rmse < 6.0  # the noise is 2: it learned y, in y's units
    assert frame.y.std() > 20
