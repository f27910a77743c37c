"""A search from start to end: check the study's model, choose the engine, open (or resume) the
study, fail what dead workers left running, then run the driver to the target, in this process
or in worker processes, and say what happened."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudyConfig, stored_study_config
from hpsearch.data import REGRESSION, Dataset
from hpsearch.engines import (
    AUTO,
    COHORT,
    DEFAULT_COHORT_SIZE,
    REFERENCE,
    build_engine,
    choose_engine,
)
from hpsearch.errors import ConfigError
from hpsearch.records import (
    ATTR_WORKER,
    FINISHED_STATES,
    TrialCounts,
    best_of,
    count_trials,
)
from hpsearch.search.driver import SearchDriver
from hpsearch.search.pruning import build_pruner
from hpsearch.search.samplers import build_sampler
from hpsearch.search.workers import Interruptions, SlotLock, run_workers
from hpsearch.storage.port import port_for_study
from hpsearch.storage.urls import (
    HEARTBEAT_S,
    IN_MEMORY,
    close_storage,
    reopen_storage,
    storage_errors,
)
from hpsearch.studies import open_study, stored_document
from hpsearch.training import check_model, resolve_device


def worker_id(pid: int) -> str:
    """Which process ran a trial (its `ATTR_WORKER`), to tell whose trial went stale and what
    a command ran: "host:pid"."""
    return f"{socket.gethostname()}:{pid}"


WORKER_ID = worker_id(os.getpid())

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        return best_of(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


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
    on_start: Callable[[TrialCounts, Dataset], None] | None = None,
    workers: int = 1,
    heartbeat_s: int = HEARTBEAT_S,
    device: str | torch.device = AUTO,
    engine: str = AUTO,
    cohort_size: int = DEFAULT_COHORT_SIZE,
    on_underway: Callable[[], None] | None = None,
) -> SearchOutcome:
    """Run the study until it has `target` finished trials, in this process (`workers=1`) or
    in `workers` worker processes, with `engine` (see `engines.choose_engine`) on `device`.
    `on_progress` is called when this process ended trials (after a round), or with workers
    every `POLL_S` seconds while the counts change; `on_underway` once, at the first of those
    moments (by then the search has imported all it imports). Trials of dead workers (no
    heartbeat for `GRACE_BEATS * heartbeat_s`) are failed first and retried."""
    if target < 1:
        raise ConfigError(f"--trials must be >= 1; got {target}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}")
    if workers > 1 and storage_url == IN_MEMORY:
        raise ConfigError("--workers needs a storage the workers share; an in-memory study "
                          "lives in one process")
    data = config.load_data()
    config, data = _with_stored_target(config, data, storage_url)
    # Before the study exists: a model that can't train, or a device this machine lacks,
    # leaves nothing behind.
    check_model(config, data)
    device_type = resolve_device(device).type
    engine, engine_note = choose_engine(engine, config, data)
    if engine == COHORT and cohort_size < 1:
        raise ConfigError(f"--cohort-size must be >= 1; got {cohort_size}")
    with storage_errors(storage_url):
        study = open_study(config, storage_url, data.fingerprint, heartbeat_s)
        port = port_for_study(study)
        port.fail_stale(study)
        before = study.get_trials(deepcopy=False)
        counts = count_trials(before)
        # The trials this call may run: new ones, and the ones queued before it started.
        first = len(before)
        queued = {t.number for t in before if t.state == TrialState.WAITING}
        if config.sampler.kind == "grid":
            target = min(target, _enqueue_grid(study, config, target))
        if on_start is not None:
            on_start(counts, data)
        started = time.perf_counter()
        ran_by: set[str] = set()
        if counts.finished < target:
            settings = DriveSettings(study.study_name, storage_url, target, engine,
                                     cohort_size, device_type, heartbeat_s)
            ran_by = drive(study, config, data, settings, workers,
                           _ProgressReporter(study, on_progress, on_underway))
        # Read afresh: the workers' (and other machines') trials are newer than any snapshot.
        port.refresh()
        trials = study.get_trials(deepcopy=False)
        final = count_trials(trials)
        # This command's own trials: another command sharing the study runs its own.
        ran = sum(t.state.is_finished() and t.system_attrs.get(ATTR_WORKER) in ran_by
                  and (t.number >= first or t.number in queued) for t in trials)
    return SearchOutcome(study, final, target, ran, time.perf_counter() - started, workers,
                         engine, engine_note, cohort_size if engine == COHORT else 0)


def _with_stored_target(config: StudyConfig, data: Dataset,
                        storage_url: str) -> tuple[StudyConfig, Dataset]:
    """The config and data to resume with: a regression study stored before its config
    recorded `scale_target` trained on the raw target, and resumes on it unchanged, from a
    study file that now means a scaled target as from one that says `scale_target = false`."""
    if data.task != REGRESSION or not config.data.scale_target or storage_url == IN_MEMORY:
        return config, data
    document = stored_document(storage_url, config.name)
    if document is None or "scale_target" in document.get("data", {}):
        return config, data
    raw = replace(config, data=replace(config.data, scale_target=False))
    return raw, raw.load_data()


@dataclass(frozen=True)
class DriveSettings:
    """How processes drive a study to its target (picklable: each worker gets a copy)."""

    study_name: str
    storage_url: str
    target: int
    engine: str  # as `choose_engine` resolved it
    cohort_size: int
    device: str  # cpu | cuda | mps
    heartbeat_s: int = HEARTBEAT_S
    # A confirmation: the study's queued runs only, unpruned, each measured on the test split.
    confirmation: bool = False


# What an engine's first epoch would import otherwise: torch.optim's first optimizer imports
# torch._dynamo, a long import during which a stop signal could not end the worker.
WORKER_IMPORTS = {REFERENCE: ("torch._dynamo",)}


def drive(study: optuna.Study, config: StudyConfig, data: Dataset, settings: DriveSettings,
          workers: int = 1, on_change: Callable[[], None] | None = None) -> set[str]:
    """Run the driver on `study` until it has `settings.target` finished trials: in this
    process (Ctrl-C and SIGTERM stop it cleanly), or in `workers` worker processes, each with
    a storage connection, sampler and engine of its own. `on_change` is called when this
    process ended trials, or with workers every poll while they run. Returns the worker ids
    (`ATTR_WORKER`) of the processes that ran trials: what this call ran, where other commands
    share the study."""
    if workers > 1:
        pids = run_workers(_work, workers, (config.as_dict(), data, settings),
                           on_poll=on_change or (lambda: None),
                           imports=WORKER_IMPORTS.get(settings.engine, ()))
        return {worker_id(pid) for pid in pids}
    interruptions = Interruptions()
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    interruptions.install()
    try:
        _drive(study, config, data, settings, threading.Lock(), interruptions, on_change)
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in previous.items():
                signal.signal(number, handler)
    return {WORKER_ID}


def _drive(study: optuna.Study, config: StudyConfig, data: Dataset, settings: DriveSettings,
           slot_lock: SlotLock, interruptions: Interruptions,
           on_change: Callable[[], None] | None = None) -> None:
    """The driver over the chosen engine, with a slot per member it trains at once."""
    trainer = build_engine(settings.engine, config, data, settings.device)
    slots = settings.cohort_size if settings.engine == COHORT else 1
    with _heap_frozen():
        SearchDriver(study, config, trainer, slots, interruptions, WORKER_ID, on_change,
                     queued_only=settings.confirmation,
                     measure_test=settings.confirmation).run(settings.target, slot_lock)


class _ProgressReporter:
    """Calls `on_underway` the first time it is called, and `on_progress` when the study's
    counts changed (two COUNT-like queries)."""

    def __init__(self, study: optuna.Study, on_progress: Callable[[Progress], None] | None,
                 on_underway: Callable[[], None] | None = None):
        self.study = study
        self.port = port_for_study(study)
        self.on_progress = on_progress
        self.on_underway = on_underway
        self.last: Progress | None = None
        self._complete = 0

    def __call__(self, *_: Any) -> None:
        if self.on_underway is not None:
            underway, self.on_underway = self.on_underway, None
            underway()
        if self.on_progress is None:
            return
        states = self.port.count_states(self.study)
        finished = sum(states.get(state, 0) for state in FINISHED_STATES)
        best = self.last.best_value if self.last else None
        if self.last is None or states.get(TrialState.COMPLETE, 0) != self._complete:
            best = self.port.best_value(self.study)
        self._complete = states.get(TrialState.COMPLETE, 0)
        progress = Progress(finished, states.get(TrialState.RUNNING, 0),
                            states.get(TrialState.FAIL, 0), best)
        if progress != self.last:
            self.last = progress
            self.on_progress(progress)


def _work(worker: int, slot_lock: SlotLock, interruptions: Interruptions,
          document: dict[str, Any], data: Dataset, settings: DriveSettings) -> None:
    """One worker process: the study's config, the parent's data (loading it again would cost
    each worker the import of scikit-learn), a storage of its own, its own sampler seed, the
    driver."""
    config = stored_study_config(document)
    storage = reopen_storage(settings.storage_url, heartbeat_s=settings.heartbeat_s)
    try:
        if settings.confirmation:
            sampler, pruner = confirmation_sampler_and_pruner()
        else:
            sampler, pruner = build_sampler(config, worker), build_pruner(config)
        with storage_errors(settings.storage_url):
            study = optuna.load_study(study_name=settings.study_name, storage=storage,
                                      sampler=sampler, pruner=pruner)
            _drive(study, config, data, settings, slot_lock, interruptions)
    finally:
        close_storage(storage)


def confirmation_sampler_and_pruner() -> tuple[optuna.samplers.BaseSampler,
                                               optuna.pruners.BasePruner]:
    """A confirmation's runs are queued with their parameters (the sampler draws nothing) and
    train to the end (nothing is pruned)."""
    return optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner()


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the garbage collector's full collections off the objects that exist before the
    search (torch's, Optuna's, SQLAlchemy's, the data): each full collection of that heap
    takes a noticeable share of a short search, and whether a search hits one is luck. What
    the search allocates is collected as usual."""
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
