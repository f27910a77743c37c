"""A storage for readers that must see every commit at once (the dashboard, reports), whose
writes go straight to the database: Optuna's cached RDB storage, reading trials with `loader`.

Writes are Optuna's own: each is its transaction, committed before the call returns (nothing
is buffered, unlike `WriteBehindStorage`, which keeps a search's running trials in memory).

Reads of a study's trials read the database every time, but only what may have changed since
the last read: the trials after the newest one read, and those read unfinished (a finished
trial is never written again, so the copy read once stays true). Optuna's cached storage does
the same with its ORM loader, which builds an object per record; `loader`'s plain queries
build the same trials for less (a 5000-trial study's first read, most of a dashboard's first
page load). Each read also counts the trials up to the newest one held: a count that differs
means the study is not the one held (deleted and made again under the same id, which SQLite
may reuse, or a trial whose id came before one read already, committed since), and the study
is read again from scratch.
"""

from __future__ import annotations

from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

from hpsearch.storage import loader


class WriteThroughStorage(_CachedStorage):
    """Optuna's cached RDB storage (writes straight to the database), reading with `loader`."""

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock, _create_scoped_session(self._backend.scoped_session) as session:
            models.StudyModel.find_or_raise_by_id(study_id, session)  # KeyError, as Optuna's
            study = self._studies.setdefault(study_id, _StudyInfo())
            newest = study.last_finished_trial_id
            if newest >= 0 and loader.count_trials(session, study_id, newest) != sum(
                    trial_id <= newest for trial_id in self._trial_ids(study_id)):
                self._forget_study(study_id)
                study = self._studies[study_id]
            ids = loader.changed_trial_ids(session, study_id, study.last_finished_trial_id,
                                           study.unfinished_trial_ids)
            if not ids:
                return
            read = loader.load_trials(session, sorted(ids))
            self._add_trials_to_cache(study_id, read)
            # Every trial up to the newest is now held as it is: finished ones are final, the
            # rest are read again next time.
            study.unfinished_trial_ids = {t._trial_id for t in read if not t.state.is_finished()}
            study.last_finished_trial_id = max(ids)

    def _trial_ids(self, study_id: int) -> list[int]:
        return [trial._trial_id for trial in self._studies[study_id].trials.values()]

    def _forget_study(self, study_id: int) -> None:
        """Drop what is held of the study: its next read reads all of it."""
        for trial in self._studies[study_id].trials.values():
            self._trial_id_to_study_id_and_number.pop(trial._trial_id, None)
            self._study_id_and_number_to_trial_id.pop((study_id, trial.number), None)
        self._studies[study_id] = _StudyInfo()
