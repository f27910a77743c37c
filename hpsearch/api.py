"""hpsearch from Python (a notebook, a script): the commands as functions that return objects.

    import hpsearch.api as hp

    study = hp.optimize("wine", trials=50)                  # a name, a path, a dict or a config
    frame = hp.trials_frame(study)                          # one row per trial (pandas)
    hp.leaderboard(frame, top=10)
    hp.summary(frame, "scheduler")                          # or "optimizer", "pair"
    print(hp.verdict(frame))
    params, run = hp.train("wine", {"optimizer": "adam", "lr": 0.01})
    study = hp.load("wine")                                 # a stored study, later
    print(hp.confirm("wine", top=3, seeds=10).analysis.verdict)  # re-train over seeds

Every function takes `storage` like `--storage` (default: $HPSEARCH_STORAGE, else
sqlite:///hpsearch.db) and `device` like `--device` (default "auto": the GPU if there is one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch.config import StudyConfig, load_study_config, parse_study
from hpsearch.confirm import ConfirmOutcome, run_confirmation
from hpsearch.errors import ConfigError
from hpsearch.params import Value
from hpsearch.report import leaderboard, param_importances, summary, trials_frame, verdict
from hpsearch.storage.urls import resolve_storage_url
from hpsearch.studies import Retrained, load_stored_study, retrain_trial, run_search, stored_config
from hpsearch.training import TrainedRun, train_single

__all__ = [
    "StudyLike", "config", "confirm", "leaderboard", "load", "optimize", "param_importances",
    "retrain",
    "stored", "summary", "train", "trials_frame", "verdict",
]

# A study as the API takes it: a StudyConfig, a study name (studies/NAME.toml), a path to a
# .toml file, or a study document (the TOML file's tables as a dict).
StudyLike = StudyConfig | str | os.PathLike | Mapping[str, Any]


def config(study: StudyLike, name: str | None = None) -> StudyConfig:
    """The validated StudyConfig of `study`, renamed to `name` if given. A dict is checked
    like a study file; its relative data path is relative to the current folder."""
    if isinstance(study, StudyConfig):
        resolved = study
    elif isinstance(study, Mapping):
        resolved = parse_study(study, default_name=str(study.get("name", "study")),
                               source="study document", base_dir=Path.cwd())
    elif isinstance(study, str | os.PathLike):
        resolved = load_study_config(os.fspath(study))
    else:
        raise ConfigError(f"a study must be a StudyConfig, a name, a path or a dict; "
                          f"got {type(study).__name__}")
    return resolved.renamed(name) if name else resolved


def optimize(
    study: StudyLike, trials: int = 100, *, storage: str | None = None,
    name: str | None = None, workers: int = 1, device: str | torch.device = "auto",
) -> optuna.Study:
    """Run (or resume) the search until the study has `trials` finished trials; returns the
    Optuna study, read afresh from the storage (`hpsearch optimize`)."""
    outcome = run_search(config(study, name), resolve_storage_url(storage), trials,
                         workers=workers, device=device)
    return outcome.study


def load(name: str, storage: str | None = None) -> optuna.Study:
    """A stored study by name (a StorageError lists the studies the storage has)."""
    return load_stored_study(name, resolve_storage_url(storage))


def stored(study: optuna.Study) -> StudyConfig:
    """The config a stored study was created from."""
    return stored_config(study)


def train(
    study: StudyLike, params: Mapping[str, Any] | None = None, *, seed: int | None = None,
    device: str | torch.device = "auto",
) -> tuple[dict[str, Value], TrainedRun]:
    """Train one configuration: `params` (values or strings), the study's fixed values, the
    defaults for the rest (`hpsearch train --set`). Returns the parameters and the run
    (its per-epoch history and the trained model)."""
    return train_single(config(study), dict(params or {}), seed, device=device)


def retrain(name: str, trial: int, storage: str | None = None,
            device: str | None = None) -> Retrained:
    """Train stored trial `trial` again with its parameters and seed (`hpsearch train
    --trial`); its validation loss is compared with the stored one. `device` defaults to
    the one the trial ran on."""
    return retrain_trial(name, resolve_storage_url(storage), trial, device=device)


def confirm(name: str, top: int = 3, seeds: int = 10, storage: str | None = None,
            workers: int = 1, device: str = "auto") -> ConfirmOutcome:
    """Re-train the stored study's best configurations over `seeds` seeds (`hpsearch
    confirm`); `.analysis` holds the tables, the comparisons and the verdict."""
    return run_confirmation(name, resolve_storage_url(storage), top=top, seeds=seeds,
                            workers=workers, device=device)
