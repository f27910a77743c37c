"""Storage URLs: resolution order, masking, SQLite set up for concurrent readers, the storages
that must exist; the readers' storage (the dashboard's) read against Optuna's own."""

from __future__ import annotations

import math
import sqlite3

import optuna
import pytest

from hpsearch.errors import StorageError
from hpsearch.storage.urls import (
    DEFAULT_STORAGE,
    mask_url,
    open_storage,
    reopen_storage,
    resolve_storage_url,
)
from hpsearch.storage.write_through import WriteThroughStorage


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE == "sqlite:///hpsearch.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", "sqlite:///env.db")
    assert resolve_storage_url(None) == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///flag.db") == "sqlite:///flag.db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://ann:s3cret@db.example/hp", "postgresql+psycopg://ann:***@db.example/hp"),
        ("mysql+pymysql://root@127.0.0.1/test", "mysql+pymysql://root@127.0.0.1/test"),
        ("sqlite:///hpsearch.db", "sqlite:///hpsearch.db"),
    ],
)
def test_passwords_are_masked(url, shown):
    assert mask_url(url) == shown


def test_sqlite_files_are_switched_to_wal(tmp_path):
    path = tmp_path / "w.db"
    open_storage(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_worker_that_cannot_reopen_its_searchs_storage_says_it_was_lost(tmp_path):
    """The parent opened it before starting the worker: gone now is lost, whichever moment the
    worker reaches it (a database dropped just before a worker starts reads as one dropped
    mid-run)."""
    url = f"sqlite:///{tmp_path / 'gone' / 'x.db'}"
    with pytest.raises(StorageError) as raised:
        reopen_storage(url)
    assert str(raised.value) == \
        f"lost the storage {url}: folder {tmp_path / 'gone'} does not exist"


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StorageError, match="file is not a database"):
        open_storage(f"sqlite:///{path}")
    assert path.read_text().startswith("these are my notes")


def test_a_database_of_an_older_optuna_schema_is_refused_with_optunas_advice(tmp_path):
    # hpsearch runs Optuna's schema check itself (its newest revision read once per process):
    # a current database opens, and an older one fails as Optuna's check would, untouched.
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    open_storage(url)
    open_storage(url)  # current schema: opens again
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    with pytest.raises(StorageError, match="optuna storage upgrade"):
        open_storage(url)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("v3.0.0.d",)]


def test_a_read_only_opening_reads_without_writing_and_never_creates_a_file(tmp_path):
    path = tmp_path / "r.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}").optimize(
        lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    before = path.read_bytes()
    path.chmod(0o444)  # a file the user may not write
    storage = open_storage(f"sqlite:///{path}", write_behind=False, read_only=True)
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 2
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.set_user_attr("written", True)  # refused by SQLite itself
    assert path.read_bytes() == before
    typo = tmp_path / "typo.db"
    with pytest.raises(StorageError) as raised:
        open_storage(f"sqlite:///{typo}", read_only=True)
    assert str(raised.value) == f"cannot open storage sqlite:///{typo}: no such file"
    assert not typo.exists()
    with pytest.raises(StorageError, match="is a folder, not a database file"):
        open_storage(f"sqlite:///{tmp_path}", read_only=True)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_sqlite_storage_that_must_exist_is_a_file_holding_optunas_tables(tmp_path, read_only):
    def refused(path) -> str:
        with pytest.raises(StorageError) as raised:
            open_storage(f"sqlite:///{path}", must_exist=not read_only, read_only=read_only)
        return str(raised.value)

    typo = tmp_path / "typo.db"
    assert refused(typo) == f"cannot open storage sqlite:///{typo}: no such file"
    assert not typo.exists()
    assert refused(tmp_path) == (f"cannot open storage sqlite:///{tmp_path}: is a folder, not "
                                 "a database file")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE things (id INTEGER)")
    assert refused(other) == (f"cannot open storage sqlite:///{other}: it is not an Optuna "
                              "storage (it has no studies table)")
    with sqlite3.connect(other) as connection:  # no Optuna tables added
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master")] == ["things"]
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database, just text that is long enough to be read" * 20)
    assert refused(garbage) == f"cannot open storage sqlite:///{garbage}: file is not a database"


def _study_of_every_kind_of_trial(url: str, name: str) -> tuple[optuna.Study, int]:
    """A study (on Optuna's own storage) with complete, pruned, failed, waiting and running
    trials, every kind of distribution, non-finite intermediate values, user and system attrs;
    returns it and its running trial's number."""
    study = optuna.create_study(study_name=name, storage=url)
    study.set_user_attr("config", {"seed": 1})
    for number in range(6):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.suggest_int("layers", 1, 4)
        if trial.suggest_categorical("optimizer", ["sgd", "adam", None]) == "sgd":
            trial.suggest_float("momentum", 0.0, 0.99, step=0.01)
        for step, value in enumerate([1.0, 0.5, float("inf"), float("nan"), -0.25][:number]):
            trial.report(value, step)
        trial.set_user_attr("lr_curve", [0.1 * number, 0.05])
        trial.set_user_attr("end_reason", None if number % 2 else "pruned")
        trial.storage.set_trial_system_attr(trial._trial_id, "worker", f"w{number}")
        if number == 1:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif number == 2:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif number < 5:
            study.tell(trial, 1.0 / (number + 1))
    study.enqueue_trial({"lr": 0.01, "layers": 2, "optimizer": "adam"})
    return study, 5


def fields(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Every field of each trial, its dicts in key order, as text: a NaN equals a NaN."""
    return [repr({key: sorted(value.items()) if isinstance(value, dict) else value
                  for key, value in vars(trial).items()}) for trial in trials]


def _rdb_url(request, database: str, tmp_path) -> str:
    if database == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return request.getfixturevalue(database)


@pytest.mark.parametrize("database", ["sqlite", "postgres_url", "mariadb_url"])
def test_the_readers_storage_reads_trials_as_optuna_does_and_sees_every_commit(
        request, database, tmp_path):
    url = _rdb_url(request, database, tmp_path)
    name = f"every-kind-{tmp_path.name}"
    study, running = _study_of_every_kind_of_trial(url, name)
    optunas = optuna.storages.RDBStorage(url)
    reader = open_storage(url, write_behind=False)
    assert isinstance(reader, WriteThroughStorage)
    study_id = reader.get_study_id_from_name(name)

    def same_trials() -> list[optuna.trial.FrozenTrial]:
        ours = reader.get_all_trials(study_id, deepcopy=False)
        assert fields(ours) == fields(optunas.get_all_trials(study_id))
        assert [t.number for t in ours] == list(range(len(ours)))
        return ours

    trials = same_trials()
    assert {t.state for t in trials} == set(optuna.trial.TrialState)
    assert trials[4].intermediate_values[2] == float("inf")
    assert math.isnan(trials[4].intermediate_values[3])
    assert trials[0].distributions["optimizer"].choices == ("sgd", "adam", None)

    # Written after the reader opened: the running trial goes on and ends, a new one starts.
    live = optuna.Trial(study, optunas.get_trial_id_from_study_id_trial_number(
        study_id, running))
    live.report(0.125, 10)
    assert same_trials()[running].intermediate_values[10] == 0.125
    study.tell(live, 0.0625)
    started = study.ask()
    started.suggest_float("lr", 1e-4, 1.0, log=True)
    trials = same_trials()
    assert trials[running].value == 0.0625 and trials[-1].number == started.number
    assert fields(reader.get_all_trials(study_id, states=[optuna.trial.TrialState.RUNNING])) \
        == fields([optunas.get_trial(started._trial_id)])

    # What the reader writes is in the database at once, as another process reads it.
    reader.set_trial_user_attr(started._trial_id, "seen", True)
    reader.set_study_system_attr(study_id, "dashboard:note", "hello")
    fresh = optuna.storages.RDBStorage(url)
    assert fresh.get_trial(started._trial_id).user_attrs["seen"] is True
    assert fresh.get_study_system_attrs(study_id)["dashboard:note"] == "hello"
    same_trials()
    with pytest.raises(KeyError):
        reader.get_all_trials(study_id + 1000)


def test_the_readers_storage_sees_a_study_made_again_under_the_same_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'again.db'}"
    first = optuna.create_study(study_name="s", storage=url)
    first.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    reader = open_storage(url, write_behind=False)
    study_id = reader.get_study_id_from_name("s")
    assert len(reader.get_all_trials(study_id)) == 3
    optuna.delete_study(study_name="s", storage=url)
    again = optuna.create_study(study_name="s", storage=url)
    again.optimize(lambda trial: trial.suggest_int("n", 0, 9), n_trials=2)
    assert reader.get_study_id_from_name("s") == study_id  # SQLite reused the ids
    assert [t.params.keys() for t in reader.get_all_trials(study_id)] == [{"n"}, {"n"}]
    assert fields(reader.get_all_trials(study_id)) == fields(
        optuna.storages.RDBStorage(url).get_all_trials(study_id))


def test_a_read_only_opening_reads_the_file_it_names_whatever_characters_its_path_has(tmp_path):
    """A space or `#` in the path (a SQLite URI would end at the `#`)."""
    path = tmp_path / "odd dir#1" / "r.db"
    path.parent.mkdir()
    optuna.create_study(study_name="odd", storage=f"sqlite:///{path}")
    storage = open_storage(f"sqlite:///{path}", write_behind=False, read_only=True)
    assert [s.study_name for s in storage.get_all_studies()] == ["odd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd dir#1"]  # nothing else made
