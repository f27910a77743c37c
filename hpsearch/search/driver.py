"""The search driver: the one loop that runs every search, whichever engine trains it.

    refill: ask trials for the engine's free slots while the study needs them (under the
            slot lock of this machine's workers: count, then create), draw their parameters,
            write them, add them to the engine as members
    round:  the engine trains one more epoch of every member
    judge:  every member's validation loss is reported, then the study's pruner judges each
            (every decision of a round sees the same trials; see `search.pruning`)
    end:    ended members (pruned, diverged, failed, or at their last epoch) get their user
            attrs, are told, and leave the engine; their slots are refilled
    stop:   at the target number of finished trials; on Ctrl-C or an error, what is running
            ends FAILED (the next run retries it)

`--trials N` is the study's target number of FINISHED trials (complete + pruned + diverged):
running the same command again after an interruption runs only what is missing, and a failed
trial (an error, or the trial that was running at Ctrl-C) does not count, so it is retried.

Many workers (processes on this machine with `workers=N`, or `hpsearch optimize` on several
machines sharing one database) run this same loop: a worker starts a trial only while
finished + running < target, and otherwise waits for the running ones. On one machine the
check and the trials' creation happen under one lock, so the study ends with exactly the
target; workers on other machines can each slip in trials between another's check and its
creation, so the most a study can overshoot is (workers on all machines - 1) x the engine's
slots.

An engine with one slot (the reference engine) runs one trial at a time; the cohort engine
fills up to `cohort_size` slots and refills once a quarter of them is free (a refill's sampler
fits and transactions have a cost that hardly grows with its trials, so fewer, larger refills
pay it less often; docs/benchmarks.md). TPE samples with `constant_liar`, so trials asked
while others run are spread out. Until the pruner has its startup trials complete it prunes
nothing, so a cohort starts with that many members (see `search.pruning.startup_trials`).

Every call to the storage goes through its port (`storage.port`); a trial's records are the
ones `records` names.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from statistics import fmean as mean
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.data import REGRESSION
from hpsearch.engines import Engine, EpochOutcome, Member
from hpsearch.params import Value
from hpsearch.records import (
    ATTR_FOLD,
    ATTR_SEED,
    ATTR_TEST_ACCURACY,
    ATTR_TEST_LOSS,
    ATTR_VAL_RMSE,
    ATTR_WORKER,
    COMPLETED,
    DIVERGED,
    FAILED,
    FINISHED_STATES,
    INTERRUPTED_DETAIL,
    PRUNED,
    ended_user_attrs,
    evaluation_runs,
    pruned_detail,
    run_seed,
    run_user_attrs,
)
from hpsearch.search.lazy_tpe import LazyTPESampler
from hpsearch.search.pruning import Curve, PairedPruning, RoundPruner, startup_trials
from hpsearch.search.workers import POLL_S, Interruptions, SlotLock
from hpsearch.storage.port import StoragePort, port_for_study
from hpsearch.training import EpochStats

log = logging.getLogger(__name__)
# Under Optuna's logger, so that `-v` (Optuna's INFO) shows every trial's end as Optuna's own
# `study.optimize` logs it.
trial_log = logging.getLogger("optuna.hpsearch")

# A running engine is refilled once 1/REFILL_AT of its slots are free.
REFILL_AT = 4


@dataclass(eq=False)
class _Running:
    """A trial in training: its runs (the engine's members, in lock-step: they joined
    together and train an epoch each per round) and, epoch by epoch, their mean."""

    trial: optuna.Trial
    members: list[Member]
    history: list[EpochStats] = field(default_factory=list)
    curve: Curve | None = None  # what the pruner reads of the mean curve


class SearchDriver:
    """Runs `study`'s trials on `engine` until the study has `target` finished trials (see
    the module docstring): `slots` trials at a time, each trained as the runs of
    `config.evaluation` (a confirmation's queued trials: the one run they were queued with)."""

    def __init__(self, study: optuna.Study, config: StudyConfig, engine: Engine,
                 slots: int, interruptions: Interruptions, worker_id: str = "",
                 on_change: Callable[[], None] | None = None, queued_only: bool = False,
                 measure_test: bool = False):
        self.study = study
        self.config = config
        self.engine = engine
        self.slots = slots
        self.interruptions = interruptions
        self.worker_id = worker_id
        self.on_change = on_change
        self.port: StoragePort = port_for_study(study)
        self.pruner = RoundPruner(study)
        self.running: list[_Running] = []  # in the order they joined
        self.runs = evaluation_runs(config.evaluation)
        self.recount_at = 0.0  # no study count before this (monotonic) time
        self.paired = (PairedPruning(config.pruner.warmup_epochs, config.pruner.p_threshold)
                       if config.pruner.kind == "paired" and not queued_only else None)
        self.startup = (startup_trials(config.pruner)
                        if self.pruner.prunes or self.paired else 0)
        # Run only the study's queued trials (a confirmation's runs), never sample new ones.
        self.queued_only = queued_only
        # Measure each completed trial on the held-out test split (a confirmation's runs).
        self.measure_test = measure_test
        self.queue_empty = False  # queued_only, and nothing was left in the queue

    def run(self, target: int, slot_lock: SlotLock) -> None:
        heartbeat = _Heartbeat(self.port)
        try:
            while True:
                self.interruptions.check()
                finished = self.refill(target, slot_lock)
                heartbeat.running([r.trial for r in self.running])
                if not self.running:
                    # Nothing to write our last ends with: now, for the other workers.
                    self.port.write_deferred()
                    if finished is not None and (finished >= target or self.queue_empty):
                        return
                    time.sleep(POLL_S)  # the missing trials run elsewhere; one may fail
                    continue
                with self.interruptions.interruptible():
                    outcomes = self.engine.run_epoch()
                if self.end_round(outcomes) and self.on_change is not None:
                    self.on_change()
        except BaseException as exc:
            # Ctrl-C or an error: the running trials end FAILED, so that the next run
            # retries them.
            self.fail_all(INTERRUPTED_DETAIL if isinstance(exc, KeyboardInterrupt) else
                          f"the search stopped: {type(exc).__name__}: {exc}".splitlines()[0])
            raise
        finally:
            heartbeat.stop()

    # -- refill -----------------------------------------------------------------------------
    def refill(self, target: int, slot_lock: SlotLock) -> int | None:
        """Ask trials for the free slots while the study needs them; returns the number of
        finished trials, or None when it did not count them."""
        capacity = self.slots if self.startup == 0 else min(self.slots, self.startup)
        free = capacity - len(self.running)
        # A full study gets room again only when another worker's trial fails (our own ends
        # move a trial from running to finished): counting it every round would cost a query
        # per epoch at the end of every search. With nothing running, count at once (the
        # study may be done).
        if self.running and (free < max(1, capacity // REFILL_AT)
                             or time.monotonic() < self.recount_at):
            return None
        joining: list[_Running] = []
        with _held(slot_lock):
            self.port.fail_stale(self.study)
            states = self.port.count_states(self.study)
            finished = sum(states.get(state, 0) for state in FINISHED_STATES)
            room = target - finished - states.get(TrialState.RUNNING, 0)
            if states.get(TrialState.COMPLETE, 0) >= self.startup:
                self.startup = 0  # the pruner is at work: every slot is used
                free = self.slots - len(self.running)
            if room <= 0:
                self.recount_at = time.monotonic() + POLL_S
            asking = max(0, min(free, room))
            if self.queued_only:
                asking = min(asking, states.get(TrialState.WAITING, 0))
            queued = min(states.get(TrialState.WAITING, 0), asking)
            # Nothing more to run here: what runs elsewhere is the other workers' to end.
            self.queue_empty = self.queued_only and states.get(TrialState.WAITING, 0) == queued
            sampler = self.study.sampler
            batch = sampler.batch(asking) if isinstance(sampler, LazyTPESampler) else \
                contextlib.nullcontext()
            with batch:
                trials = self.port.ask(self.study, asking, queued)
                for index, trial in enumerate(trials):
                    # One by one: each trial's parameters are drawn before the next one's
                    # (the ones not drawn yet have none, which TPE's liars skip).
                    params = self.config.space.suggest(trial)
                    if self.worker_id:
                        self.port.set_worker(trial, ATTR_WORKER, self.worker_id)
                    joining.append(self._start(trial, params, index < queued))
            if joining:
                self.port.configured(trials, queued)
        try:
            self.engine.add([member for running in joining for member in running.members])
        except BaseException:
            # Not yet running (`fail_all` won't see them): they end FAILED here, not as stale
            # trials that would be retried with the same configuration.
            for running in joining:
                with contextlib.suppress(Exception):
                    self.port.tell(self.study, running.trial, state=TrialState.FAIL)
            raise
        self.running += joining
        return finished

    def _start(self, trial: optuna.Trial, params: dict[str, Value], queued: bool) -> _Running:
        """The trial's runs as members: the study's evaluation runs, or the one run a
        confirmation queued it with (its seed and fold as user attrs)."""
        running = _Running(trial, [])
        attrs = trial.user_attrs if queued else {}
        if ATTR_SEED in attrs:
            running.members = [Member(running, params, int(attrs[ATTR_SEED]),
                                      int(attrs.get(ATTR_FOLD, 0)))]
        else:
            running.members = [
                Member(running, params, run_seed(self.config.seed, trial.number, run,
                                                 len(self.runs)), run.fold)
                for run in self.runs]
        return running

    # -- a round's end ----------------------------------------------------------------------
    def end_round(self, outcomes: list[EpochOutcome]) -> bool:
        """Report, judge and end the round's trials (each the mean of its runs' epoch); True
        if any trial ended."""
        by_trial: dict[_Running, list[EpochOutcome]] = {}
        for outcome in outcomes:
            by_trial.setdefault(outcome.member.key, []).append(outcome)
        stopped: dict[_Running, tuple[str, str]] = {}  # failed or diverged, and why
        reported: list[_Running] = []
        for running, runs in by_trial.items():
            failed = next((o.error for o in runs if o.error), "")
            diverged = next((o.diverged for o in runs if o.stats is None and not o.error), "")
            if failed or diverged:
                stopped[running] = (FAILED, failed) if failed else (DIVERGED, diverged)
            else:
                running.history.append(mean_stats([o.stats for o in runs]))
                reported.append(running)
        # Every report first: the pruner judges on the same trials.
        refused = self.port.report([(r.trial, r.history[-1].epoch, r.history[-1].val_loss)
                                    for r in reported])
        lost = [r for r in reported if r.trial.number in refused]
        for running in lost:
            _warn_lost(running.trial.number)
        judged = [r for r in reported if r.trial.number not in refused]
        prune = dict(zip(judged, self._decide(judged), strict=True))
        ended: list[tuple[_Running, str, str]] = []
        epochs = self.config.training.epochs
        for running in by_trial:  # in the engine's order
            if running in stopped:
                ended.append((running, *stopped[running]))
            elif running not in prune:
                continue  # lost
            elif prune[running]:
                ended.append((running, PRUNED, pruned_detail(self.config.pruner.kind,
                                                             running.history[-1].epoch)))
            elif running.history[-1].epoch == epochs:
                ended.append((running, COMPLETED, ""))
        completed = [running for running, reason, _ in ended if reason == COMPLETED]
        measured = self._measure(completed) if self.measure_test else {}
        with self.port.ending():
            for running, reason, detail in ended:
                self._end(running, reason, detail, measured.get(running))
        leaving = {*lost, *(running for running, _, _ in ended)}
        if leaving:
            self.engine.remove([m for running in leaving for m in running.members])
            self.running = [r for r in self.running if r not in leaving]
        return bool(leaving)

    def _decide(self, judged: list[_Running]) -> list[bool]:
        """The pruner's decision for each judged trial, on the study as it is now."""
        if self.paired is not None:
            if self.startup:  # the startup trials are not all complete yet
                return [False] * len(judged)
            return [self.paired.prunes(r.history[-1].epoch,
                                       [m.history[-1].val_loss for m in r.members])
                    for r in judged]
        if not self.pruner.remembers:
            return self.pruner.decide([self.port.trial(r.trial) for r in judged])
        for running in judged:
            last = running.history[-1]
            running.curve = Curve.extended(running.curve, last.epoch, last.val_loss,
                                           self.pruner.direction)
        return self.pruner.decide_curves([running.curve for running in judged])

    def _measure(self, completed: list[_Running]) -> dict[_Running, tuple[float, float | None]]:
        """Each completed trial's test loss and accuracy: the mean over its runs."""
        members = [member for running in completed for member in running.members]
        by_member = dict(zip(members, self.engine.measure(members), strict=True))
        measured = {}
        for running in completed:
            losses, accuracies = zip(*(by_member[m] for m in running.members), strict=True)
            measured[running] = (mean(losses), None if accuracies[0] is None
                                 else mean(accuracies))
        return measured

    def _end(self, running: _Running, reason: str, detail: str,
             test: tuple[float, float | None] | None = None) -> None:
        trial = running.trial
        attrs = ended_user_attrs(running.history, running.members[0].seed, reason, detail,
                                 self.engine.device.type, self.engine.name)
        if len(running.members) > 1:
            attrs |= run_user_attrs([m.history for m in running.members],
                                    len(running.history))
        rmse = self._rmse(running)
        if rmse is not None:
            attrs[ATTR_VAL_RMSE] = rmse
        if test is not None:
            attrs[ATTR_TEST_LOSS] = test[0]
            if test[1] is not None:
                attrs[ATTR_TEST_ACCURACY] = test[1]
        self.port.set_user_attrs(trial, attrs)
        if reason == COMPLETED:
            value = running.history[-1].val_loss
            if self.paired is not None:
                self.paired.completed(value, [[s.val_loss for s in m.history]
                                              for m in running.members])
            told = self.port.tell(self.study, trial, value)
            trial_log.info("Trial %d finished with value: %s and parameters: %s.",
                           trial.number, value, trial.params)
        elif reason == FAILED:
            told = self.port.tell(self.study, trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, detail)
        else:
            told = self.port.tell(self.study, trial, state=TrialState.PRUNED)
            trial_log.info("Trial %d pruned. %s", trial.number, detail)
        if not told:
            _warn_lost(trial.number)

    def _rmse(self, running: _Running) -> float | None:
        """A regression trial's validation loss in the target's own units: the mean over its
        runs of each run's RMSE at its last epoch (each fold has its own target scale); None
        for classification, or where there is no finite loss."""
        data, epochs = self.engine.data, len(running.history)
        if data.task != REGRESSION or epochs == 0:
            return None
        errors = [data.fold(m.fold).preprocessing.rmse(m.history[epochs - 1].val_loss)
                  for m in running.members]
        return mean(errors) if all(math.isfinite(e) for e in errors) else None

    def fail_all(self, detail: str = INTERRUPTED_DETAIL) -> None:
        for running in self.running:
            with contextlib.suppress(Exception):
                self.port.set_user_attrs(running.trial, ended_user_attrs(
                    running.history, running.members[0].seed, FAILED, detail,
                    self.engine.device.type, self.engine.name))
                self.port.tell(self.study, running.trial, state=TrialState.FAIL)
        # The ends already decided still count (with the first tell above, or now).
        with contextlib.suppress(Exception):
            self.port.write_deferred()


def mean_stats(runs: list[EpochStats]) -> EpochStats:
    """One epoch of a trial: the mean over its runs (a single run's own stats), the learning
    rate its first run's (every run follows the same schedule, but for ReduceLROnPlateau)."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    accuracy = None if first.val_accuracy is None else mean(r.val_accuracy for r in runs)
    return EpochStats(first.epoch, first.lr, mean(r.train_loss for r in runs),
                      mean(r.val_loss for r in runs), accuracy)


class _Heartbeat:
    """Beats for the running trials every heartbeat interval, in a thread of its own: an
    epoch of a large model can take longer than the grace period after which other workers
    take a silent trial for a dead worker's."""

    def __init__(self, port: StoragePort):
        self.port = port
        self.interval = port.heartbeat_s
        self._trials: tuple[optuna.Trial, ...] = ()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="hpsearch-heartbeat",
                                            daemon=True)
            self._thread.start()

    def running(self, trials: list[optuna.Trial]) -> None:
        self._trials = tuple(trials)  # replaced whole: the thread reads a snapshot

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            trials = self._trials
            if not trials:
                continue
            try:
                self.port.beat(trials)
            except Exception as exc:  # the database is away: the next beat tries again
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


def _warn_lost(number: int) -> None:
    log.warning("trial %d was failed by another worker's heartbeat check (this one was too "
                "slow to beat); its retry is queued", number)


@contextlib.contextmanager
def _held(lock: SlotLock) -> Iterator[Any]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
