"""The storage port: every call the search driver makes to the storage of its study, in one
small interface, implemented once for any Optuna storage (`StoragePort`) and once for the
write-behind buffer (`WriteBehindPort`, which batches what the other does call by call).

`port_for(storage)` gives a storage's port (one per storage object: a port remembers what it
has seen, e.g. which running trials never beat). Nothing outside this package tests storage
classes or uses Optuna's private storage names.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

from hpsearch.records import ATTR_END_DETAIL, ATTR_END_REASON, FAILED, stale_detail
from hpsearch.storage.urls import GRACE_BEATS
from hpsearch.storage.write_behind import WriteBehindStorage

log = logging.getLogger(__name__)


class StoragePort:
    """The driver's calls on any Optuna storage, one Optuna call each."""

    def __init__(self, storage: BaseStorage):
        self.storage = storage

    @property
    def heartbeat_s(self) -> float | None:
        """Seconds between a running trial's heartbeats; None: this storage has none."""
        interval = getattr(self.storage, "get_heartbeat_interval", None)  # RDB storages
        return interval() if interval is not None else None

    def ask(self, study: optuna.Study, count: int, queued: int) -> list[optuna.Trial]:
        """`count` new running trials, the study's queued trials first (`queued` of them
        are known to wait)."""
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for `Study.optimize`: the driver beats
            # for its trials itself.
            warnings.filterwarnings("ignore", "Heartbeat of storage")
            return [study.ask() for _ in range(count)]

    def trial(self, trial: optuna.Trial) -> FrozenTrial:
        """The trial as it is now (a running trial of this process included)."""
        return self.storage.get_trial(trial._trial_id)

    def best_value(self, study: optuna.Study) -> float | None:
        """The value of the study's best trial, or None before one completed."""
        try:
            return self.storage.get_best_trial(study._study_id).value
        except ValueError:
            return None

    def set_worker(self, trial: optuna.Trial, key: str, worker: str) -> None:
        self.storage.set_trial_system_attr(trial._trial_id, key, worker)

    def configured(self, trials: Sequence[optuna.Trial], queued: int) -> None:
        """The trials' parameters are drawn: they reach the database before training (a dead
        worker's trials are retried with them). The first `queued` were taken from the
        queue and beat from now on."""
        self.beat(trials[:queued])

    def report(self, records: Sequence[tuple[optuna.Trial, int, float]]) -> set[int]:
        """Each (trial, epoch, value) as an intermediate value; the numbers of the trials
        that refused theirs: another worker failed them (their heartbeat looked stale)."""
        refused = self._report([(trial._trial_id, epoch, value)
                                for trial, epoch, value in records])
        if not refused:  # every round but the rare one another worker failed a trial in
            return set()
        ids = set(refused)
        return {trial.number for trial, _, _ in records if trial._trial_id in ids}

    def _report(self, records: Sequence[tuple[int, int, float]]) -> list[int]:
        refused = []
        for trial_id, epoch, value in records:
            try:
                self.storage.set_trial_intermediate_value(trial_id, epoch, value)
            except optuna.exceptions.UpdateFinishedTrialError:
                refused.append(trial_id)
        return refused

    def set_user_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial._trial_id, key, value)

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """The trials told inside end together (see `WriteBehindPort.ending`)."""
        yield

    def tell(self, study: optuna.Study, trial: optuna.Trial, value: float | None = None,
             state: TrialState | None = None) -> bool:
        """End `trial` with `value` (complete) or as `state`; False if it was no longer ours
        (another worker failed it)."""
        try:
            # What `study.optimize` calls for its trials: `study.tell` without the deep copy
            # of the trial it returns.
            if state is None:
                _tell_with_warning(study, trial, value)
            else:
                _tell_with_warning(study, trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def write_deferred(self) -> None:
        """Write the ends that `ending` left for later, now."""

    def beat(self, trials: Sequence[optuna.Trial]) -> None:
        """A heartbeat for each of these running trials."""
        self._beat([trial._trial_id for trial in trials])

    def _beat(self, trial_ids: Sequence[int]) -> None:
        if self.heartbeat_s is None:
            return
        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)

    def count_states(self, study: optuna.Study) -> dict[TrialState, int]:
        """How many of the study's trials are in each state, fresh from the storage."""
        counts: dict[TrialState, int] = {}
        for trial in self.storage.get_all_trials(study._study_id, deepcopy=False):
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    def fail_stale(self, study: optuna.Study) -> list[FrozenTrial]:
        """Fail the RUNNING trials of dead workers and queue their retries; returns them."""
        if self.heartbeat_s is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        return []

    def refresh(self) -> None:
        """The next read of a study sees what other processes wrote meanwhile."""


class WriteBehindPort(StoragePort):
    """The driver's calls on the write-behind buffer: a round's records in one call, the
    trials of a refill created in one transaction, ends written with the next write."""

    storage: WriteBehindStorage

    def __init__(self, storage: WriteBehindStorage):
        super().__init__(storage)
        # Study id -> {id of a RUNNING trial without heartbeat -> when this process first
        # saw it so}.
        self._beatless: dict[int, dict[int, float]] = {}

    @property
    def heartbeat_s(self) -> float | None:
        return self.storage.get_heartbeat_interval()

    def ask(self, study: optuna.Study, count: int, queued: int) -> list[optuna.Trial]:
        """Queued trials (retries of dead workers' trials) as `study.ask` takes them, the
        rest created in one transaction."""
        asked = super().ask(study, min(count, queued), queued)
        created = self.storage.create_running_trials(study._study_id, count - len(asked))
        study._thread_local.cached_all_trials = None  # as `ask` resets it
        return asked + [optuna.Trial(study, trial_id) for trial_id in created]

    def configured(self, trials: Sequence[optuna.Trial], queued: int) -> None:
        # One transaction for all of them; created trials beat from their creation on.
        self.storage.flush_trials([t._trial_id for t in trials])
        self.storage.record_heartbeats([t._trial_id for t in trials[:queued]])

    def _report(self, records: Sequence[tuple[int, int, float]]) -> list[int]:
        return self.storage.set_intermediate_values(records)

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """The trials told inside reach the database with the next write (a periodic flush,
        a refill's parameters, `write_deferred`): a transaction has a fixed cost, and a
        cohort's rounds end trials every few epochs. This process counts them as ended at
        once."""
        with self.storage.ending_together(defer=True):
            yield

    def write_deferred(self) -> None:
        self.storage.write_deferred_ends()

    def _beat(self, trial_ids: Sequence[int]) -> None:
        self.storage.record_heartbeats(list(trial_ids))

    def count_states(self, study: optuna.Study) -> dict[TrialState, int]:
        return self.storage.count_states(study._study_id)

    def fail_stale(self, study: optuna.Study) -> list[FrozenTrial]:
        """Stale is Optuna's heartbeat rule (no beat for the grace period, by the database's
        clock). A RUNNING trial that never beat (its worker died between creating it and its
        first beat) is stale once this process has seen it beatless for the grace period:
        the clocks of other machines are never compared. Checked at most once per heartbeat
        interval: a trial can't go stale faster."""
        storage = self.storage
        study_id = study._study_id
        if not storage.stale_check_due(study_id):
            return []
        grace = GRACE_BEATS * storage.get_heartbeat_interval()
        now = time.monotonic()
        known = self._beatless.get(study_id, {})
        seen = {trial_id: known.get(trial_id, now)
                for trial_id in storage.running_without_heartbeat(study_id)}
        self._beatless[study_id] = seen
        stale = storage._get_stale_trial_ids(study_id) + [
            trial_id for trial_id, since in seen.items() if now - since >= grace]
        failed = []
        detail = stale_detail(grace)
        for trial_id in stale:
            # Another worker may have failed (or its owner ended) it first: then it is not
            # ours to retry. Its story is written while it still runs (a finished trial's
            # attrs are read-only); the retry does not inherit it.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial_id, ATTR_END_REASON, FAILED)
                storage.set_trial_user_attr(trial_id, ATTR_END_DETAIL, detail)
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    failed.append(storage.get_trial(trial_id))
        retry = storage.get_heartbeat_stale_trial_callback()
        for trial in failed:
            log.warning("trial %d of %r was running in a worker that stopped beating: marked "
                        "failed and queued again", trial.number, study.study_name)
            retry(study, trial)
        return failed

    def refresh(self) -> None:
        self.storage.forget_snapshots()


_PORTS: weakref.WeakKeyDictionary[BaseStorage, StoragePort] = weakref.WeakKeyDictionary()


def port_for_study(study: optuna.Study) -> StoragePort:
    """The port of the study's storage."""
    return port_for(storage_of(study))


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (one connection for what else reads it)."""
    return study._storage


def port_for(storage: BaseStorage) -> StoragePort:
    """The port of `storage` (the same object for every call with it)."""
    port = _PORTS.get(storage)
    if port is None:
        port = _PORTS[storage] = (WriteBehindPort(storage)
                                  if isinstance(storage, WriteBehindStorage)
                                  else StoragePort(storage))
    return port
