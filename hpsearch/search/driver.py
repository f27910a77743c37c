"""The cohort engine's search: ask trials into a cohort, train them together, and report,
prune and tell each member as the reference engine's objective does for one trial.

Per round (one epoch of every member): the members' validation losses are reported, then the
study's pruner judges each member (every decision of a round sees the same trials; see
`search.pruning`); ended members (pruned, diverged, or at their last epoch) are told and leave
the cohort, and freed slots are refilled with newly asked trials (continuous batching: each
member has its own epoch count). TPE samples with `constant_liar`, so trials asked while
others run are spread out. The cohort starts with the pruner's startup trials (see
`_CohortSearch`).

A trial here is an ordinary Optuna trial with the reference engine's parameters, seed, values
and user attrs (plus `engine = "cohort"`): reports, the dashboard and `hpsearch train --trial`
read it like any other. The database sees one transaction a second for every member's records
(the write-behind storage), one for a refill's parameters and one per heartbeat round; the
ended members' ends go with the next of these (counted as ended here at once).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudyConfig
from hpsearch.data import Dataset
from hpsearch.engines.cohort import Cohort, EpochOutcome, Member, why_not_cohort
from hpsearch.errors import ConfigError
from hpsearch.objective import PRUNED, trial_seed, trial_user_attrs
from hpsearch.search.lazy_tpe import LazyTPESampler
from hpsearch.search.pruning import Curve, RoundPruner
from hpsearch.search.workers import POLL_S, Interruptions, SlotLock
from hpsearch.storage.write_behind import WriteBehindStorage
from hpsearch.training import COMPLETED, DIVERGED, FitResult

log = logging.getLogger(__name__)

ENGINES = ("auto", "reference", "cohort")
COHORT = "cohort"
REFERENCE = "reference"
# Trials trained at once. More is faster per trial where a round's fixed cost dominates
# (wine: 64 at a time took a fifth less time than 32), but trials asked together learn nothing
# from each other: on digits, 64 was 5% faster and its 10 best trials were worse in 4 of 5
# seeded 200-trial searches (`scripts/bench_cohort.py --part quality`; docs/benchmarks.md).
DEFAULT_COHORT_SIZE = 32

# A running cohort is refilled once 1/REFILL_AT of its slots are free: a refill's fits and
# transactions cost about as much for 8 trials as for 4. A quarter (vs an eighth) took 4-9%
# less time on wine; the 10 best trials were as good on wine, better on digits at the median
# (3 and 5 seeds of 5 in two comparisons), mixed on breast cancer (docs/benchmarks.md).
REFILL_AT = 4
ATTR_ENGINE = "engine"  # user attr of the cohort engine's trials
# Pruners that prune nothing until `startup_trials` trials completed.
PRUNERS_WITH_STARTUP = ("median", "percentile", "patient")


def choose_engine(engine: str, config: StudyConfig, data: Dataset) -> tuple[str, str]:
    """The engine that runs `config`'s trials, and why the cohort engine doesn't (or "")."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == REFERENCE:
        return REFERENCE, ""
    reason = why_not_cohort(config, data)
    if reason is None:
        return COHORT, ""
    if engine == COHORT:
        raise ConfigError(f"--engine cohort cannot train study {config.name!r}: {reason}")
    return REFERENCE, reason


def run_cohort_until_target(
    study: optuna.Study, config: StudyConfig, data: Dataset, target: int,
    slot_lock: SlotLock, interruptions: Interruptions, cohort_size: int = DEFAULT_COHORT_SIZE,
    device: str | torch.device = "cpu", worker_id: str = "",
    on_round_end: Callable[[optuna.Study, FrozenTrial | None], None] | None = None,
) -> None:
    """Train trials in cohorts of `cohort_size` until the study has `target` finished ones
    (the same rule as `study.run_until_target`: one machine's workers never overshoot)."""
    cohort = Cohort(config, data, device)
    device_type = cohort.device.type
    search = _CohortSearch(study, config, cohort, worker_id)
    try:
        while True:
            interruptions.check()
            finished = search.refill(cohort_size, target, slot_lock)
            if not len(cohort):
                # Nothing to write our last ends with: now, for the other workers.
                search.write_deferred_ends()
                if finished is not None and finished >= target:
                    return
                time.sleep(POLL_S)  # the missing trials run elsewhere; one of them may fail
                continue
            with interruptions.interruptible():
                outcomes = cohort.run_epoch()
            if search.end_round(outcomes, device_type) and on_round_end is not None:
                on_round_end(study, None)
    except BaseException:
        # Ctrl-C or an error: the cohort's trials end FAILED, as an interrupted trial of the
        # reference engine does, so that the next run retries them.
        search.fail_all()
        raise


class _CohortSearch:
    """The Optuna side of a cohort: its trials, their reports, pruning and ends."""

    def __init__(self, study: optuna.Study, config: StudyConfig, cohort: Cohort,
                 worker_id: str):
        self.study = study
        self.config = config
        self.cohort = cohort
        self.worker_id = worker_id
        self.storage = study._storage
        self.pruner = RoundPruner(study)
        self.curves: dict[int, Curve] = {}  # id(member) -> its curve, as the pruner reads it
        self.beat_s = self.storage.get_heartbeat_interval() if isinstance(
            self.storage, WriteBehindStorage) else None
        self.last_beat = time.monotonic()
        self.recount_at = 0.0  # no study count before this (monotonic) time
        # Until the pruner has its startup trials complete, it prunes nothing: a full cohort
        # would train every member of the first rounds to the last epoch (the reference
        # engine prunes from the startup trials' end on). So the cohort starts with that many
        # members, and fills up once they complete.
        self.startup = (config.pruner.startup_trials
                        if config.pruner.kind in PRUNERS_WITH_STARTUP else 0)

    def refill(self, cohort_size: int, target: int, slot_lock: SlotLock) -> int | None:
        """Ask trials for the cohort's free slots while the study needs them; returns the
        number of finished trials, or None when it did not count them."""
        # Imported here: `study` runs this engine, and these are its helpers.
        from hpsearch.studies import ATTR_WORKER, FINISHED_STATES, count_states, fail_stale_trials

        capacity = cohort_size if self.startup == 0 else min(cohort_size, self.startup)
        free = capacity - len(self.cohort)
        self._beat()
        # A refill costs a TPE fit per group and a few transactions whatever its size, so a
        # running cohort waits until a quarter of it is free. A full study gets room again
        # only when another worker's trial fails (our own ends move a trial from running to
        # finished): counting it every round would cost a query per epoch at the end of
        # every search. An empty cohort counts at once (it may be done).
        if len(self.cohort) and (free < max(1, capacity // REFILL_AT)
                                 or time.monotonic() < self.recount_at):
            return None
        joining = []
        with _held(slot_lock):
            fail_stale_trials(self.study)
            states = count_states(self.study)
            finished = sum(states.get(state, 0) for state in FINISHED_STATES)
            room = target - finished - states.get(TrialState.RUNNING, 0)
            if states.get(TrialState.COMPLETE, 0) >= self.startup:
                self.startup = 0  # the pruner is at work: the cohort fills up
                free = cohort_size - len(self.cohort)
            if room <= 0:
                self.recount_at = time.monotonic() + POLL_S
            asking = max(0, min(free, room))
            waiting = min(states.get(TrialState.WAITING, 0), asking)
            sampler = self.study.sampler
            batch = sampler.batch(asking) if isinstance(sampler, LazyTPESampler) else \
                contextlib.nullcontext()
            with batch:
                for trial in self._ask(asking, waiting):
                    # One by one: each trial's parameters are drawn before the next one's
                    # (the ones not drawn yet have none, which TPE's liars skip).
                    params = self.config.space.suggest(trial)
                    if self.worker_id:
                        self.storage.set_trial_system_attr(trial._trial_id, ATTR_WORKER,
                                                           self.worker_id)
                    joining.append(Member(trial, params, trial_seed(self.config.seed,
                                                                    trial.number)))
            if joining and isinstance(self.storage, WriteBehindStorage):
                # The configurations reach the database before training (a dead worker's
                # trials are retried with them), in one transaction. Created trials beat
                # from their creation on; queued ones taken here beat now.
                self.storage.flush_trials([m.key._trial_id for m in joining])
                self.storage.record_heartbeats([m.key._trial_id for m in joining[:waiting]])
        try:
            self.cohort.add(joining)
        except BaseException:
            # Not yet members (`fail_all` won't see them): they end FAILED here, not as stale
            # trials that would be retried with the same configuration.
            for member in joining:
                with contextlib.suppress(Exception):
                    self.study.tell(member.key, state=TrialState.FAIL)
            raise
        return finished

    def _ask(self, count: int, waiting: int) -> list[optuna.Trial]:
        """`count` new trials: queued ones (retries of dead workers' trials) first, as
        `study.ask` takes them, and the rest created in one transaction."""
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize: this loop beats for
            # its trials itself (`_beat`).
            warnings.filterwarnings("ignore", "Heartbeat of storage")
            if not isinstance(self.storage, WriteBehindStorage):
                return [self.study.ask() for _ in range(count)]
            asked = [self.study.ask() for _ in range(min(count, waiting))]
        created = self.storage.create_running_trials(self.study._study_id, count - len(asked))
        self.study._thread_local.cached_all_trials = None  # as `ask` resets it
        return asked + [optuna.Trial(self.study, trial_id) for trial_id in created]

    def _beat(self) -> None:
        if self.beat_s is None or time.monotonic() - self.last_beat < self.beat_s:
            return
        self.last_beat = time.monotonic()
        self.storage.record_heartbeats([m.key._trial_id for m in self.cohort.members])

    def end_round(self, outcomes: list[EpochOutcome], device_type: str) -> bool:
        """Report, judge and end the round's members; True if any trial ended."""
        # Every report first: the pruner judges on the same trials. Straight to the storage:
        # `Trial.report` checks its arguments (a float, a new step: they are) and keeps a copy
        # of the values that nothing here reads, for every member of every round.
        reported = [o for o in outcomes if o.stats is not None]
        refused = set(self._report([(o.member.key._trial_id, o.stats.epoch, o.stats.val_loss)
                                    for o in reported]))
        lost = []  # failed by another worker's heartbeat check: no longer ours
        for outcome in reported:
            if outcome.member.key._trial_id in refused:
                _warn_lost(outcome.member.key.number)
                lost.append(outcome.member)
        gone = {id(member) for member in lost}
        judged = [outcome for outcome in outcomes
                  if outcome.stats is not None and id(outcome.member) not in gone]
        decisions = self._decide(judged)
        pruned = {id(o) for o, prune in zip(judged, decisions, strict=True) if prune}
        ended: list[tuple[Member, str, str]] = []
        epochs = self.config.training.epochs
        for outcome in outcomes:
            member, stats = outcome.member, outcome.stats
            if id(member) in gone:
                continue
            if stats is None:
                ended.append((member, DIVERGED, outcome.diverged))
            elif id(outcome) in pruned:
                ended.append((member, PRUNED, f"pruned by the {self.config.pruner.kind} "
                                              f"pruner at epoch {stats.epoch}"))
            elif stats.epoch == epochs:
                ended.append((member, COMPLETED, ""))
        # The ended trials' records and ends reach the database together, with the next
        # write (see WriteBehindStorage.ending_together).
        together = self.storage.ending_together(defer=True) if isinstance(
            self.storage, WriteBehindStorage) else contextlib.nullcontext()
        with together:
            for member, reason, detail in ended:
                self._record_end(member, reason, detail, device_type)
                self._tell(member, reason)
        leaving = [*lost, *(member for member, _, _ in ended)]
        for member in leaving:
            self.curves.pop(id(member), None)
        self.cohort.remove(leaving)
        return bool(lost or ended)

    def _report(self, records: list[tuple[int, int, float]]) -> list[int]:
        """Each (trial id, epoch, validation loss) to the storage; the ids of the trials that
        refused theirs (another worker failed them)."""
        if isinstance(self.storage, WriteBehindStorage):
            return self.storage.set_intermediate_values(records)
        refused = []
        for trial_id, epoch, loss in records:
            try:
                self.storage.set_trial_intermediate_value(trial_id, epoch, loss)
            except optuna.exceptions.UpdateFinishedTrialError:
                refused.append(trial_id)
        return refused

    def _decide(self, judged: list[EpochOutcome]) -> list[bool]:
        """The pruner's decision for each judged member, on the study as it is now."""
        if not self.pruner.remembers:
            return self.pruner.decide(
                [self.storage.get_trial(o.member.key._trial_id) for o in judged])
        curves = []
        for outcome in judged:
            key = id(outcome.member)
            self.curves[key] = Curve.extended(self.curves.get(key), outcome.stats.epoch,
                                              outcome.stats.val_loss, self.pruner.direction)
            curves.append(self.curves[key])
        return self.pruner.decide_curves(curves)

    def _record_end(self, member: Member, reason: str, detail: str, device_type: str) -> None:
        """The user attrs the reference engine's objective leaves on a trial it ends."""
        result = FitResult(member.history, reason, detail)
        attrs: dict[str, Any] = trial_user_attrs(result, member.seed, reason, device_type)
        attrs[ATTR_ENGINE] = COHORT
        for key, value in attrs.items():
            member.key.set_user_attr(key, value)

    def _tell(self, member: Member, reason: str) -> None:
        trial: optuna.Trial = member.key
        try:
            # `study.tell` without the deep copy of the trial it returns (a tenth of a
            # cohort's ends): what `study.optimize` calls for the reference engine's trials.
            if reason == COMPLETED:
                _tell_with_warning(self.study, trial, member.history[-1].val_loss)
            else:
                _tell_with_warning(self.study, trial, state=TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:
            _warn_lost(trial.number)

    def write_deferred_ends(self) -> None:
        if isinstance(self.storage, WriteBehindStorage):
            self.storage.write_deferred_ends()

    def fail_all(self) -> None:
        for member in self.cohort.members:
            with contextlib.suppress(Exception):
                self.study.tell(member.key, state=TrialState.FAIL)
        # The ends already decided still count (with the first tell above, or now).
        with contextlib.suppress(Exception):
            self.write_deferred_ends()


def _warn_lost(number: int) -> None:
    log.warning("trial %d was failed by another worker's heartbeat check (this one was too "
                "slow to beat); its retry is queued", number)


@contextlib.contextmanager
def _held(lock: SlotLock) -> Any:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
