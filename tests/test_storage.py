"""Storage URLs: resolution order, masking, SQLite set up for concurrent readers."""

from __future__ import annotations

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
