"""Your own data: CSV and Parquet files as a study's dataset, end to end through the command, and
one clear line for each kind of bad file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from hpsearch.cli import cli
from hpsearch.config import load_study_config, parse_study
from hpsearch.data import CLASSIFICATION, REGRESSION, TableSource, load_table
from hpsearch.errors import ConfigError, DataError


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _customers(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Numbers, a text column, a yes/no column, an id; `label` depends on the features and
    `spend` is a noisy linear function of them."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    plan = rng.choice(["basic", "plus", "pro"], n)
    visits = rng.poisson(3, n)
    spend = 0.5 * age + 10 * (plan == "pro") + 2 * visits + rng.normal(0, 1, n)
    label = np.where(spend > np.median(spend), "high", "low")
    return pd.DataFrame({"id": [f"u{i}" for i in range(n)], "age": age, "plan": plan,
                         "visits": visits, "member": rng.choice([True, False], n),
                         "spend": spend.round(3), "label": label})


def _study(folder: Path, data: str, epochs: int = 15) -> Path:
    path = folder / "mine.toml"
    path.write_text(textwrap.dedent(f"""
        seed = 3
        [data]
        {textwrap.dedent(data).strip()}
        [model]
        kind = "mlp"
        hidden = [16]
        [training]
        epochs = {epochs}
        [search]
        optimizers = ["adam", "sgd"]
        schedulers = ["none", "cosine"]
        [sampler]
        kind = "random"
        [pruner]
        kind = "none"
    """))
    return path


@pytest.mark.parametrize(("target", "task", "accuracy"), [
    ("label", CLASSIFICATION, True), ("spend", REGRESSION, False)])
def test_a_csv_study_runs_end_to_end_through_the_command(tmp_path, target, task, accuracy):
    _customers().to_csv(tmp_path / "customers.csv", index=False)
    path = _study(tmp_path, f"""
        path = "customers.csv"
        target = "{target}"
        drop = ["id"{', "spend"' if target == "label" else ', "label"'}]
    """)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = run("optimize", "--study", str(path), "--trials", "4", "--storage", url,
                 # Bit-for-bit re-training below is the reference engine's promise (the
                 # cohort engine's is within float32 rounding: tests/test_cohort_search.py).
                 "--engine", "reference")
    assert result.exit_code == 0, result.output
    assert "4 of 4 finished trials" in result.output
    assert ("validation accuracy" in result.output) is accuracy
    study = optuna.load_study(study_name="mine", storage=url)
    assert len(study.trials) == 4 and study.best_value > 0
    stored = parse_study(study.user_attrs["hpsearch_config"], default_name="mine")
    assert stored.data.table.target == target
    assert stored.load_data().task == task
    # The stored study re-trains trial 0 exactly from its stored config.
    again = run("train", "--study", "mine", "--trial", "0", "--storage", url)
    assert again.exit_code == 0, again.output
    assert "(identical)" in again.output
    # And the same command resumes it (same config, same data fingerprint).
    more = run("optimize", "--study", str(path), "--trials", "5", "--storage", url,
               "--engine", "reference")
    assert "5 of 5 finished trials (ran 1 trials" in more.output


def test_text_is_one_hot_numbers_are_scaled_on_train_and_the_split_is_stratified(tmp_path):
    _customers().to_csv(tmp_path / "c.csv", index=False)
    source = TableSource(str(tmp_path / "c.csv"), "label", drop=("id", "spend"))
    data = load_table(source, valid_fraction=0.25, test_fraction=0.25, split_seed=1)
    assert data.task == CLASSIFICATION and data.classes == ("high", "low")
    assert data.feature_names == ("age", "plan=basic", "plan=plus", "plan=pro", "visits",
                                  "member")
    assert (len(data.train), len(data.valid), len(data.test)) == (60, 30, 30)
    train = data.train.features
    numeric = [0, 4, 5]
    assert torch.allclose(train[:, numeric].mean(dim=0), torch.zeros(3), atol=1e-5)
    one_hot = train[:, 1:4]
    assert set(one_hot.flatten().tolist()) == {0.0, 1.0}
    assert torch.equal(one_hot.sum(dim=1), torch.ones(60))  # each row is in one plan
    for split in (data.train, data.valid, data.test):
        counts = torch.bincount(split.target, minlength=2)
        assert counts[0] == counts[1]  # 60 high, 60 low: stratified halves everywhere
    again = load_table(source, valid_fraction=0.25, test_fraction=0.25, split_seed=1)
    other = load_table(source, valid_fraction=0.25, test_fraction=0.25, split_seed=2)
    assert data.fingerprint == again.fingerprint != other.fingerprint


@pytest.mark.parametrize(("column", "task"), [
    ("label", CLASSIFICATION), ("spend", REGRESSION), ("stars", CLASSIFICATION),
    ("age", REGRESSION)])
def test_the_task_is_inferred_from_the_target(tmp_path, column, task):
    # Text: classes; fractional numbers: regression; integers: classes if at most 20 values.
    frame = _customers()
    frame["stars"] = np.arange(len(frame)) % 5 + 1
    frame.to_csv(tmp_path / "c.csv", index=False)
    assert load_table(TableSource(str(tmp_path / "c.csv"), column, drop=("id",))).task == task


def test_a_stated_task_wins_over_the_inference(tmp_path):
    _customers().to_csv(tmp_path / "c.csv", index=False)
    data = load_table(TableSource(str(tmp_path / "c.csv"), "visits", task=REGRESSION,
                                  drop=("id",)))
    assert data.task == REGRESSION and data.train.target.dtype == torch.float32


@pytest.mark.parametrize("impute", ["mean", "median", "most_frequent"])
def test_missing_values_are_imputed_from_the_training_split_only(tmp_path, impute):
    frame = pd.DataFrame({"x": [1.0, 2.0, 2.0, 9.0, None] * 8,
                          "color": ["red", "red", "blue", None, "blue"] * 8,
                          "y": ["a", "b"] * 20})
    frame.to_csv(tmp_path / "m.csv", index=False)
    source = TableSource(str(tmp_path / "m.csv"), "y", impute=impute)
    data = load_table(source, scale=False, split_seed=0)
    splits = [data.train, data.valid, data.test]
    features = torch.cat([split.features for split in splits])
    assert len(features) == 40 and not torch.isnan(features).any()  # no row dropped
    known = {1.0, 2.0, 9.0}
    filled = set(features[:, 0].tolist()) - known
    if impute == "mean":
        # One fill value everywhere: the mean of the training split's known values.
        train_x = data.train.features[:, 0]
        train_known = train_x[torch.isin(train_x, torch.tensor(sorted(known)))]
        assert len(filled) == 1
        assert filled.pop() == pytest.approx(train_known.mean().item())
    else:
        assert filled == set()  # the median and the most frequent value are both 2
        assert (features[:, 0] == 2.0).sum() == 16 + 8
    # The text column's missing values take its most frequent category: still one-hot.
    assert data.feature_names == ("x", "color=blue", "color=red")
    assert torch.equal(features[:, 1:].sum(dim=1), torch.ones(40))


def test_parquet_files_load_like_csv(tmp_path):
    pytest.importorskip("pyarrow")
    frame = _customers()
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_parquet(tmp_path / "c.parquet")
    from_csv = load_table(TableSource(str(tmp_path / "c.csv"), "label", drop=("id",)))
    from_parquet = load_table(TableSource(str(tmp_path / "c.parquet"), "label", drop=("id",)))
    assert from_csv.fingerprint == from_parquet.fingerprint


def _bad(tmp_path: Path, frame: pd.DataFrame | str, name: str = "bad.csv",
         **source: object) -> str:
    path = tmp_path / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        load_table(TableSource(str(path), **{"target": "y", **source}))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_missing_file_or_target_column(tmp_path):
    with pytest.raises(DataError, match=r"data file .*nowhere\.csv does not exist"):
        load_table(TableSource(str(tmp_path / "nowhere.csv"), "y"))
    message = _bad(tmp_path, pd.DataFrame({"a": [1, 2], "b": [3, 4]}))
    assert message.endswith("bad.csv: no target column 'y'; columns: a, b")
    message = _bad(tmp_path, pd.DataFrame({"a": [1, 2], "y": [3, 4]}), drop=("c",))
    assert message.endswith("no column 'c' to drop; columns: a, y")
    assert _bad(tmp_path, "", name="empty.csv").endswith("empty.csv: the file is empty")
    assert "must end in .csv, .tsv or .parquet" in _bad(tmp_path, "a,y\n1,2\n", name="d.xlsx")


def test_a_target_with_one_class_or_too_few_rows_of_a_class(tmp_path):
    message = _bad(tmp_path, pd.DataFrame({"x": range(10), "y": ["yes"] * 10}))
    assert message.endswith("target column 'y' has one class ('yes') in 10 rows; "
                            "classification needs at least two")
    message = _bad(tmp_path, pd.DataFrame({"x": range(10), "y": ["a"] * 8 + ["b"] * 2}))
    assert message.endswith("class 'b' of target column 'y' has 2 rows; a stratified "
                            "train/valid/test split needs at least 3 per class")


def test_a_target_that_does_not_fit_the_task(tmp_path):
    frame = pd.DataFrame({"x": range(10), "y": ["a", "b"] * 5})
    message = _bad(tmp_path, frame, task=REGRESSION)
    assert message.endswith("target column 'y' holds text (e.g. 'a'); regression needs "
                            "numbers: use task = \"classification\"")
    frame = pd.DataFrame({"x": range(10), "y": [0.5, 1.5] * 5})
    message = _bad(tmp_path, frame, task=CLASSIFICATION)
    assert "holds non-integer numbers (e.g. 0.5) that can't be class labels" in message


def test_values_that_cannot_be_encoded(tmp_path):
    frame = pd.DataFrame({"age": ["31", "45", "abc", "52", "28", "39"], "y": [0, 1] * 3})
    message = _bad(tmp_path, frame)
    assert message.endswith("column 'age' is numeric but 1 value is not a number ('abc' on "
                            "line 4); fix them, leave them empty and set impute, or drop the "
                            "column (drop = [\"age\"])")
    frame = pd.DataFrame({"name": [f"n{i}" for i in range(60)], "y": [0, 1] * 30})
    message = _bad(tmp_path, frame)
    assert message.endswith("column 'name' has 60 distinct text values (more than "
                            "max_categories = 50): it looks like free text or an id; drop it "
                            "(drop = [\"name\"]) or raise max_categories")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"when": pd.date_range("2024-01-01", periods=6), "y": [0, 1] * 3})
    frame.to_parquet(tmp_path / "dates.parquet")
    with pytest.raises(DataError, match="column 'when' holds dates or times"):
        load_table(TableSource(str(tmp_path / "dates.parquet"), "y"))


def test_missing_values_are_named_by_column_and_count_never_dropped(tmp_path):
    frame = pd.DataFrame({"a": [1.0, None, 3.0, None, 5.0, 6.0], "b": ["x", "y", None] * 2,
                          "c": range(6), "y": [0, 1] * 3})
    message = _bad(tmp_path, frame)
    assert message.endswith(
        "missing values in 2 feature columns: a (2), b (2); set [data] impute = \"mean\", "
        "\"median\" or \"most_frequent\" to fill them from the training split (text columns "
        "take the most frequent), or fix the file")
    frame = pd.DataFrame({"a": range(6), "y": [0, 1, None, 1, None, 0]})
    message = _bad(tmp_path, frame, impute="mean")
    assert message.endswith("target column 'y' has 2 missing values (lines 4, 6); hpsearch "
                            "never drops rows: fill or remove them in the file")


@pytest.mark.parametrize(("data", "message"), [
    ('dataset = "wine"\npath = "x.csv"\ntarget = "y"',
     "[data]: give dataset (a registered one) or path (a CSV or Parquet file), not both"),
    ('path = "x.csv"', "[data]: missing key 'target' (the column to predict)"),
    ('path = "x.csv"\ntarget = "y"\nimpute = "zero"',
     "[data].impute 'zero' is unknown; known: mean, median, most_frequent"),
    ('path = "x.csv"\ntarget = "y"\ntask = "ranking"',
     "[data].task 'ranking' is unknown; known: auto, classification, regression"),
    ('path = "x.csv"\ntarget = "y"\noptions = { n = 3 }', "[data]: unknown key 'options'"),
    ('split_seed = 1', "[data]: missing key 'dataset' (one of wine,"),
])
def test_bad_data_tables_in_study_files(tmp_path, data, message):
    path = _study(tmp_path, data)
    with pytest.raises(ConfigError) as error:
        load_study_config(str(path))
    assert message in str(error.value) and str(error.value).startswith(str(path))


def test_a_relative_path_is_relative_to_the_study_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    _customers().to_csv(tmp_path / "data" / "c.csv", index=False)
    path = _study(tmp_path, 'path = "data/c.csv"\ntarget = "label"\ndrop = ["id"]')
    monkeypatch.chdir(Path(__file__).parent)
    config = load_study_config(str(path))
    assert config.data.table.path == str(tmp_path / "data" / "c.csv")
    assert config.data.dataset == "c.csv"
    assert config.load_data().n_features == 7
    assert parse_study(config.as_dict(), "mine").as_dict() == config.as_dict()


def test_the_bundled_csv_study_loads_its_file():
    config = load_study_config("churn")
    data = config.load_data()
    assert (data.task, data.classes, len(data.train) + len(data.valid) + len(data.test)) == (
        CLASSIFICATION, ("no", "yes"), 200)
    assert "customer_id" not in " ".join(data.feature_names)
    assert "contract=two-year" in data.feature_names
