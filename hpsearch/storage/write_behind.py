"""A storage that keeps this process's running trials in memory and writes them in batches.

With Optuna's RDB storage every `trial.report()` is a transaction and every
`trial.should_prune()` and sampler call re-reads the running trial from the database.
`WriteBehindStorage` keeps the trials this process runs as live in-memory copies:

- **Reads** of a study's trials come from a snapshot of the database (refreshed at least every
  `refresh_s` seconds, and whenever we create a trial, so that workers see each other's trials
  and a new trial is sampled from all that finished) with our running trials overlaid live.
  With one worker nothing else changes the database, so samplers and pruners see exactly what
  per-call reads would show: same trials, same pruning decisions. A refresh reads only what
  other workers may have changed (their new and unfinished trials): our own trials are held
  here, running or as they ended, and a finished trial never changes. The merged list is
  built once per change, not once per read (a cohort's pruner reads it once per member and
  epoch).
- **Writes** to our running trials (params, intermediate values, user and system attrs) update
  the live copy at once and reach the database in one transaction every `flush_s` seconds, and
  with the trial's end (the same transaction): a finished trial is complete in the database,
  and a running one (the dashboard's curves) is at most `flush_s` behind. `flush_trials` writes
  trials' records at once (the search driver does it when their parameters are drawn, so
  that a retry of a dead worker's trial runs the same configuration).

A process killed mid-trial loses at most `flush_s` of that trial's records; the trial itself is
failed by the heartbeat like any other stale trial. It reads and writes the database through
`loader` and `bulk_sql`; this package is the one place that relies on Optuna's storage internals
(its cached RDB wrapper and the RDB models).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import math
import threading
import time
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from optuna import distributions
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from hpsearch.storage import bulk_sql, loader

log = logging.getLogger(__name__)

FLUSH_S = 1.0
REFRESH_S = 1.0


@dataclass
class _Pending(bulk_sql.Records):
    """Writes to one running trial that have not reached the database yet, since when."""

    since: float = field(default_factory=time.monotonic)


class _End(NamedTuple):
    """How one of our trials ended, and the records it had not written yet."""

    state: TrialState
    values: list[float] | None
    completed: datetime.datetime
    records: _Pending


class WriteBehindStorage(_CachedStorage):
    """Optuna's cached RDB storage, with this process's running trials kept in memory."""

    def __init__(self, backend: RDBStorage, flush_s: float = FLUSH_S,
                 refresh_s: float = REFRESH_S):
        super().__init__(backend)
        self.flush_s = flush_s
        self.refresh_s = refresh_s
        self._live: dict[int, FrozenTrial] = {}  # trial id -> our running trial, as it is now
        self._settled: dict[int, FrozenTrial] = {}  # trial id -> our finished trial, final
        self._pending: dict[int, _Pending] = {}
        # trial id -> the attrs of our trial that the database may hold, as ("user_attrs" or
        # "system_attrs", key): only those need deleting before an attr is written again.
        self._stored_attrs: dict[int, set[tuple[str, str]]] = {}
        # study id -> (when it was read, its trials)
        self._snapshots: dict[int, tuple[float, list[FrozenTrial]]] = {}
        self._views: dict[int, FrozenTrial] = {}  # trial id -> a copy of _live's, for readers
        # study id -> the snapshot with our running trials overlaid, until something changes
        self._merged: dict[int, list[FrozenTrial]] = {}
        self._write_lock = threading.RLock()
        self._stale_checks: dict[Any, float] = {}  # what was checked -> when (monotonic)
        # Inside `ending_together`: our trials that ended, their end and their last records,
        # written in one transaction when it closes.
        self._ending: dict[int, _End] | None = None
        # Ends of our trials that `ending_together(defer=True)` left for the next write (the
        # trials are settled here already); see `ending_together`.
        self._deferred: dict[int, _End] = {}
        self._beats: dict[int, float] = {}  # trial id -> when we last beat for it (monotonic)
        # (study id, states asked for) -> the snapshot's trials in those states, not ours,
        # until the snapshot changes: the reference engine's pruner asks every epoch.
        self._filtered: dict[tuple[int, frozenset[TrialState]], list[FrozenTrial]] = {}
        # study name -> id, as read once: Optuna's Hyperband pruner makes a Study by name for
        # every decision (one per member and epoch), a query each. Dropped when this storage
        # deletes the study.
        self._study_ids: dict[str, int] = {}

    # -- studies ----------------------------------------------------------------------------
    def get_study_id_from_name(self, study_name: str) -> int:
        study_id = self._study_ids.get(study_name)
        if study_id is None:
            study_id = self._study_ids[study_name] = super().get_study_id_from_name(study_name)
        return study_id

    def delete_study(self, study_id: int) -> None:
        self._study_ids = {name: known for name, known in self._study_ids.items()
                           if known != study_id}
        super().delete_study(study_id)

    # -- our trials -------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is None:
            # `study.ask`'s new trial: created running and beating in one transaction (Optuna
            # takes one to create it, through its ORM, and two more when `optimize`'s
            # heartbeat thread first beats; see `record_heartbeat`).
            return self.create_running_trials(study_id, 1)[0]
        # From a template (a queued retry, `enqueue_trial`, `add_trial`): as Optuna creates it.
        trial_id = super().create_new_trial(study_id, template_trial)
        trial = self._backend.get_trial(trial_id)
        with self._lock:
            if trial.state == TrialState.RUNNING:
                self._adopt(trial_id, trial)  # overlaid on the snapshots from now on
            else:
                self.forget_snapshots()  # a queued trial must be seen by the next pop
        return trial_id

    def create_running_trials(self, study_id: int, count: int) -> list[int]:
        """`count` new RUNNING trials in one transaction (Optuna's `create_new_trial` takes
        one each), numbered as Optuna numbers them, beating from now on (their heartbeats in
        the same transaction), and held live."""
        if count <= 0:
            return []
        trials = bulk_sql.create_running_trials(self._backend.scoped_session, study_id, count)
        with self._lock:
            self._studies.setdefault(study_id, _StudyInfo())
            self._add_trials_to_cache(study_id, trials)
        beat = time.monotonic()
        for trial in trials:
            self._adopt(trial._trial_id, trial)
            self._beats[trial._trial_id] = beat
        return [trial._trial_id for trial in trials]

    def _adopt(self, trial_id: int, trial: FrozenTrial) -> None:
        self._live[trial_id] = copy.deepcopy(trial)
        self._pending[trial_id] = _Pending()
        self._stored_attrs[trial_id] = {("user_attrs", key) for key in trial.user_attrs} | {
            ("system_attrs", key) for key in trial.system_attrs}
        self._merged.clear()
        # The sampler reads the study next, for this trial's parameters: it should see what
        # other workers finished meanwhile, as a read of the database would, not a snapshot
        # up to `refresh_s` old. It costs a query per trial (per refill in a cohort).
        self.forget_snapshots()
        study_id, _ = self._trial_id_to_study_id_and_number.get(trial_id, (None, None))
        if study_id in self._studies:
            # Read again by a refresh once it is no longer ours (another worker failed it).
            self._studies[study_id].unfinished_trial_ids.add(trial_id)

    def _changed(self, trial_id: int) -> None:
        """Our running trial changed: readers get a new copy of it and a new merged list."""
        self._views.pop(trial_id, None)
        self._merged.clear()

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        if trial_id not in self._live:
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution.get(param_name)
            if known is not None:  # fail now, as a direct write would, not at the flush
                distributions.check_distribution_compatibility(known, distribution)
            else:
                self._studies[study_id].param_distribution[param_name] = distribution
        self._changed(trial_id)
        live = self._live[trial_id]
        live.params = {**live.params,
                       param_name: distribution.to_external_repr(param_value_internal)}
        live.distributions = {**live.distributions, param_name: distribution}
        self._pending[trial_id].params.append(
            (param_name, param_value_internal, distribution))
        self._maybe_flush(trial_id)

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        if trial_id not in self._live:
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        elif self.set_intermediate_values([(trial_id, step, intermediate_value)]):
            # Its flush found it failed by another worker: raise, as a direct write would.
            self._backend.check_trial_is_updatable(trial_id, TrialState.FAIL)

    def set_intermediate_values(self, records: Sequence[tuple[int, int, float]]) -> list[int]:
        """`set_trial_intermediate_value` for each (trial id, step, value) of `records` (a
        cohort's round: one call, not one per member); returns the ids of the trials that
        refused theirs: another worker had failed them (their heartbeat looked stale)."""
        lost = []
        oldest = math.inf
        for trial_id, step, value in records:
            live = self._live.get(trial_id)
            if live is None:
                try:
                    super().set_trial_intermediate_value(trial_id, step, value)
                except UpdateFinishedTrialError:
                    lost.append(trial_id)
                continue
            self._changed(trial_id)
            live.intermediate_values[step] = value
            pending = self._pending[trial_id]
            pending.intermediate_values[step] = value
            oldest = min(oldest, pending.since)
        if time.monotonic() - oldest >= self.flush_s:
            finished = self._flush(list(self._pending))
            lost += [trial_id for trial_id, _, _ in records if trial_id in finished]
        return lost

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id not in self._live:
            super().set_trial_user_attr(trial_id, key, value)
        else:
            self._set_live_attr(trial_id, "user_attrs", key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id not in self._live:
            super().set_trial_system_attr(trial_id, key, value)
        else:
            self._set_live_attr(trial_id, "system_attrs", key, value)

    def _set_live_attr(self, trial_id: int, kind: str, key: str, value: Any) -> None:
        """An attr (`kind`: user_attrs or system_attrs) of our running trial: live at once,
        in the database with the next flush."""
        self._changed(trial_id)
        getattr(self._live[trial_id], kind)[key] = value
        getattr(self._pending[trial_id], kind)[key] = value
        self._maybe_flush(trial_id)

    @contextlib.contextmanager
    def ending_together(self, defer: bool = False) -> Iterator[None]:
        """Our trials that end inside reach the database together when it closes: their last
        records and their ends in one transaction (a cohort's round ends several at once).

        With `defer`, they wait for the next write instead (the periodic flush, a refill's
        parameters, another end: at most about `flush_s` later), or for
        `write_deferred_ends`: a cohort's rounds end trials every few epochs, and a
        transaction has a fixed cost (on PostgreSQL most of an end's). Here they are
        finished at once (`count_states` counts them so); other processes see them finished
        when they are written."""
        self._ending = {}
        try:
            yield
        finally:
            ending, self._ending = self._ending, None
            if ending and defer:
                self._deferred.update(ending)
            elif ending:
                self._write_ends(ending)

    def write_deferred_ends(self) -> None:
        """Write the ends `ending_together(defer=True)` left, if any, now."""
        if self._deferred:
            self._write_ends({})

    def _write_ends(self, ends: dict[int, _End],
                    batch: Mapping[int, _Pending] | None = None) -> dict[int, TrialState]:
        """Write `ends` and the deferred ones (with `batch`'s records) in one transaction;
        returns the trials another worker had failed meanwhile (see `_write`). Those of them
        settled here already are theirs now: unsettled, with a warning."""
        with self._write_lock:
            deferred, self._deferred = self._deferred, {}
            ends = {**deferred, **ends}
            try:
                finished = bulk_sql.retrying(lambda: self._write(batch or {}, ends))
            except BaseException:
                # Not written. The deferred ends stay for the next write (the failure of the
                # others is their caller's, as before).
                self._deferred = {**deferred, **self._deferred}
                raise
        for trial_id in finished:
            if trial_id in ends and trial_id in self._settled:  # its end is theirs
                self._unsettle(trial_id)
                log.warning("trial %d was failed by another worker's heartbeat check "
                            "before its end was written; its retry is queued",
                            self._trial_id_to_study_id_and_number[trial_id][1])
        return finished

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if trial_id in self._live and state.is_finished():
            # Its last records and its end in one transaction (Optuna's takes two), or with
            # the others ending together.
            end = _End(state, list(values) if values is not None else None,
                       datetime.datetime.now(), self._pending[trial_id])
            if self._ending is not None:
                self._ending[trial_id] = end
            else:
                lost = self._write_ends({trial_id: end})
                if trial_id in lost:  # raises, as a direct write would: another worker failed it
                    self._backend.check_trial_is_updatable(trial_id, lost[trial_id])
            self._settle(trial_id, state, values, end.completed)
            return True
        changed = super().set_trial_state_values(trial_id, state, values)
        if trial_id in self._live:
            if changed:
                self._changed(trial_id)
                self._live[trial_id].state = state
        else:
            if changed and state == TrialState.RUNNING:  # we claimed a queued (WAITING) trial
                self._adopt(trial_id, self._backend.get_trial(trial_id))
            self.forget_snapshots()
        return changed

    def _settle(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                completed: datetime.datetime) -> None:
        """Our trial finished: it leaves the live set and takes its final form in the
        snapshots, as the database now has it, without reading it back (a finished trial is
        never written again, so this copy stays true)."""
        final = self._live.pop(trial_id)
        del self._pending[trial_id]
        self._beats.pop(trial_id, None)
        self._changed(trial_id)
        final.state = state
        final.values = list(values) if values is not None else None
        final.datetime_complete = completed
        self._settled[trial_id] = final
        study_id, number = self._trial_id_to_study_id_and_number[trial_id]
        with self._lock:  # Optuna's cache holds it as it ended: never read back
            study = self._studies.setdefault(study_id, _StudyInfo())
            study.trials[number] = final
            study.unfinished_trial_ids.discard(trial_id)
        self._filtered.clear()
        if study_id in self._snapshots:
            taken, trials = self._snapshots[study_id]
            kept = [t for t in trials if t._trial_id != trial_id]
            self._snapshots[study_id] = (taken, sorted([*kept, final], key=lambda t: t.number))

    def _unsettle(self, trial_id: int) -> None:
        """Our settled trial is not as we left it in the database: read it from there."""
        del self._settled[trial_id]
        study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
        with self._lock:
            self._studies[study_id].unfinished_trial_ids.add(trial_id)
        self.forget_snapshots()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if trial_id in self._live:
            return self._view(trial_id)
        # Not copied, as Optuna's cache hands out its finished trials.
        return self._settled.get(trial_id) or super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        now = time.monotonic()
        taken, _ = self._snapshots.get(study_id, (-float("inf"), []))
        if now - taken >= self.refresh_s:
            self._snapshots[study_id] = (now, super().get_all_trials(study_id, deepcopy=False))
            self._merged.pop(study_id, None)
            self._filtered.clear()
        if states is not None and TrialState.RUNNING not in states:
            # Our live trials are all running, so they are not asked for: the snapshot's other
            # trials are the answer, without merging (which copies every live trial that
            # changed: a cohort's pruner asks for the completed trials every round, after
            # every member reported).
            key = (study_id, frozenset(states))
            trials = self._filtered.get(key)
            if trials is None:
                trials = self._filtered[key] = [
                    t for t in self._snapshots[study_id][1]
                    if t.state in states and t._trial_id not in self._live]
            return copy.deepcopy(trials) if deepcopy else list(trials)
        trials = self._merged.get(study_id)
        if trials is None:
            trials = self._merged[study_id] = self._merge(study_id)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def _merge(self, study_id: int) -> list[FrozenTrial]:
        """The study's snapshot with our running trials overlaid as they are now."""
        trials = self._snapshots[study_id][1]
        # Copies of our running trials: a reader holds what it read, as it would from the
        # database, while the trial goes on changing.
        live = {tid: self._view(tid) for tid in self._live if self._belongs(tid, study_id)}
        if not live:
            return trials
        trials = [live.pop(t._trial_id, t) for t in trials]
        # The rest were created after the snapshot, so their numbers come after its own.
        return trials + sorted(live.values(), key=lambda t: t.number)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        """Optuna's incremental read (the trials it knows as unfinished, and those after the
        last finished one), without our own trials: we hold them, live or as they ended."""
        with self._lock:
            study = self._studies.setdefault(study_id, _StudyInfo())
            # One query for the ids, and the trials wanted with a few more (a search
            # refreshes once per trial it asks, and every second).
            with _create_scoped_session(self._backend.scoped_session) as session:
                ids = loader.changed_trial_ids(session, study_id, study.last_finished_trial_id,
                                               study.unfinished_trial_ids)
                if not ids:
                    return
                ours = self._live.keys() | self._settled.keys()
                read = loader.load_trials(session, sorted(tid for tid in ids if tid not in ours))
            newest = max(ids)
            self._add_trials_to_cache(study_id, read)
            # Every trial up to the newest is now held as it is: finished ones are final,
            # the rest are read again next time.
            unfinished = {t._trial_id for t in read if not t.state.is_finished()}
            unfinished |= {tid for tid in ids if tid in self._live}
            study.unfinished_trial_ids = unfinished
            study.last_finished_trial_id = max([newest, *(t._trial_id for t in read)])

    def _view(self, trial_id: int) -> FrozenTrial:
        """A copy of our running trial as it is now, made again only after it changed."""
        view = self._views.get(trial_id)
        if view is None:
            view = self._views[trial_id] = _copy_of(self._live[trial_id])
        return view

    def _belongs(self, trial_id: int, study_id: int) -> bool:
        return self._trial_id_to_study_id_and_number.get(trial_id, (None,))[0] == study_id

    def forget_snapshots(self) -> None:
        """The next read of every study refreshes from the database (reading only what other
        processes may have changed)."""
        self._snapshots.clear()
        self._merged.clear()
        self._filtered.clear()

    # -- for workers deciding whether to start a trial: fresh, cheap, never the snapshot -----
    def count_states(self, study_id: int) -> dict[TrialState, int]:
        """How many of the study's trials are in each state, in one COUNT query; our trials
        whose end is deferred (`ending_together`) count as they ended."""
        with self._write_lock:
            counts = bulk_sql.count_states(self._backend.scoped_session, study_id)
            for trial_id, end in self._deferred.items():  # running, in the database
                if self._trial_id_to_study_id_and_number[trial_id][0] == study_id:
                    counts[TrialState.RUNNING] = max(0, counts.get(TrialState.RUNNING, 0) - 1)
                    counts[end.state] = counts.get(end.state, 0) + 1
        return counts

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Asked at most once per heartbeat interval: Optuna asks before every trial, and a
        trial cannot go stale faster than its beats stop."""
        if not self.stale_check_due(("optuna", study_id)):
            return []
        return super()._get_stale_trial_ids(study_id)

    def stale_check_due(self, key: Any) -> bool:
        """True at most once per heartbeat interval for each `key` (the first time, always)."""
        now = time.monotonic()
        if now - self._stale_checks.get(key, -float("inf")) < self.get_heartbeat_interval():
            return False
        self._stale_checks[key] = now
        return True

    def running_without_heartbeat(self, study_id: int) -> list[int]:
        """Ids of the study's RUNNING trials that have no heartbeat: Optuna never finds them
        stale (e.g. a worker killed between creating a trial and its first beat)."""
        return bulk_sql.running_without_heartbeat(self._backend.scoped_session, study_id)

    # -- writing ----------------------------------------------------------------------------
    def _maybe_flush(self, trial_id: int) -> None:
        if time.monotonic() - self._pending[trial_id].since >= self.flush_s:
            # Every running trial of this process at once: a cohort of trials costs one
            # transaction a second, not one per trial.
            self._flush(list(self._pending), owner=trial_id)

    def flush(self, trial_id: int) -> None:
        """Write the trial's pending records in one transaction (retried when the database
        asks for it: a deadlock between workers on MySQL, a lock timeout)."""
        self._flush([trial_id], owner=trial_id)

    def flush_trials(self, trial_ids: Sequence[int]) -> None:
        """Write the pending records of several of our running trials in one transaction."""
        self._flush(list(trial_ids))

    def _flush(self, trial_ids: list[int], owner: int | None = None) -> Container[int]:
        """Write the trials' records. A trial that another worker failed meanwhile is
        dropped from the batch, never blocking the others' records; only a write on behalf
        of that trial itself (`owner`) raises UpdateFinishedTrialError, as a direct write
        would. Returns the ids of those trials."""
        with self._write_lock:
            batch = {tid: self._pending[tid] for tid in trial_ids if tid in self._pending}
            now = time.monotonic()
            for pending in batch.values():
                if not pending:
                    pending.since = now
            batch = {tid: pending for tid, pending in batch.items() if pending}
            if not batch and not self._deferred:
                return ()
            finished = self._write_ends({}, batch)
            for trial_id in batch:
                if trial_id in self._pending:  # written: what comes next starts a new batch
                    self._pending[trial_id] = _Pending()
            if owner in finished:
                self._backend.check_trial_is_updatable(owner, finished[owner])
        return finished

    def _write(self, batch: Mapping[int, _Pending],
               ends: Mapping[int, _End] | None = None) -> dict[int, TrialState]:
        """Write the pending records of `batch`'s trials, and `ends` (with their last
        records), in one transaction, except those of trials already finished in the
        database (failed by another worker); returns those."""
        ends = ends or {}
        batch = {**batch, **{trial_id: end.records for trial_id, end in ends.items()}}
        with _create_scoped_session(self._backend.scoped_session) as session:
            # Bulk statements, not Optuna's per-record helpers: this is the one write of most
            # epochs' worth of records.
            #
            # Another process ends a trial of ours only by failing it (its heartbeat looked
            # stale): then it is not ours to write any more.
            finished = dict.fromkeys(bulk_sql.failed_among(session, batch.keys()),
                                     TrialState.FAIL)
            for trial_id in finished:  # no longer running anywhere
                self._live.pop(trial_id, None)
                self._pending.pop(trial_id, None)
                self._stored_attrs.pop(trial_id, None)
                self._beats.pop(trial_id, None)
                self._changed(trial_id)
            if finished:
                self.forget_snapshots()
            pendings = [(tid, pending) for tid, pending in batch.items() if tid not in finished]
            ended = {tid: end for tid, end in ends.items() if tid not in finished}
            bulk_sql.write_records(
                session, pendings,
                {tid: (end.state, end.values, end.completed) for tid, end in ended.items()},
                self._stored_attrs)
        for trial_id, pending in pendings:  # committed
            if trial_id in ended:
                self._stored_attrs.pop(trial_id, None)
            elif trial_id in self._stored_attrs:
                self._stored_attrs[trial_id].update(
                    (kind, key) for kind in ("user_attrs", "system_attrs")
                    for key in getattr(pending, kind))
        return finished

    def record_heartbeat(self, trial_id: int) -> None:
        """`optimize`'s heartbeat thread beats as its trial starts, and then every interval:
        the first beat is skipped when the trial beat as it was created, a moment ago (that
        beat was a transaction in a second thread, racing the trial's own writes: on SQLite
        for the file's one write lock)."""
        interval = self.get_heartbeat_interval() or 0
        if time.monotonic() - self._beats.get(trial_id, -float("inf")) < interval / 2:
            return
        self.record_heartbeats([trial_id])

    def record_heartbeats(self, trial_ids: Sequence[int]) -> None:
        """Beat for several running trials in one transaction (Optuna's `record_heartbeat`
        takes one per trial), by the database's clock as Optuna's stale check reads it."""
        if not trial_ids:
            return
        beat_at = time.monotonic()
        bulk_sql.beat(self._backend.scoped_session, trial_ids)
        for trial_id in trial_ids:
            self._beats[trial_id] = beat_at


def _copy_of(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a live trial whose records later writes do not change."""
    copied = copy.copy(trial)
    copied.params = dict(trial.params)
    copied.distributions = dict(trial.distributions)
    copied.user_attrs = dict(trial.user_attrs)
    copied.system_attrs = dict(trial.system_attrs)
    copied.intermediate_values = dict(trial.intermediate_values)
    return copied
