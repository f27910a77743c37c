"""Confirm the winner: re-train a stored study's best configurations from scratch, without
pruning, over several seeds, and measure each run on the validation split and on the held-out
test split that the search never saw (`hpsearch confirm`).

- **Which configurations**: by default the best `top` complete trials overall and the best
  `top` of each scheduler, deduplicated by parameters; or the trials named.
- **Which seeds**: seed index i trains with `study seed + SEED_OFFSET + i` (initial weights and
  batch order; the split is the study's). Every configuration gets the same seeds, so that
  runs can be compared pair by pair; none is the seed a trial of the search trained with.
- **Where the runs go**: the Optuna study `<study>:confirm` in the same storage (optuna-dashboard
  shows it). Each run is one trial with the configuration's parameters, its validation loss
  per epoch as intermediate values, and user attrs `config_id`, `source_trial`,
  `search_value`, `seed_index`, `seed`, `test_loss`, `test_accuracy` beside those every trial
  has. A run is written in one transaction when it ends: stored whole or not at all.
- **Resume**: a (configuration, seed) already stored is never run again, so the same command
  after an interruption runs only what is missing, and a larger `--seeds` adds seeds. Runs are
  planned seed by seed, so an interrupted confirmation leaves every configuration with about
  the same seeds, ready to be compared.
- **Workers**: `workers=N` trains in N spawned processes of one torch thread each
  (`hpsearch.search.workers`), each taking the next run from a shared counter and writing it itself.

The statistics are in `confirm_stats.py`; this module selects, runs and stores.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.config import StudyConfig, stored_study_config
from hpsearch.confirm_stats import ALPHA, Analysis, analyze, runs_frame
from hpsearch.data import CLASSIFICATION, Dataset
from hpsearch.errors import ConfigError
from hpsearch.params import Value
from hpsearch.records import (
    ATTR_CONFIG_ID,
    ATTR_CONFIRM_OF,
    ATTR_CONFIRM_STUDY,
    ATTR_END_REASON,
    ATTR_FINGERPRINT,
    ATTR_RUNNER_UPS,
    ATTR_SEARCH_VALUE,
    ATTR_SEED,
    ATTR_SEED_INDEX,
    ATTR_SOURCE_TRIAL,
    ATTR_TEST_ACCURACY,
    ATTR_TEST_LOSS,
    ATTR_VERSION,
    COMPLETED,
    DIVERGED,
    best_order,
    count_trials,
    ended_user_attrs,
)
from hpsearch.report import trial_state
from hpsearch.search.workers import Interruptions, SlotLock, run_workers
from hpsearch.storage.urls import close_storage, mask_url, open_storage
from hpsearch.studies import load_stored_study, stored_config, study_names
from hpsearch.training import evaluate, loss_function, resolve_device, train_configuration

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
    """One run: a configuration trained with one seed."""

    configuration: Configuration
    seed_index: int
    seed: int


def finished_runs(trials: Sequence[FrozenTrial]) -> set[tuple[str, int]]:
    """(config_id, seed) of the runs stored whole: complete or diverged. A diverged run is
    finished too: the same seed would diverge again."""
    return {(t.user_attrs[ATTR_CONFIG_ID], t.user_attrs[ATTR_SEED]) for t in trials
            if ATTR_CONFIG_ID in t.user_attrs
            and (t.state == TrialState.COMPLETE
                 or t.user_attrs.get(ATTR_END_REASON) == DIVERGED)}


def plan_runs(configurations: Sequence[Configuration], seeds: int, study_seed: int,
              done: set[tuple[str, int]]) -> list[RunTask]:
    """The runs still missing, seed by seed (every configuration's first seed, then every
    second...): an interruption then leaves configurations with about the same seeds."""
    return [RunTask(c, index, confirm_seed(study_seed, index))
            for index in range(seeds) for c in configurations
            if (c.config_id, confirm_seed(study_seed, index)) not in done]


# -- one run ----------------------------------------------------------------------------------
def train_run(config: StudyConfig, data: Dataset, task: RunTask,
              device: str | torch.device = "cpu") -> FrozenTrial:
    """Train `task`'s configuration from scratch with its seed, to the last epoch (no pruner
    watches), then measure the final model on the validation and the held-out test split. The
    run as a finished trial, ready for `study.add_trial`."""
    configuration = task.configuration
    params = config.space.complete(configuration.params)
    started = datetime.datetime.now()
    run = train_configuration(config, data, params, task.seed, device=device)
    result = run.result
    completed = result.end_reason == COMPLETED
    device_type = resolve_device(device).type
    attrs = ended_user_attrs(result.history, task.seed, COMPLETED if completed else DIVERGED,
                             device_type)
    attrs |= {ATTR_CONFIG_ID: configuration.config_id,
              ATTR_SOURCE_TRIAL: configuration.source_trial, ATTR_SEED_INDEX: task.seed_index}
    if configuration.search_value is not None:
        attrs[ATTR_SEARCH_VALUE] = configuration.search_value
    if completed:
        test = data.test.to(device_type)
        loss, accuracy = evaluate(run.model, test, loss_function(data.task),
                                  data.task == CLASSIFICATION)
        attrs[ATTR_TEST_LOSS] = loss.item()
        if accuracy is not None:
            attrs[ATTR_TEST_ACCURACY] = accuracy.item()
    return FrozenTrial(
        number=0, trial_id=0,  # both assigned by the storage
        # Like a diverged trial of the search: PRUNED with end_reason "diverged", its value
        # the last finite loss it reported.
        state=TrialState.COMPLETE if completed else TrialState.PRUNED,
        value=result.last.val_loss if result.last else None,
        datetime_start=started, datetime_complete=datetime.datetime.now(),
        params=configuration.params, distributions=configuration.distributions,
        user_attrs=attrs, system_attrs={},
        intermediate_values={stats.epoch: stats.val_loss for stats in result.history},
    )


def _run_tasks(study: optuna.Study, config: StudyConfig, data: Dataset,
               tasks: Iterator[RunTask], device: torch.device, interruptions: Interruptions,
               on_run: Callable[[], None]) -> None:
    for task in tasks:
        # A Ctrl-C stops training at once, but never a run's write (it would be lost anyway:
        # one transaction), so a stored run is always whole.
        with interruptions.interruptible():
            trial = train_run(config, data, task, device)
        study.add_trial(trial)
        on_run()


def _claimed(tasks: Sequence[RunTask], next_task: Any) -> Iterator[RunTask]:
    """The tasks this worker takes, one at a time, from a counter all workers share."""
    while True:
        with next_task.get_lock():
            index = next_task.value
            next_task.value += 1
        if index >= len(tasks):
            return
        yield tasks[index]


def _work(_worker: int, _slot_lock: SlotLock, interruptions: Interruptions,
          document: dict[str, Any], data: Dataset, storage_url: str, study_name: str,
          tasks: list[RunTask], next_task: Any, done: Any, device: str) -> None:
    """One worker process: its own config and storage connection, the parent's data; the
    shared tasks."""
    config = stored_study_config(document)
    resolved = resolve_device(device)
    storage = open_storage(storage_url, write_behind=False)

    def count() -> None:
        with done.get_lock():
            done.value += 1

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        _run_tasks(study, config, data.to(resolved), _claimed(tasks, next_task), resolved,
                   interruptions, count)
    finally:
        close_storage(storage)


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


def run_confirmation(
    study_name: str, storage_url: str, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS,
    trials: Sequence[int] = (), workers: int = 1, device: str = "cpu",
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None, alpha: float = ALPHA,
) -> ConfirmOutcome:
    """Confirm the stored study `study_name` (see the module docstring): run what is missing
    of `seeds` seeds for each selected configuration, then analyse every stored run.

    `on_start(to_run, stored)` is called once the runs are planned; `on_progress(ran)` after
    each run (with workers, every half second while the count changes)."""
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
    runner_ups = len(configurations) - 1 if trials else top - 1
    study = open_confirm_study(parent, storage_url, max(runner_ups, 1))
    tasks = plan_runs(configurations, seeds, config.seed,
                      finished_runs(study.get_trials(deepcopy=False)))
    if on_start is not None:
        on_start(len(tasks), len(configurations) * seeds - len(tasks))
    report = on_progress or (lambda _: None)
    workers = max(1, min(workers, len(tasks)))
    started = time.perf_counter()
    if workers == 1:
        ran = 0

        def count() -> None:
            nonlocal ran
            ran += 1
            report(ran)

        # Not installed: in this process Ctrl-C raises KeyboardInterrupt wherever it lands,
        # and a run's write is one transaction.
        _run_tasks(study, config, data.to(resolved), iter(tasks), resolved, Interruptions(),
                   count)
    else:
        context = multiprocessing.get_context("spawn")
        next_task, done = context.Value("i", 0), context.Value("i", 0)
        run_workers(_work, workers,
                    (config.as_dict(), data, storage_url, study.study_name, tasks, next_task,
                     done, resolved.type),
                    on_poll=lambda: report(done.value))
        ran = done.value
    seconds = time.perf_counter() - started
    every = study.get_trials(deepcopy=False)
    return ConfirmOutcome(study, configurations, seeds, len(tasks), ran, seconds, workers,
                          analyze(runs_frame(every), study.user_attrs[ATTR_RUNNER_UPS], alpha))


def open_confirm_study(parent: optuna.Study, storage_url: str,
                       runner_ups: int) -> optuna.Study:
    """The confirmation study of `parent` in the same storage, created if needed."""
    storage = open_storage(storage_url, write_behind=False)
    name = confirm_study_name(parent.study_name)
    exists = name in study_names(storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                load_if_exists=True)
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
    storage = parent._storage  # one connection serves the whole report
    if name not in study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    runs = runs_frame(study.get_trials(deepcopy=False))
    if runs.empty:
        return None
    return analyze(runs, study.user_attrs.get(ATTR_RUNNER_UPS, DEFAULT_TOP - 1), alpha)
