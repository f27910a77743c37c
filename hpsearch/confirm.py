"""Confirm the winner: re-train a stored study's best configurations from scratch, without
pruning, over several seeds, and measure each run on the validation split and on the held-out
test split that the search never saw (`hpsearch confirm`).

- **Which configurations**: by default the best `top` complete trials overall and the best
  `top` of each scheduler, deduplicated by parameters; or the trials named.
- **Which seeds**: seed index i trains with `study seed + SEED_OFFSET + i` (initial weights and
  batch order; the split is the study's, and with `[evaluation] folds = k` seed index i trains
  on fold i mod k, so the runs cover every fold). Every configuration gets the same seeds, so
  that runs can be compared pair by pair; none is the seed a trial of the search trained with.
- **Where the runs go**: the Optuna study `<study>:confirm` in the same storage (optuna-dashboard
  shows it). Each run is one trial with the configuration's parameters, its validation loss
  per epoch as intermediate values, and user attrs `config_id`, `source_trial`,
  `search_value`, `seed_index`, `seed`, `test_loss`, `test_accuracy` beside those every trial
  has; a run interrupted by Ctrl-C ends FAILED and is run again next time.
- **Resume**: a (configuration, seed) already stored is never run again, so the same command
  after an interruption runs only what is missing, and a larger `--seeds` adds seeds. Runs are
  planned seed by seed, so an interrupted confirmation leaves every configuration with about
  the same seeds, ready to be compared.
- **How**: the runs are queued as trials of the confirmation study, and the search driver
  runs them (`search.run.drive`): only the queued runs, unpruned, each measured on the test
  split as it ends; on the cohort engine where the model stacks (every run a member), and in
  `workers=N` processes of one torch thread each if asked.

The statistics are in `confirm_stats.py`; this module selects, runs and stores.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.api import AUTO, DEFAULT_COHORT_SIZE, REFERENCE
from hpsearch.config import StudyConfig
from hpsearch.confirm_stats import ALPHA, Analysis, analyze, runs_frame
from hpsearch.errors import ConfigError
from hpsearch.params import Value
from hpsearch.records import (
    ATTR_CONFIG_ID,
    ATTR_CONFIRM_OF,
    ATTR_CONFIRM_STUDY,
    ATTR_END_REASON,
    ATTR_FINGERPRINT,
    ATTR_FOLD,
    ATTR_RUNNER_UPS,
    ATTR_SEARCH_VALUE,
    ATTR_SEED,
    ATTR_SEED_INDEX,
    ATTR_SOURCE_TRIAL,
    ATTR_VERSION,
    DIVERGED,
    FINISHED_STATES,
    best_order,
    count_trials,
)
from hpsearch.report import trial_state
from hpsearch.storage.port import port_for_study, storage_of
from hpsearch.storage.urls import mask_url, open_storage
from hpsearch.studies import load_stored_study, stored_config, study_names

# The engines and the driver (torch) are imported by the functions that train: the reports
# read a stored confirmation (`load_confirmation`) without them.

CONFIRM_SUFFIX = ":confirm"
MIN_SEEDS = 2  # a confidence interval needs two runs
# Far beyond any search's trial numbers: no confirmation run reuses the seed a trial of the
# search trained with (that seed is the one it was selected on).
SEED_OFFSET = 1_000_000
DEFAULT_TOP = 3
DEFAULT_SEEDS = 10


def confirm_study_name(study_name: str) -> str:
    return f"{study_name}{CONFIRM_SUFFIX}"


def confirm_seed(study_seed: int, seed_index: int) -> int:
    return study_seed + SEED_OFFSET + seed_index


def config_id(params: Mapping[str, Value]) -> str:
    """A configuration's identity: a hash of its parameters, the same whichever trial of the
    search found it, so that its runs are found again when the selection changes."""
    return hashlib.sha1(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:10]


# -- which configurations ---------------------------------------------------------------------
@dataclass(frozen=True)
class Configuration:
    """One configuration to confirm: the parameters of a trial of the search."""

    config_id: str
    source_trial: int
    params: dict[str, Value]
    distributions: dict[str, BaseDistribution]
    search_value: float | None  # the validation loss the search saw (complete trials only)

    @classmethod
    def of(cls, trial: FrozenTrial) -> Configuration:
        value = trial.value if trial.state == TrialState.COMPLETE else None
        return cls(config_id(trial.params), trial.number, dict(trial.params),
                   dict(trial.distributions), value)


def select_configurations(study_name: str, trials: Sequence[FrozenTrial], top: int = DEFAULT_TOP,
                          numbers: Sequence[int] = ()) -> list[Configuration]:
    """The configurations to confirm, best search value first: the trials `numbers` (complete
    or pruned), else the `top` best complete trials and the `top` best of each scheduler.
    Trials with equal parameters are one configuration (the better trial names it)."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1; got {top}")
    by_number = {t.number: t for t in trials}
    if numbers:
        chosen = [_confirmable(study_name, by_number, number) for number in numbers]
    else:
        complete = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                          key=best_order)
        if not complete:
            c = count_trials(trials)
            raise ConfigError(f"study {study_name!r} has no complete trial yet ({c.total} "
                              f"trials: {c.pruned} pruned, {c.diverged} diverged, {c.failed} "
                              f"failed, {c.running + c.waiting} running); nothing to confirm")
        by_scheduler: dict[Any, list[FrozenTrial]] = {}
        for trial in complete:
            by_scheduler.setdefault(trial.params.get("scheduler"), []).append(trial)
        chosen = complete[:top] + [t for group in by_scheduler.values() for t in group[:top]]
    configurations: dict[str, Configuration] = {}
    for trial in sorted(chosen, key=_search_order):
        configuration = Configuration.of(trial)
        configurations.setdefault(configuration.config_id, configuration)
    return list(configurations.values())


def _confirmable(study_name: str, trials: Mapping[int, FrozenTrial], number: int) -> FrozenTrial:
    trial = trials.get(number)
    if trial is None:
        raise ConfigError(f"study {study_name!r} has trials 0..{len(trials) - 1}; got --trial "
                          f"{number}")
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or not trial.params:
        raise ConfigError(f"trial {number} of {study_name!r} is {trial_state(trial)}: "
                          "only complete or pruned trials can be confirmed")
    return trial


def _search_order(trial: FrozenTrial) -> tuple[bool, float, int]:
    complete = trial.state == TrialState.COMPLETE
    return not complete, trial.value if complete else 0.0, trial.number


# -- which runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTask:
    """One run: a configuration trained with one seed on one fold."""

    configuration: Configuration
    seed_index: int
    seed: int
    fold: int = 0


def finished_runs(trials: Sequence[FrozenTrial]) -> set[tuple[str, int]]:
    """(config_id, seed) of the runs stored whole: complete or diverged. A diverged run is
    finished too: the same seed would diverge again."""
    return {(t.user_attrs[ATTR_CONFIG_ID], t.user_attrs[ATTR_SEED]) for t in trials
            if ATTR_CONFIG_ID in t.user_attrs
            and (t.state == TrialState.COMPLETE
                 or t.user_attrs.get(ATTR_END_REASON) == DIVERGED)}


def plan_runs(configurations: Sequence[Configuration], seeds: int, study_seed: int,
              done: set[tuple[str, int]], folds: int = 1) -> list[RunTask]:
    """The runs still missing, seed by seed (every configuration's first seed, then every
    second...): an interruption then leaves configurations with about the same seeds. With
    `folds`, seed index i trains on fold i mod folds: the runs cover every fold, and two
    configurations' runs of one seed are on the same fold (compared pair by pair)."""
    return [RunTask(c, index, confirm_seed(study_seed, index), index % folds)
            for index in range(seeds) for c in configurations
            if (c.config_id, confirm_seed(study_seed, index)) not in done]


# -- the runs, queued -------------------------------------------------------------------------
def queue_runs(study: optuna.Study, config: StudyConfig, tasks: Sequence[RunTask]) -> int:
    """Queue each task's run as a trial of the confirmation study (its seed and identity as
    user attrs), unless an interrupted confirmation left it queued already; returns how many
    runs wait in the queue. A run's parameters are its configuration's, completed with the
    study's fixed values and defaults (`StudySpace.complete`): the driver draws none."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    queued = {(t.user_attrs.get(ATTR_CONFIG_ID), t.user_attrs.get(ATTR_SEED)) for t in waiting}
    added = 0
    for task in tasks:
        configuration = task.configuration
        if (configuration.config_id, task.seed) in queued:
            continue
        attrs: dict[str, Any] = {ATTR_CONFIG_ID: configuration.config_id,
                                 ATTR_SOURCE_TRIAL: configuration.source_trial,
                                 ATTR_SEED_INDEX: task.seed_index, ATTR_SEED: task.seed,
                                 ATTR_FOLD: task.fold}
        if configuration.search_value is not None:
            attrs[ATTR_SEARCH_VALUE] = configuration.search_value
        study.enqueue_trial(config.space.complete(configuration.params), user_attrs=attrs)
        added += 1
    return len(waiting) + added


class _RunCounter:
    """Reports the runs finished since the confirmation started (`on_progress(ran)`)."""

    def __init__(self, study: optuna.Study, on_progress: Callable[[int], None] | None):
        self.study = study
        self.port = port_for_study(study)
        self.on_progress = on_progress
        self.before = self.finished()

    def finished(self) -> int:
        states = self.port.count_states(self.study)
        return sum(states.get(state, 0) for state in FINISHED_STATES)

    def __call__(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.finished() - self.before)


# -- the confirmation -------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfirmOutcome:
    study: optuna.Study  # the confirmation study `<name>:confirm`
    configurations: list[Configuration]  # confirmed by this call
    seeds: int
    planned: int  # runs this call had to do (the others were stored already)
    ran: int
    seconds: float
    workers: int
    analysis: Analysis  # of every run the confirmation study holds
    engine: str = REFERENCE  # the engine that trained the runs


def run_confirmation(
    study_name: str, storage_url: str, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS,
    trials: Sequence[int] = (), workers: int = 1, device: str = AUTO,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None, alpha: float = ALPHA,
    engine: str = AUTO, cohort_size: int = DEFAULT_COHORT_SIZE,
) -> ConfirmOutcome:
    """Confirm the stored study `study_name` (see the module docstring): run what is missing
    of `seeds` seeds for each selected configuration, then analyse every stored run.

    `on_start(to_run, stored)` is called once the runs are planned; `on_progress(ran)` when
    runs ended (with workers, every half second while they run)."""
    from hpsearch.engines import choose_engine
    from hpsearch.search.run import DriveSettings, drive
    from hpsearch.training import resolve_device

    if seeds < MIN_SEEDS:
        raise ConfigError(f"--seeds must be >= {MIN_SEEDS} (a confidence interval needs at "
                          f"least two runs); got {seeds}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}")
    if top < 1:  # before the (possibly long) read of the study
        raise ConfigError(f"--top must be >= 1; got {top}")
    resolved = resolve_device(device)
    parent = load_stored_study(study_name, storage_url)
    configurations = select_configurations(study_name, parent.get_trials(deepcopy=False), top,
                                           trials)
    config = stored_config(parent)
    data = config.load_data()
    stored = parent.user_attrs.get(ATTR_FINGERPRINT)
    if stored not in (None, data.fingerprint):
        raise ConfigError(f"study {study_name!r} was searched on different data (fingerprint "
                          f"{stored}, now {data.fingerprint}); its configurations can't be "
                          "confirmed on these")
    engine, _ = choose_engine(engine, config, data)
    runner_ups = len(configurations) - 1 if trials else top - 1
    study = open_confirm_study(parent, storage_url, max(runner_ups, 1))
    tasks = plan_runs(configurations, seeds, config.seed,
                      finished_runs(study.get_trials(deepcopy=False)), data.n_folds)
    if on_start is not None:
        on_start(len(tasks), len(configurations) * seeds - len(tasks))
    started = time.perf_counter()
    counter = _RunCounter(study, on_progress)
    waiting = queue_runs(study, config, tasks)
    workers = max(1, min(workers, waiting))
    if waiting:
        settings = DriveSettings(study.study_name, storage_url, counter.before + waiting,
                                 engine, cohort_size, resolved.type, confirmation=True)
        drive(study, config, data, settings, workers, counter)
    port_for_study(study).refresh()
    ran = counter.finished() - counter.before
    seconds = time.perf_counter() - started
    every = study.get_trials(deepcopy=False)
    return ConfirmOutcome(study, configurations, seeds, len(tasks), ran, seconds, workers,
                          analyze(runs_frame(every), study.user_attrs[ATTR_RUNNER_UPS], alpha),
                          engine)


def open_confirm_study(parent: optuna.Study, storage_url: str,
                       runner_ups: int) -> optuna.Study:
    """The confirmation study of `parent` in the same storage, created if needed."""
    from hpsearch.search.run import confirmation_sampler_and_pruner

    storage = open_storage(storage_url)
    name = confirm_study_name(parent.study_name)
    exists = name in study_names(storage)
    sampler, pruner = confirmation_sampler_and_pruner()
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if exists and study.user_attrs.get(ATTR_CONFIRM_OF) != parent.study_name:
        raise ConfigError(f"study {name!r} in {mask_url(storage_url)} is not the "
                          f"confirmation of {parent.study_name!r}; rename or delete it")
    if not exists:
        study.set_user_attr(ATTR_CONFIRM_OF, parent.study_name)
        study.set_user_attr(ATTR_FINGERPRINT, parent.user_attrs.get(ATTR_FINGERPRINT))
        study.set_user_attr(ATTR_VERSION, hpsearch.__version__)
        parent.set_user_attr(ATTR_CONFIRM_STUDY, name)
    study.set_user_attr(ATTR_RUNNER_UPS, runner_ups)
    return study


def load_confirmation(parent: optuna.Study, alpha: float = ALPHA) -> Analysis | None:
    """The analysis of `parent`'s confirmation study, or None where it has none (yet)."""
    name = confirm_study_name(parent.study_name)
    storage = storage_of(parent)  # one connection serves the whole report
    if name not in study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    runs = runs_frame(study.get_trials(deepcopy=False))
    if runs.empty:
        return None
    return analyze(runs, study.user_attrs.get(ATTR_RUNNER_UPS, DEFAULT_TOP - 1), alpha)
