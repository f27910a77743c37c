"""Shared fixtures: small real studies on real SQLite files (seconds, not minutes)."""

from __future__ import annotations

import contextlib
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch

from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE
from hpsearch.search.run import run_search

optuna.logging.set_verbosity(optuna.logging.WARNING)
# As `hpsearch optimize` does: results (and re-trained trials) are bit for bit the same only
# with the same thread count, whatever order the tests run in.
torch.set_num_threads(1)

# The engines a search can run with: tests of what every search does run over both.
SEARCH_ENGINES = (REFERENCE, COHORT)

# The wine study, cut down: 12 epochs, pruning from the 3rd finished trial and the 3rd epoch.
SMALL_WINE = """
description = "wine, cut down for tests"
seed = 1

[data]
dataset = "wine"
split_seed = 42

[model]
kind = "mlp"
hidden = [10, 10]

[training]
epochs = 12

[search]
{search}

[sampler]
kind = "tpe"
startup_trials = 4

[pruner]
kind = "median"
startup_trials = 3
warmup_epochs = 3
"""


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a study file; `search` is the body of its [search] table."""

    def write(name: str = "small", search: str = "", text: str | None = None) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(textwrap.dedent(text) if text is not None
                        else SMALL_WINE.format(search=textwrap.dedent(search)))
        return path

    return write


def _small_search(folder: Path, engine: str, **options: int) -> tuple[str, str]:
    path = folder / "small.toml"
    path.write_text(SMALL_WINE.format(search=""))
    url = f"sqlite:///{folder / 'study.db'}"
    run_search(load_study_config(str(path)), url, 16, engine=engine, **options)
    return url, "small"


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(storage URL, study name) of a finished 16-trial wine search by the reference engine:
    complete and pruned trials across several optimizers and schedulers. Shared: tests must
    not modify it."""
    return _small_search(tmp_path_factory.mktemp("small_study"), REFERENCE)


@pytest.fixture(scope="session")
def cohort_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(storage URL, study name) of `small_study`'s search run by the cohort engine, 5 trials
    at a time. Shared: tests must not modify it."""
    return _small_search(tmp_path_factory.mktemp("cohort_study"), COHORT, cohort_size=5)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to `dtype` inside (float64 equivalence tests)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def skip_unless(available: bool, what: str) -> None:
    """Skip a test whose real component is missing, saying what is missing; in CI
    (HPSEARCH_REQUIRE_SERVICES=1) fail instead, so that such tests can't silently not run."""
    if available:
        return
    if os.environ.get("HPSEARCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} (required: HPSEARCH_REQUIRE_SERVICES=1)")
    pytest.skip(what)


def _fresh_database(kind: str) -> Iterator[str]:
    """Create `hpsearch_test_<random>` on the local server of `kind` for this test run, yield
    its SQLAlchemy URL, drop it at the end. Skips (fails in CI) when the server is missing."""
    name = f"hpsearch_test_{uuid.uuid4().hex[:12]}"
    try:
        if kind == "postgres":
            import psycopg

            admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                                    autocommit=True, connect_timeout=3)
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        else:
            import pymysql

            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                    connect_timeout=3, autocommit=True)
            url = f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    except Exception as exc:  # a missing driver or server: both mean "not available here"
        where = "PostgreSQL at 127.0.0.1:5432" if kind == "postgres" else \
            "MariaDB at 127.0.0.1:3306"
        skip_unless(False, f"{where} is not available: {str(exc).splitlines()[0]}")
    with admin:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        try:
            yield url
        finally:
            drop = "WITH (FORCE)" if kind == "postgres" else ""
            # IF EXISTS: a test may have dropped it (a database lost mid-search).
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} {drop}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test run (dropped at the end)."""
    yield from _fresh_database("postgres")


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """URL of a fresh MariaDB database for this test run (dropped at the end)."""
    yield from _fresh_database("mariadb")
