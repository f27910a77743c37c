"""Studies in a storage: create or resume one from a config (sampler, pruner, stored config),
run the search to a target number of finished trials, list studies, re-train a stored trial.

`--trials N` is the study's target number of FINISHED trials (complete + pruned + diverged):
running the same command again after an interruption runs only what is missing, and a failed
trial (an error, or the trial that was running at Ctrl-C) does not count, so it is retried.

Many workers (processes on this machine with `workers=N`, or `hpsearch optimize` on several
machines sharing one database) run the same loop: a worker starts a trial only while
finished + running < target, and otherwise waits for the running ones. On one machine the
check and the trial's creation happen under one lock, so the study ends with exactly the
target; workers on other machines can each slip in one trial between another's check and its
creation, so the most a study can overshoot is (workers on all machines) - 1.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.config import StudyConfig, stored_study_config
from hpsearch.data import Dataset
from hpsearch.errors import ConfigError, StorageError
from hpsearch.objective import ATTR_DEVICE, ATTR_END_REASON, ATTR_SEED, Objective
from hpsearch.params import Value
from hpsearch.search.driver import (
    COHORT,
    DEFAULT_COHORT_SIZE,
    choose_engine,
    run_cohort_until_target,
)
from hpsearch.search.lazy_tpe import LazyTPESampler
from hpsearch.search.workers import POLL_S, Interruptions, SlotLock, run_workers
from hpsearch.storage.urls import (
    GRACE_BEATS,
    HEARTBEAT_S,
    IN_MEMORY,
    close_storage,
    mask_url,
    open_storage,
)
from hpsearch.storage.write_behind import WriteBehindStorage
from hpsearch.training import DIVERGED, TrainedRun, check_model, train_configuration

log = logging.getLogger(__name__)

# Study user attrs: enough for a report on another machine to know what was run.
ATTR_CONFIG = "hpsearch_config"
ATTR_FINGERPRINT = "hpsearch_data_fingerprint"
ATTR_VERSION = "hpsearch_version"

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)

# Trial system attr: which process ran the trial ("host:pid"), to tell whose trial went stale.
ATTR_WORKER = "hpsearch_worker"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)



@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0  # by the pruner
    diverged: int = 0  # non-finite loss (stored as PRUNED with end_reason "diverged")
    failed: int = 0
    running: int = 0
    waiting: int = 0  # queued: a grid's configurations, retries of a dead worker's trials

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    @property
    def total(self) -> int:
        return self.finished + self.failed + self.running + self.waiting


def count_trials(trials: Iterable[FrozenTrial]) -> TrialCounts:
    counts = dict.fromkeys(("complete", "pruned", "diverged", "failed", "running", "waiting"), 0)
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            key = "diverged" if trial.user_attrs.get(ATTR_END_REASON) == DIVERGED else "pruned"
            counts[key] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed"] += 1
        elif trial.state == TrialState.WAITING:
            counts["waiting"] += 1
        else:
            counts["running"] += 1
    return TrialCounts(**counts)


def worker_seed(study_seed: int, worker: int) -> int:
    """The sampler seed of worker `worker` (0-based): worker 0 uses the study's seed, so one
    worker searches exactly as before; the others get seeds mixed from (seed, worker), so that
    no two workers draw the same random start-up trials."""
    if worker == 0:
        return study_seed
    return int(np.random.SeedSequence([study_seed, worker]).generate_state(1)[0])


def build_sampler(config: StudyConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    sampler = config.sampler
    seed = worker_seed(config.seed, worker)
    if sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.kind == "grid":
        # The grid's configurations are enqueued by `run_search`; this sampler draws nothing.
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models the parameters that occur together (one branch of
        # the conditional space) jointly instead of one by one. LazyTPESampler samples only
        # the groups a trial uses (and, in the cohort engine, fits once per refill): the
        # same model, at a fraction of Optuna's cost.
        return LazyTPESampler(
            seed=seed, n_startup_trials=sampler.startup_trials, multivariate=True,
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
    return stored_study_config(document)


@dataclass(frozen=True)
class SearchOutcome:
    study: optuna.Study
    counts: TrialCounts
    target: int
    ran: int  # trials that ended during this call (finished or failed)
    seconds: float
    workers: int = 1
    engine: str = "reference"  # the engine that ran the trials
    engine_note: str = ""  # why `auto` did not pick the cohort engine
    cohort_size: int = 0

    @property
    def best_trial(self) -> FrozenTrial | None:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return min(complete, key=lambda t: (t.value, t.number)) if complete else None


@dataclass(frozen=True)
class Progress:
    """What a progress display needs, read cheaply from the database."""

    finished: int
    running: int
    failed: int
    best_value: float | None


def run_search(
    config: StudyConfig, storage_url: str, target: int,
    on_progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[TrialCounts], None] | None = None,
    workers: int = 1,
    heartbeat_s: int = HEARTBEAT_S,
    device: str = "cpu",
    engine: str = "reference",
    cohort_size: int = DEFAULT_COHORT_SIZE,
) -> SearchOutcome:
    """Run the study until it has `target` finished trials, in this process (`workers=1`) or
    in `workers` worker processes, with `engine` (see `cohort_search.choose_engine`).
    `on_progress` is called after each trial (each cohort epoch) this process finishes, or with
    workers every `POLL_S` seconds while the counts change. Trials of dead
    workers (heartbeat older than `GRACE_BEATS * heartbeat_s`) are failed first and retried."""
    if target < 1:
        raise ConfigError(f"--trials must be >= 1; got {target}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}")
    if workers > 1 and storage_url == IN_MEMORY:
        raise ConfigError("--workers needs a storage the workers share; an in-memory study "
                          "lives in one process")
    data = config.load_data()
    # Before the study exists: a model that can't train leaves nothing behind.
    check_model(config, data)
    engine, engine_note = choose_engine(engine, config, data)
    if engine == COHORT and cohort_size < 1:
        raise ConfigError(f"--cohort-size must be >= 1; got {cohort_size}")
    study = open_study(config, storage_url, data.fingerprint, heartbeat_s)
    fail_stale_trials(study)
    counts = count_trials(study.get_trials(deepcopy=False))
    if config.sampler.kind == "grid":
        target = min(target, _enqueue_grid(study, config, target))
    if on_start is not None:
        on_start(counts)
    started = time.perf_counter()
    if counts.finished < target:
        report = _ProgressReporter(study, on_progress)
        if workers == 1:
            interruptions = Interruptions()
            previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
            interruptions.install()
            try:
                with _heap_frozen():
                    if engine == COHORT:
                        run_cohort_until_target(study, config, data, target, threading.Lock(),
                                                interruptions, cohort_size, device, WORKER_ID,
                                                on_round_end=report)
                    else:
                        run_until_target(study, Objective(config, data, device, interruptions),
                                         target, threading.Lock(), interruptions,
                                         on_trial_end=report)
            finally:
                if threading.current_thread() is threading.main_thread():
                    for number, handler in previous.items():
                        signal.signal(number, handler)
        else:
            run_workers(_work, workers,
                        (config.as_dict(), data, storage_url, target, heartbeat_s, device,
                         engine, cohort_size),
                        on_poll=report)
    if isinstance(study._storage, WriteBehindStorage):
        # Read afresh: the workers' (and other machines') trials are newer than this snapshot.
        study._storage.forget_snapshots()
    final = count_trials(study.get_trials(deepcopy=False))
    ran = final.finished + final.failed - counts.finished - counts.failed
    return SearchOutcome(study, final, target, ran, time.perf_counter() - started, workers,
                         engine, engine_note, cohort_size if engine == COHORT else 0)


class _ProgressReporter:
    """Calls `on_progress` when the study's counts changed (two COUNT-like queries)."""

    def __init__(self, study: optuna.Study, on_progress: Callable[[Progress], None] | None):
        self.study = study
        self.on_progress = on_progress
        self.last: Progress | None = None

    def __call__(self, *_: Any) -> None:
        if self.on_progress is None:
            return
        states = count_states(self.study)
        finished = sum(states.get(state, 0) for state in FINISHED_STATES)
        best = self.last.best_value if self.last else None
        if self.last is None or states.get(TrialState.COMPLETE, 0) != self._complete:
            with contextlib.suppress(ValueError):  # no complete trial yet
                best = self.study._storage.get_best_trial(self.study._study_id).value
        self._complete = states.get(TrialState.COMPLETE, 0)
        progress = Progress(finished, states.get(TrialState.RUNNING, 0),
                            states.get(TrialState.FAIL, 0), best)
        if progress != self.last:
            self.last = progress
            self.on_progress(progress)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials of the study are in each state, fresh from the database (one query)."""
    storage = study._storage
    if isinstance(storage, WriteBehindStorage):
        return storage.count_states(study._study_id)
    counts: dict[TrialState, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return counts


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers and queue their retries; returns their numbers.

    Stale is Optuna's heartbeat rule (no beat for the grace period, by the database's clock).
    A RUNNING trial that never beat (its worker died between creating it and the first beat,
    or an hpsearch without heartbeats ran it) is stale once this process has seen it beatless
    for the grace period: the clocks of other machines are never compared."""
    storage = study._storage
    study_id = study._study_id
    # In memory there is no other process to die; and a trial can't go stale faster than one
    # heartbeat interval, so checking before every trial would only cost queries.
    if not isinstance(storage, WriteBehindStorage) or not storage.stale_check_due(study_id):
        return []
    grace = GRACE_BEATS * storage.get_heartbeat_interval()
    now = time.monotonic()
    known = _BEATLESS.get(study_id, {})
    seen = {trial_id: known.get(trial_id, now)
            for trial_id in storage.running_without_heartbeat(study_id)}
    _BEATLESS[study_id] = seen
    stale = storage._get_stale_trial_ids(study_id) + [
        trial_id for trial_id, since in seen.items() if now - since >= grace]
    failed = []
    for trial_id in stale:
        # Another worker may have failed it first: then it is not ours to retry.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append(storage.get_trial(trial_id))
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial in failed:
        log.warning("trial %d of %r was running in a worker that stopped beating: marked "
                    "failed and queued again", trial.number, study.study_name)
        retry(study, trial)
    return [trial.number for trial in failed]


# Study id -> {id of a RUNNING trial without heartbeat -> when this process first saw it so}.
_BEATLESS: dict[int, dict[int, float]] = {}


def run_until_target(study: optuna.Study, objective: Callable[[optuna.Trial], float],
                     target: int, slot_lock: SlotLock, interruptions: Interruptions,
                     on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                     ) -> None:
    """Start trials until the study has `target` finished ones (see the module docstring).

    `slot_lock` is shared by the workers of this machine: it is held from counting the trials
    until the new trial exists in the database. A worker that finds every missing trial
    already running waits: if one of those fails (an error, Ctrl-C, a dead worker's trial
    failed by the heartbeat check), a waiting worker takes its place."""
    storage = study._storage
    callbacks = [on_trial_end] if on_trial_end is not None else []
    while True:
        interruptions.check()
        slot_lock.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                slot_lock.release()

        def run(trial: optuna.Trial) -> float:
            release()  # the trial is in the database: other workers may count it now
            # Written with the trial's parameters, before it trains (see Objective).
            storage.set_trial_system_attr(trial._trial_id, ATTR_WORKER, WORKER_ID)
            return objective(trial)  # interruptible while it trains (see Objective)

        try:
            fail_stale_trials(study)
            states = count_states(study)
            finished = sum(states.get(state, 0) for state in FINISHED_STATES)
            if finished >= target:
                return
            has_room = finished + states.get(TrialState.RUNNING, 0) < target
            if has_room:
                try:
                    # A torch error in one configuration fails that trial, not the search.
                    study.optimize(run, n_trials=1, callbacks=callbacks, catch=(RuntimeError,))
                except optuna.exceptions.UpdateFinishedTrialError:
                    log.warning("a trial of this worker was failed by another worker's "
                                "heartbeat check (this one was too slow to beat); its retry "
                                "is queued")
        finally:
            release()
        if not has_room:
            time.sleep(POLL_S)


def _work(worker: int, slot_lock: SlotLock, interruptions: Interruptions,
          document: dict[str, Any], data: Dataset, storage_url: str, target: int,
          heartbeat_s: int, device: str, engine: str, cohort_size: int) -> None:
    """One worker process: the study's config, the parent's data (loading it again would cost
    each worker a second of importing scikit-learn), a storage of its own, its own sampler
    seed, the shared loop."""
    config = stored_study_config(document)
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s)
    try:
        study = optuna.load_study(study_name=config.name, storage=storage,
                                  sampler=build_sampler(config, worker),
                                  pruner=build_pruner(config))
        with _heap_frozen():
            if engine == COHORT:
                run_cohort_until_target(study, config, data, target, slot_lock, interruptions,
                                        cohort_size, device, WORKER_ID)
            else:
                run_until_target(study, Objective(config, data, device, interruptions), target,
                                 slot_lock, interruptions)
    finally:
        close_storage(storage)


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the garbage collector's full collections off the objects that exist before the
    search (torch's, Optuna's, SQLAlchemy's, the data): measured, each full collection of that
    heap took about 0.2 s, a tenth of a 200-trial cohort search on wine, and whether a search
    hit one was luck. What the search allocates is collected as before."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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


def retrain_trial(study_name: str, storage_url: str, number: int,
                  device: str | None = None) -> Retrained:
    """Train trial `number` of a stored study again: same config, parameters and seed, on
    `device` (default: the device the trial ran on; trials that predate devices ran on the CPU).

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
    device = device or trial.user_attrs.get(ATTR_DEVICE, "cpu")
    run = train_configuration(config, config.load_data(), params, seed, device=device)
    epoch = max(trial.intermediate_values, default=None)
    history = run.result.history
    retrained = history[epoch - 1].val_loss if epoch and epoch <= len(history) else None
    stored = trial.intermediate_values[epoch] if epoch else None
    return Retrained(trial, params, run, epoch, stored, retrained)
