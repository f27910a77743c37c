"""hpsearch's front door: every command as a function that returns objects. The `hpsearch`
command calls these, with these defaults; a notebook or a script calls them too.

    import hpsearch.api as hp

    study = hp.optimize("wine", trials=50)                  # a name, a path, a dict or a config
    frame = hp.trials_frame(study)                          # one row per trial (pandas)
    hp.leaderboard(frame, top=10)
    hp.summary(frame, "scheduler")                          # or "optimizer", "pair"
    print(hp.verdict(frame))
    params, run = hp.train("wine", {"optimizer": "adam", "lr": 0.01})
    run.save("wine.pt")                                     # a model file (hpsearch.model_file)
    hp.load_model("wine.pt").predict("new_rows.csv")        # predictions (pandas)
    study = hp.load("wine")                                 # a stored study, later
    print(hp.confirm("wine", top=3, seeds=10).analysis.verdict)  # re-train over seeds

Every function takes `storage` like `--storage` (default: $HPSEARCH_STORAGE, else
sqlite:///hpsearch.db) and `device` like `--device` (default "auto": the GPU if there is one).
Each function imports what it needs when it is called: `import hpsearch.api` brings neither
torch nor Optuna nor pandas, a search no plotting or statistics, a report no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.config import StudyConfig, load_study_config, parse_study
from hpsearch.errors import ConfigError

# The rest is imported by the functions (the module docstring says why).
if TYPE_CHECKING:
    import optuna
    import torch

    from hpsearch.confirm import ConfirmOutcome
    from hpsearch.dashboard import DashboardServer
    from hpsearch.data import Dataset
    from hpsearch.export import Exported, StudyReport
    from hpsearch.params import Value
    from hpsearch.records import TrialCounts
    from hpsearch.search.run import Progress, SearchOutcome
    from hpsearch.studies import Retrained, StudyRow
    from hpsearch.training import TrainedRun

# The choices of `engine` and `device` and the cohort's default size: the values of
# `hpsearch.engines` and `hpsearch.training`, spelled here because both import torch, which
# the command's --help and the reports do not need (tests/test_startup.py checks they agree).
AUTO, REFERENCE, COHORT = "auto", "reference", "cohort"
ENGINES = (AUTO, REFERENCE, COHORT)
DEFAULT_COHORT_SIZE = 32
DEVICES = (AUTO, "cpu", "cuda", "mps")

# The report helpers, loaded from `hpsearch.report` (pandas) on first use.
_REPORT_HELPERS = ("leaderboard", "param_importances", "summary", "trials_frame", "verdict")

__all__ = [
    "StudyLike", "config", "confirm", "dashboard", "export", "load", "load_model", "optimize",
    "refresh_dashboards", "report", "retrain", "search", "stored", "stored_name", "studies",
    "train", *_REPORT_HELPERS,
]


def __getattr__(name: str) -> Any:
    if name in _REPORT_HELPERS:
        return getattr(import_module("hpsearch.report"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def search(
    study: StudyLike, trials: int = 100, *, storage: str | None = None,
    name: str | None = None, workers: int = 1, device: str | torch.device = AUTO,
    engine: str = AUTO, cohort_size: int = DEFAULT_COHORT_SIZE,
    on_progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[TrialCounts, Dataset], None] | None = None,
) -> SearchOutcome:
    """Run (or resume) the search until the study has `trials` finished trials, then refresh
    its dashboard note and figures (`hpsearch optimize`). `engine`: auto (the cohort engine
    where the model stacks), reference or cohort; `cohort_size`: trials the cohort trains at
    once. The outcome holds the study, its counts and what this call ran.

    Ctrl-C after the search ended, while the note is refreshed, raises `SearchInterrupted`
    (a KeyboardInterrupt) carrying the outcome: the search itself is complete."""
    from hpsearch.refresh_helper import Refresh
    from hpsearch.search.run import run_search
    from hpsearch.storage.urls import resolve_storage_url

    url, resolved = resolve_storage_url(storage), config(study, name)
    refresh = Refresh(url, resolved.name)
    try:
        outcome = run_search(resolved, url, trials, on_progress=on_progress, on_start=on_start,
                             workers=workers, device=device, engine=engine,
                             cohort_size=cohort_size, on_underway=refresh.start)
        try:
            refresh.finish(outcome.study)
        except KeyboardInterrupt:
            raise SearchInterrupted(outcome) from None
    finally:
        refresh.close()
    return outcome


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C once the search had ended (while its dashboard note was refreshed)."""

    def __init__(self, outcome: SearchOutcome):
        super().__init__()
        self.outcome = outcome


def optimize(
    study: StudyLike, trials: int = 100, *, storage: str | None = None,
    name: str | None = None, workers: int = 1, device: str | torch.device = AUTO,
    engine: str = AUTO, cohort_size: int = DEFAULT_COHORT_SIZE,
) -> optuna.Study:
    """`search`, returning the Optuna study, read afresh from the storage."""
    return search(study, trials, storage=storage, name=name, workers=workers, device=device,
                  engine=engine, cohort_size=cohort_size).study


def studies(storage: str | None = None) -> list[StudyRow]:
    """The studies a storage holds, with their trial counts and best values
    (`hpsearch studies`)."""
    from hpsearch.storage.urls import resolve_storage_url
    from hpsearch.studies import list_studies

    return list_studies(resolve_storage_url(storage))


def stored_name(study: StudyLike) -> str:
    """The name `study` is stored under: a config's or a study document's name; for a path
    (`*.toml`, or with a folder) or a name in studies/, its study file's name (a file may name
    its study otherwise); any other string as it is (a study stored under a name of its own,
    with `--name`). Every function that reads a stored study takes `study` this way."""
    from hpsearch.config import study_folders

    if isinstance(study, StudyConfig | Mapping):
        return config(study).name
    text = os.fspath(study)
    if text.endswith(".toml") or os.sep in text or \
            any((folder / f"{text}.toml").is_file() for folder in study_folders()):
        return config(text).name
    return text


def load(name: StudyLike, storage: str | None = None) -> optuna.Study:
    """A stored study (a StorageError lists the studies the storage has)."""
    from hpsearch.storage.urls import resolve_storage_url
    from hpsearch.studies import load_stored_study

    return load_stored_study(stored_name(name), resolve_storage_url(storage))


def stored(study: optuna.Study) -> StudyConfig:
    """The config a stored study was created from."""
    from hpsearch.studies import stored_config

    return stored_config(study)


def train(
    study: StudyLike, params: Mapping[str, Any] | None = None, *, seed: int | None = None,
    device: str | torch.device = "auto", refit: bool = False,
) -> tuple[dict[str, Value], TrainedRun]:
    """Train one configuration: `params` (values or strings), the study's fixed values, the
    defaults for the rest (`hpsearch train --set`). Returns the parameters and the run: its
    per-epoch history, the trained model, `run.predict(rows)` and `run.save(path)` (the
    model file `hpsearch train --save` writes). `refit`: train on the training and
    validation rows together."""
    from hpsearch.training import train_single

    return train_single(config(study), dict(params or {}), seed, device=device, refit=refit)


def retrain(name: StudyLike, trial: int, storage: str | None = None,
            device: str | None = None, refit: bool = False) -> Retrained:
    """Train stored trial `trial` again with its parameters and seed (`hpsearch train
    --trial`); its validation loss is compared with the stored one. `device` defaults to
    the one the trial ran on. `refit`: one run on the training and validation rows
    together, for the epochs the trial ran. `.run` is the run to save (`.run.save(path)`):
    the refit, or the trial's first run."""
    from hpsearch.storage.urls import resolve_storage_url
    from hpsearch.studies import retrain_trial

    return retrain_trial(stored_name(name), resolve_storage_url(storage), trial, device=device,
                         refit=refit)


def load_model(path: str | os.PathLike) -> TrainedRun:
    """The run a model file holds (`hpsearch train --save`, `run.save`): `.predict(rows)`
    gives a DataFrame of predictions for a DataFrame or a CSV/TSV/Parquet file of rows
    (`hpsearch predict`); `.config`, `.params`, `.preprocessing` say what it is."""
    from hpsearch.model_file import load_model as load

    return load(path)


def confirm(name: StudyLike, top: int = 3, seeds: int = 10, storage: str | None = None,
            workers: int = 1, device: str = AUTO, trials: Sequence[int] = (),
            on_start: Callable[[int, int], None] | None = None,
            on_progress: Callable[[int], None] | None = None, engine: str = AUTO,
            cohort_size: int = DEFAULT_COHORT_SIZE) -> ConfirmOutcome:
    """Re-train the stored study's best configurations (or its `trials`) over `seeds` seeds
    (`hpsearch confirm`), on `engine` as `search` does; `.analysis` holds the tables, the
    comparisons and the verdict."""
    from hpsearch.confirm import run_confirmation
    from hpsearch.storage.urls import resolve_storage_url

    return run_confirmation(stored_name(name), resolve_storage_url(storage), top=top, seeds=seeds,
                            trials=trials, workers=workers, device=device, on_start=on_start,
                            on_progress=on_progress, engine=engine, cohort_size=cohort_size)


def report(name: StudyLike, top: int = 10, by: Sequence[str] = (),
           storage: str | None = None) -> StudyReport:
    """Which schedule and optimizer win: leaderboard, summaries, verdict (`hpsearch report`);
    render it with `hpsearch.export.renderer("table" | "markdown" | "csv")`."""
    from hpsearch.export import SUMMARY_BY, build_report
    from hpsearch.storage.urls import resolve_storage_url

    return build_report(stored_name(name), resolve_storage_url(storage), top,
                        tuple(by) or SUMMARY_BY)


def export(name: StudyLike, out: str | os.PathLike, top: int = 10,
           storage: str | None = None) -> Exported:
    """Write the study's report as CSV, markdown and PNG files to `out` (`hpsearch export`)."""
    from hpsearch.export import export_report
    from hpsearch.storage.urls import resolve_storage_url

    return export_report(stored_name(name), resolve_storage_url(storage), out, top)


def dashboard(name: StudyLike | None = None, storage: str | None = None, host: str = "127.0.0.1",
              port: int = 8080) -> DashboardServer:
    """optuna-dashboard on the storage, notes and figures refreshed, ready to
    `serve_forever()` (`hpsearch dashboard`)."""
    from hpsearch.dashboard import start_dashboard
    from hpsearch.storage.urls import resolve_storage_url

    return start_dashboard(resolve_storage_url(storage),
                           None if name is None else stored_name(name), host, port)


def refresh_dashboards(name: StudyLike | None = None, storage: str | None = None) -> list[str]:
    """Rewrite the dashboard notes and figures of the study `name` (default: every hpsearch
    study in the storage); the names refreshed (`hpsearch dashboard --refresh`)."""
    from hpsearch.dashboard import refresh_studies
    from hpsearch.storage.urls import resolve_storage_url

    return refresh_studies(resolve_storage_url(storage),
                           None if name is None else stored_name(name))
