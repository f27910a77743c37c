"""Shared fixtures: small real studies on real SQLite files (seconds, not minutes)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from hpsearch.config import load_study_config
from hpsearch.study import run_search

optuna.logging.set_verbosity(optuna.logging.WARNING)

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


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(storage URL, study name) of a finished 16-trial wine search: complete and pruned
    trials across several optimizers and schedulers. Shared: tests must not modify it."""
    folder = tmp_path_factory.mktemp("small_study")
    path = folder / "small.toml"
    path.write_text(SMALL_WINE.format(search=""))
    url = f"sqlite:///{folder / 'study.db'}"
    run_search(load_study_config(str(path)), url, 16)
    return url, "small"
