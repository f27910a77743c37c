"""Studies in a storage: create or resume one from a config (sampler, pruner, stored config),
run the search to a target number of finished trials, list studies, re-train a stored trial.

`--trials N` is the study's target number of FINISHED trials (complete + pruned + diverged):
running the same command again after an interruption runs only what is missing, and a failed
trial (an error, or the trial that was running at Ctrl-C) does not count, so it is retried.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.config import StudyConfig, parse_study
from hpsearch.errors import ConfigError, StorageError
from hpsearch.objective import ATTR_END_REASON, ATTR_SEED, Objective
from hpsearch.params import Value
from hpsearch.storage import mask_url, open_storage
from hpsearch.training import DIVERGED, TrainedRun, train_configuration

# Study user attrs: enough for a report on another machine to know what was run.
ATTR_CONFIG = "hpsearch_config"
ATTR_FINGERPRINT = "hpsearch_data_fingerprint"
ATTR_VERSION = "hpsearch_version"

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0  # by the pruner
    diverged: int = 0  # non-finite loss (stored as PRUNED with end_reason "diverged")
    failed: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    @property
    def total(self) -> int:
        return self.finished + self.failed + self.running


def count_trials(trials: Iterable[FrozenTrial]) -> TrialCounts:
    counts = dict.fromkeys(("complete", "pruned", "diverged", "failed", "running"), 0)
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            key = "diverged" if trial.user_attrs.get(ATTR_END_REASON) == DIVERGED else "pruned"
            counts[key] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed"] += 1
        else:
            counts["running"] += 1
    return TrialCounts(**counts)


def build_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    sampler = config.sampler
    if sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if sampler.kind == "grid":
        # The grid's configurations are enqueued by `run_search`; this sampler draws nothing.
        return optuna.samplers.RandomSampler(seed=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models the parameters that occur together (one branch of
        # the conditional space) jointly instead of one by one.
        return optuna.samplers.TPESampler(
            seed=config.seed, n_startup_trials=sampler.startup_trials, multivariate=True,
            group=True, constant_liar=True,
        )


def build_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    median = optuna.pruners.MedianPruner(
        n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
    )
    pruners: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "median": lambda: median,
        "percentile": lambda: optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        ),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_epochs, reduction_factor=p.reduction_factor
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=p.min_epochs, max_resource=config.training.epochs,
            reduction_factor=p.reduction_factor,
        ),
        "patient": lambda: optuna.pruners.PatientPruner(median, patience=p.patience),
        "none": optuna.pruners.NopPruner,
    }
    return pruners[p.kind]()


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def open_study(config: StudyConfig, storage_url: str, fingerprint: str) -> optuna.Study:
    """Create the study, or resume it if the storage has it with the same config and data."""
    storage = open_storage(storage_url)
    exists = config.name in study_names(storage)
    if exists:
        existing = optuna.load_study(study_name=config.name, storage=storage)
        _check_same_study(config, fingerprint, existing.user_attrs, storage_url)
    study = optuna.create_study(
        study_name=config.name, storage=storage, sampler=build_sampler(config),
        pruner=build_pruner(config), direction="minimize", load_if_exists=True,
    )
    if not exists:
        study.set_user_attr(ATTR_CONFIG, config.as_dict())
        study.set_user_attr(ATTR_FINGERPRINT, fingerprint)
        study.set_user_attr(ATTR_VERSION, hpsearch.__version__)
    return study


def _check_same_study(
    config: StudyConfig, fingerprint: str, stored: Mapping[str, Any], storage_url: str
) -> None:
    """Resuming a study with another config would mix two searches in one: refuse."""
    where = f"study {config.name!r} in {mask_url(storage_url)}"
    if ATTR_CONFIG not in stored:
        raise ConfigError(f"{where} was not created by hpsearch; choose another name "
                          "with --name")
    now = config.as_dict()
    changes = [
        f"{key}: stored {old!r}, now {new!r}"
        for key, old, new in _differences(stored[ATTR_CONFIG], now)
        if key not in ("description", "name")
    ]
    if changes:
        raise ConfigError(f"{where} was created from a different study file ({changes[0]}"
                          f"{f' and {len(changes) - 1} more' if len(changes) > 1 else ''}); "
                          "restore the file or run it under a new name with --name")
    if stored.get(ATTR_FINGERPRINT) not in (None, fingerprint):
        raise ConfigError(f"{where} was run on different data (fingerprint "
                          f"{stored[ATTR_FINGERPRINT]}, now {fingerprint}); run it under a "
                          "new name with --name")


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in dict.fromkeys([*old, *new]):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def load_stored_study(study_name: str, storage_url: str) -> optuna.Study:
    """An existing study, or a StorageError that lists the studies the storage has."""
    storage = open_storage(storage_url)
    names = study_names(storage)
    if study_name not in names:
        raise StorageError(f"no study {study_name!r} in {mask_url(storage_url)}; it has: "
                           f"{', '.join(names) or 'no studies'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def stored_config(study: optuna.Study) -> StudyConfig:
    """The config a study was created from, as stored in it."""
    document = study.user_attrs.get(ATTR_CONFIG)
    if document is None:
        raise ConfigError(f"study {study.study_name!r} was not created by hpsearch")
    return parse_study(document, default_name=study.study_name,
                       source=f"study {study.study_name!r}")


@dataclass(frozen=True)
class SearchOutcome:
    study: optuna.Study
    counts: TrialCounts
    target: int
    ran: int  # trials run by this call
    seconds: float

    @property
    def best_trial(self) -> FrozenTrial | None:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return min(complete, key=lambda t: (t.value, t.number)) if complete else None


TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def run_search(
    config: StudyConfig, storage_url: str, target: int,
    on_trial_end: TrialCallback | None = None,
    on_start: Callable[[TrialCounts], None] | None = None,
) -> SearchOutcome:
    """Run the study until it has `target` finished trials."""
    if target < 1:
        raise ConfigError(f"--trials must be >= 1; got {target}")
    data = config.load_data()
    study = open_study(config, storage_url, data.fingerprint)
    counts = count_trials(study.get_trials(deepcopy=False))
    if config.sampler.kind == "grid":
        target = min(target, _enqueue_grid(study, config, target))
    if on_start is not None:
        on_start(counts)
    remaining = target - counts.finished
    started = time.perf_counter()
    if remaining > 0:
        callbacks = [optuna.study.MaxTrialsCallback(target, states=FINISHED_STATES)]
        if on_trial_end is not None:
            callbacks.append(on_trial_end)
        # A torch error in one configuration fails that trial, not the whole search.
        study.optimize(Objective(config, data), n_trials=remaining, callbacks=callbacks,
                       catch=(RuntimeError,))
    final = count_trials(study.get_trials(deepcopy=False))
    return SearchOutcome(study, final, target, max(remaining, 0),
                         time.perf_counter() - started)


def _enqueue_grid(study: optuna.Study, config: StudyConfig, target: int) -> int:
    """Queue the grid configurations the study still needs to reach `target`: those it has
    not run, is not running and has not queued (failed ones count as not run). Returns the
    size of the grid."""
    grid = config.space.configurations()
    trials = study.get_trials(deepcopy=False)
    # A queued trial has no params yet: Optuna keeps them in the "fixed_params" system attr.
    taken = [t.system_attrs.get("fixed_params", {}) if t.state == TrialState.WAITING
             else t.params for t in trials if t.state != TrialState.FAIL]
    counts = count_trials(trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    needed = min(target, len(grid)) - counts.finished - waiting
    for params in [c for c in grid if c not in taken][:max(needed, 0)]:
        study.enqueue_trial(params)
    return len(grid)


@dataclass(frozen=True)
class StudyRow:
    name: str
    counts: TrialCounts
    best_value: float | None
    best_trial: int | None
    created: str


def list_studies(storage_url: str) -> list[StudyRow]:
    storage = open_storage(storage_url)
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(frozen._study_id, deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
        starts = [t.datetime_start for t in trials if t.datetime_start]
        rows.append(StudyRow(
            frozen.study_name, count_trials(trials), best.value if best else None,
            best.number if best else None,
            min(starts).strftime("%Y-%m-%d %H:%M") if starts else "",
        ))
    return rows


@dataclass(frozen=True)
class Retrained:
    """A stored trial trained again, and how its validation loss compares."""

    trial: FrozenTrial
    params: dict[str, Value]
    run: TrainedRun
    epoch: int | None  # the last epoch the stored trial reported (None: it reported none)
    stored_loss: float | None
    retrained_loss: float | None  # at that same epoch


def retrain_trial(study_name: str, storage_url: str, number: int) -> Retrained:
    """Train trial `number` of a stored study again: same config, parameters and seed.

    A pruned trial is trained to the end; its loss is compared at the epoch it was pruned."""
    study = load_stored_study(study_name, storage_url)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ConfigError(f"study {study_name!r} has trials 0..{len(trials) - 1}; "
                          f"got --trial {number}")
    trial = trials[number]
    if not trial.params:
        raise ConfigError(f"trial {number} of {study_name!r} has no parameters "
                          f"(state {trial.state.name})")
    config = stored_config(study)
    params = config.space.complete(trial.params)
    seed = int(trial.user_attrs.get(ATTR_SEED, config.seed + number))
    run = train_configuration(config, config.load_data(), params, seed)
    epoch = max(trial.intermediate_values, default=None)
    history = run.result.history
    retrained = history[epoch - 1].val_loss if epoch and epoch <= len(history) else None
    stored = trial.intermediate_values[epoch] if epoch else None
    return Retrained(trial, params, run, epoch, stored, retrained)
