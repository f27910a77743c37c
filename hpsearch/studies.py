"""Studies in a storage: create or resume one from a config (its sampler and pruner, the stored
config and data fingerprint, refusing a resume with another config), find a stored one, list
them, re-train a stored trial."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import fmean
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

import hpsearch
from hpsearch.config import StudyConfig, stored_study_config
from hpsearch.errors import ConfigError, StorageError
from hpsearch.params import Value
from hpsearch.records import (
    ATTR_CONFIG,
    ATTR_CONFIRM_OF,
    ATTR_DEVICE,
    ATTR_EPOCHS_RUN,
    ATTR_FINGERPRINT,
    ATTR_SEED,
    ATTR_VERSION,
    TrialCounts,
    best_of,
    count_trials,
    evaluation_runs,
    run_seed,
    trial_seed,
)
from hpsearch.search.pruning import build_pruner
from hpsearch.search.samplers import build_sampler
from hpsearch.storage.urls import HEARTBEAT_S, close_storage, mask_url, open_storage

if TYPE_CHECKING:
    from hpsearch.training import TrainedRun


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def stored_document(storage_url: str, study_name: str) -> dict[str, Any] | None:
    """The config document stored with study `study_name`, or None where the storage holds no
    such study made by hpsearch (or cannot be read now: opening the study says why). A peek:
    it opens the storage read-only, so it creates nothing."""
    try:
        storage = open_storage(storage_url, write_behind=False, read_only=True)
    except StorageError:
        return None
    try:
        for frozen in storage.get_all_studies():
            if frozen.study_name == study_name:
                return frozen.user_attrs.get(ATTR_CONFIG)
        return None
    finally:
        close_storage(storage)


def open_study(config: StudyConfig, storage_url: str, fingerprint: str,
               heartbeat_s: int = HEARTBEAT_S) -> optuna.Study:
    """Create the study, or resume it if the storage has it with the same config and data."""
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s)
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
    # A config stored without scale_target trained on the raw target: the same data as now
    # exactly when the fingerprints agree (a class target is never scaled, a regression
    # target is raw with scale_target = false), which the fingerprint check decides.
    raw_target = "scale_target" not in stored[ATTR_CONFIG].get("data", {})
    changes = [
        f"{key}: stored {old!r}, now {new!r}"
        for key, old, new in _differences(stored[ATTR_CONFIG], now)
        if key not in ("description", "name") and not (raw_target and key == "data.scale_target")
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


def load_stored_study(study_name: str, storage_url: str,
                      read_only: bool = False) -> optuna.Study:
    """An existing study, or a StorageError that lists the studies the storage has.
    `read_only`: for commands that only read it (see `open_storage`)."""
    storage = open_storage(storage_url, read_only=read_only)
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
    return stored_study_config(document)


@dataclass(frozen=True)
class StudyRow:
    name: str
    counts: TrialCounts
    best_value: float | None
    best_trial: int | None
    created: str
    confirms: str | None = None  # a confirmation's runs (`NAME:confirm`): the study they confirm


def list_studies(storage_url: str) -> list[StudyRow]:
    """The studies of a storage, read-only. A confirmation's runs have no best value: each is
    one seed of a configuration, and their lowest loss is a lucky seed, not a result."""
    storage = open_storage(storage_url, read_only=True)
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(storage.get_study_id_from_name(frozen.study_name),
                                        deepcopy=False)
        confirms = frozen.user_attrs.get(ATTR_CONFIRM_OF)
        best = None if confirms else best_of(trials)
        starts = [t.datetime_start for t in trials if t.datetime_start]
        rows.append(StudyRow(
            frozen.study_name, count_trials(trials), best.value if best else None,
            best.number if best else None,
            min(starts).strftime("%Y-%m-%d %H:%M") if starts else "", confirms,
        ))
    return rows


@dataclass(frozen=True)
class Retrained:
    """A stored trial trained again, and how its validation loss compares."""

    trial: FrozenTrial
    params: dict[str, Value]
    run: TrainedRun  # its first run (the one `hpsearch train --save` keeps), or the refit
    epoch: int | None  # the last epoch the stored trial reported (None: it reported none)
    stored_loss: float | None
    retrained_loss: float | None  # at that same epoch: the mean over its runs
    runs: tuple[TrainedRun, ...] = ()  # every run (`[evaluation]`: folds x seeds)


def retrain_trial(study_name: str, storage_url: str, number: int,
                  device: str | None = None, refit: bool = False) -> Retrained:
    """Train trial `number` of a stored study again: same config, parameters and seed, on
    `device` (default: the device the trial ran on; trials that predate devices ran on the CPU).

    A pruned trial is trained to the end; its loss is compared at the epoch it was pruned.
    `refit`: train one run (the first run's seed) on the training and validation rows
    together, for the epochs the trial ran; nothing to compare (no loss of those rows is
    stored)."""
    # Imported here: listing and loading studies (`hpsearch studies`, the reports) never train.
    from hpsearch.training import train_configuration

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
    device = device or trial.user_attrs.get(ATTR_DEVICE, "cpu")
    runs = evaluation_runs(config.evaluation)
    seeds = ([int(trial.user_attrs.get(ATTR_SEED, trial_seed(config.seed, number)))]
             if len(runs) == 1 else
             [run_seed(config.seed, number, run, len(runs)) for run in runs])
    if refit:
        epochs = int(trial.user_attrs.get(ATTR_EPOCHS_RUN, config.training.epochs))
        run = train_configuration(config, config.load_data(refit=True), params, seeds[0],
                                  device=device, epochs=epochs)
        run = replace(run, refit=True, trial=number)
        return Retrained(trial, params, run, None, None, None, (run,))
    data = config.load_data()
    trained = tuple(
        replace(train_configuration(config, data.fold(run.fold), params, seed, device=device),
                trial=number, fold=run.fold if data.folds else None)
        for run, seed in zip(runs, seeds, strict=True))
    epoch = max(trial.intermediate_values, default=None)
    retrained = None
    if epoch and all(epoch <= len(t.result.history) for t in trained):
        retrained = fmean(t.result.history[epoch - 1].val_loss for t in trained)
    stored = trial.intermediate_values[epoch] if epoch else None
    return Retrained(trial, params, trained[0], epoch, stored, retrained, trained)
