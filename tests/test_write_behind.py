"""The write-behind storage (issue 6): persisted studies at in-memory speed, giving up nothing.

Equivalence is checked against the straightforward implementation itself: the same study on
Optuna's plain RDB storage, where every report is a write and every prune decision a read."""

from __future__ import annotations

import datetime
import threading
import time

import optuna
import pytest
import sqlalchemy

from hpsearch.config import load_study_config
from hpsearch.engines.reference import ReferenceEngine
from hpsearch.search.driver import SearchDriver
from hpsearch.search.pruning import build_pruner
from hpsearch.search.run import run_search
from hpsearch.search.samplers import build_sampler
from hpsearch.search.workers import Interruptions
from hpsearch.storage import loader, write_behind
from hpsearch.storage.urls import open_storage
from hpsearch.storage.write_behind import WriteBehindStorage


def _search(config, storage, n_trials: int) -> list[tuple]:
    study = optuna.create_study(study_name=config.name, storage=storage, direction="minimize",
                                sampler=build_sampler(config), pruner=build_pruner(config))
    engine = ReferenceEngine(config, config.load_data())
    SearchDriver(study, config, engine, 1, Interruptions()).run(n_trials, threading.Lock())
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs,
             {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung")})
            for t in study.trials]


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband", "patient"])
def test_same_trials_and_pruning_as_per_epoch_reads_and_writes(write_study, tmp_path, pruner):
    text = (write_study().read_text()
            .replace('kind = "median"', f'kind = "{pruner}"')
            .replace("[pruner]", "[pruner]\nmin_epochs = 1\nreduction_factor = 2\npatience = 1"))
    config = load_study_config(str(write_study("p", text=text)))
    fast = _search(config, open_storage(f"sqlite:///{tmp_path / 'fast.db'}"), 10)
    plain = _search(config, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'plain.db'}"), 10)
    assert fast == plain
    states = [t[1] for t in fast]
    assert optuna.trial.TrialState.COMPLETE in states
    if pruner != "patient":  # it prunes only a trial that stalls: these rarely do
        assert optuna.trial.TrialState.PRUNED in states
    # What the fast storage wrote is what a fresh reader finds in the file.
    again = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'fast.db'}")
    assert [(t.params, t.intermediate_values, t.user_attrs) for t in again.trials] == [
        (t[2], t[4], t[5]) for t in fast]


def _ask(storage):
    study = optuna.create_study(study_name="w", storage=storage, load_if_exists=True)
    return study, study.ask()


def test_a_running_trial_reaches_the_database_within_flush_s_and_fully_at_its_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600)
    study, trial = _ask(storage)
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    for step in range(1, 6):
        trial.report(1.0 / step, step)
    trial.set_user_attr("note", "hi")
    reader = optuna.storages.RDBStorage(url)
    stored = reader.get_trial(trial._trial_id)
    assert stored.intermediate_values == {} and stored.params == {}  # still buffered
    assert storage.get_trial(trial._trial_id).intermediate_values[5] == 0.2  # but live here
    study.tell(trial, 0.2)
    stored = reader.get_trial(trial._trial_id)
    assert stored.intermediate_values == {s: 1.0 / s for s in range(1, 6)}
    assert stored.params == trial.params and stored.user_attrs == {"note": "hi"}
    assert stored.value == 0.2

    eager = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=0.0)
    study, trial = _ask(eager)
    trial.report(0.5, 1)
    assert reader.get_trial(trial._trial_id).intermediate_values == {1: 0.5}


def test_workers_see_each_others_finished_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    first = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=0.0)
    second = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=0.0)
    study_a, trial_a = _ask(first)
    study_b, _ = _ask(second)
    trial_a.report(0.3, 1)
    study_a.tell(trial_a, 0.3)
    seen = study_b.get_trials()
    assert (seen[0].number, seen[0].state, seen[0].value) == (
        0, optuna.trial.TrialState.COMPLETE, 0.3)
    assert seen[0].intermediate_values == {1: 0.3}


def test_a_new_trial_is_sampled_from_what_other_workers_finished_up_to_now(tmp_path):
    """Between refreshes a worker reads its snapshot; asking a trial reads afresh, so that
    the sampler knows the other workers' latest trials, as in one process."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=3600)
    second = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=3600)
    study_a, trial_a = _ask(first)
    study_b, _ = _ask(second)
    assert [t.state for t in study_b.get_trials()] == [optuna.trial.TrialState.RUNNING] * 2
    study_a.tell(trial_a, 0.3)
    assert study_b.get_trials()[0].state == optuna.trial.TrialState.RUNNING  # the snapshot
    study_b.ask()  # the sampler's reads come next
    seen = study_b.get_trials()
    assert [(t.number, t.state) for t in seen] == [
        (0, optuna.trial.TrialState.COMPLETE), (1, optuna.trial.TrialState.RUNNING),
        (2, optuna.trial.TrialState.RUNNING)]


def test_trials_created_together_are_numbered_as_optuna_numbers_them(tmp_path):
    """A cohort's trials are created in one transaction; their numbers still follow the
    study's order when another worker creates trials in between, and they are held live."""
    url = f"sqlite:///{tmp_path / 'n.db'}"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600)
    other = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="n", storage=storage)
    first = storage.create_running_trials(study._study_id, 3)
    between = other.create_new_trial(study._study_id)
    second = storage.create_running_trials(study._study_id, 2)
    assert storage.create_running_trials(study._study_id, 0) == []
    stored = {t._trial_id: t for t in optuna.load_study(study_name="n", storage=url).trials}
    assert [stored[i].number for i in [*first, between, *second]] == [0, 1, 2, 3, 4, 5]
    assert {stored[i].state for i in stored} == {optuna.trial.TrialState.RUNNING}
    trial = optuna.Trial(study, second[0])
    trial.report(0.5, 1)  # held here, not yet written
    assert storage.get_trial(second[0]).intermediate_values == {1: 0.5}
    assert other.get_trial(second[0]).intermediate_values == {}
    study.tell(trial, 0.5)
    assert other.get_trial(second[0]).intermediate_values == {1: 0.5}
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3, 4, 5]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask, not optimize: on purpose
def test_an_asked_trial_beats_from_its_creation_and_the_thread_beats_only_when_due(
        tmp_path, monkeypatch):
    """`study.ask` creates the trial running with its first heartbeat, in one transaction;
    `optimize`'s heartbeat thread then skips its first beat (made a moment ago), and beats
    again once half an interval has passed."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    rdb = optuna.storages.RDBStorage(url, heartbeat_interval=10)
    storage = WriteBehindStorage(rdb)
    study = optuna.create_study(study_name="b", storage=storage)
    trial = study.ask()
    beats = optuna.storages._rdb.models.TrialHeartbeatModel

    def beat_of(trial_id):
        with optuna.storages._rdb.storage._create_scoped_session(rdb.scoped_session) as s:
            row = beats.where_trial_id(trial_id, s)
            return None if row is None else row.heartbeat

    first = beat_of(trial._trial_id)
    assert first is not None
    assert optuna.load_study(study_name="b", storage=url).trials[0].state == \
        optuna.trial.TrialState.RUNNING
    written = []
    monkeypatch.setattr(storage, "record_heartbeats", written.append)
    storage.record_heartbeat(trial._trial_id)  # the thread's first beat: just made
    assert written == []
    clock = write_behind.time.monotonic() + 5.0  # half an interval later
    monkeypatch.setattr(write_behind.time, "monotonic", lambda: clock)
    storage.record_heartbeat(trial._trial_id)
    assert written == [[trial._trial_id]]


def test_a_refresh_reads_what_other_workers_changed_and_never_our_own_trials(tmp_path,
                                                                             monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ours = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=0.0, flush_s=3600)
    theirs = WriteBehindStorage(optuna.storages.RDBStorage(url), refresh_s=0.0)
    study, running = _ask(ours)
    _, done = _ask(ours)
    running.report(0.4, 1)
    study.tell(done, 0.1)
    their_study, their_trial = _ask(theirs)
    their_trial.report(0.2, 1)
    their_study.tell(their_trial, 0.2)
    reads = []
    original = loader.load_trials
    monkeypatch.setattr(loader, "load_trials",
                        lambda session, ids: reads.append(ids) or original(session, ids))
    seen = {t.number: t for t in study.get_trials()}
    assert reads == [[their_trial._trial_id]]
    assert (seen[0].state, seen[0].intermediate_values) == (
        optuna.trial.TrialState.RUNNING, {1: 0.4})
    assert (seen[1].value, seen[2].value) == (0.1, 0.2)
    assert seen[2].intermediate_values == {1: 0.2}


def _written_only_when_asked(tmp_path, name: str) -> tuple[WriteBehindStorage,
                                                            optuna.storages.RDBStorage,
                                                            optuna.Study]:
    """A new study on a write-behind SQLite storage that writes only when a write is due
    (its periodic flush and refresh an hour away), and a plain storage of the same file that
    reads what reached it."""
    url = f"sqlite:///{tmp_path / name}.db"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600,
                                 refresh_s=3600)
    return (storage, optuna.storages.RDBStorage(url),
            optuna.create_study(study_name=name, storage=storage))


def test_trials_ending_together_reach_the_database_in_one_write(tmp_path, caplog):
    """A cohort's round ends several trials: their last records and ends are written when
    the round closes, in one transaction; one failed meanwhile by another worker keeps the
    FAIL that worker wrote, and this storage reads it back."""
    storage, reader, study = _written_only_when_asked(tmp_path, "e")
    done, pruned, lost = study.ask(), study.ask(), study.ask()
    for trial, value in ((done, 0.25), (pruned, 0.75), (lost, 0.5)):
        trial.report(value, 1)
    reader.set_trial_state_values(lost._trial_id, optuna.trial.TrialState.FAIL)
    with storage.ending_together():
        done.set_user_attr("end_reason", "completed")
        study.tell(done, 0.25)
        study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        study.tell(lost, 0.5)
        assert reader.get_trial(done._trial_id).state == optuna.trial.TrialState.RUNNING
        assert reader.get_trial(done._trial_id).intermediate_values == {}
    stored = {t.number: t for t in optuna.load_study(study_name="e", storage=reader).trials}
    assert (stored[0].state, stored[0].value, stored[0].intermediate_values,
            stored[0].user_attrs) == (optuna.trial.TrialState.COMPLETE, 0.25, {1: 0.25},
                                      {"end_reason": "completed"})
    assert stored[0].datetime_complete is not None
    assert (stored[1].state, stored[1].value) == (optuna.trial.TrialState.PRUNED, 0.75)
    assert (stored[2].state, stored[2].value, stored[2].intermediate_values) == (
        optuna.trial.TrialState.FAIL, None, {})
    assert "trial 2 was failed by another worker's heartbeat check" in caplog.text
    assert [t.state for t in study.get_trials()] == [t.state for t in stored.values()]


def test_deferred_ends_count_at_once_and_reach_the_database_with_the_next_write(tmp_path,
                                                                               caplog):
    """A cohort's round defers its ends to the next write: until then the database holds
    the trials running, this storage counts them as ended, and the next write (here a
    refill's records) takes them along, in the same transaction; one failed meanwhile by
    another worker is theirs, as with ends written at once."""
    storage, reader, study = _written_only_when_asked(tmp_path, "d")
    done, pruned, lost, running = study.ask(), study.ask(), study.ask(), study.ask()
    for trial, value in ((done, 0.25), (pruned, 0.75), (lost, 0.5), (running, 0.1)):
        trial.report(value, 1)
    with storage.ending_together(defer=True):
        study.tell(done, 0.25)
        study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        study.tell(lost, 0.5)
    stored = {t.number: t for t in reader.get_all_trials(study._study_id)}
    assert {t.state for t in stored.values()} == {optuna.trial.TrialState.RUNNING}
    assert storage.count_states(study._study_id) == {
        optuna.trial.TrialState.COMPLETE: 2, optuna.trial.TrialState.PRUNED: 1,
        optuna.trial.TrialState.RUNNING: 1}
    reader.set_trial_state_values(lost._trial_id, optuna.trial.TrialState.FAIL)
    writes = []
    sqlalchemy.event.listen(storage._backend.engine, "commit", lambda _: writes.append(1))
    storage.flush_trials([running._trial_id])
    assert len(writes) == 1
    stored = {t.number: t for t in reader.get_all_trials(study._study_id)}
    assert (stored[0].state, stored[0].value, stored[0].intermediate_values) == (
        optuna.trial.TrialState.COMPLETE, 0.25, {1: 0.25})
    assert (stored[1].state, stored[1].value) == (optuna.trial.TrialState.PRUNED, 0.75)
    assert (stored[2].state, stored[2].intermediate_values) == (
        optuna.trial.TrialState.FAIL, {})
    assert (stored[3].state, stored[3].intermediate_values) == (
        optuna.trial.TrialState.RUNNING, {1: 0.1})
    assert "trial 2 was failed by another worker's heartbeat check" in caplog.text
    storage.write_deferred_ends()  # nothing left: no write
    assert len(writes) == 1
    with storage.ending_together(defer=True):
        study.tell(running, 0.1)
    storage.write_deferred_ends()
    assert reader.get_trial(running._trial_id).state == optuna.trial.TrialState.COMPLETE
    assert storage.count_states(study._study_id) == {
        optuna.trial.TrialState.COMPLETE: 2, optuna.trial.TrialState.PRUNED: 1,
        optuna.trial.TrialState.FAIL: 1}


def test_a_trial_failed_elsewhere_never_blocks_the_batch_of_the_others(tmp_path):
    """Of a cohort's trials written together, one failed meanwhile by another worker's
    heartbeat check is dropped: the others' records land, and only a write on behalf of the
    failed trial itself raises, as a direct write would."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600)
    study = optuna.create_study(study_name="b", storage=storage)
    kept, lost = study.ask(), study.ask()
    kept.report(0.5, 1)
    lost.report(0.7, 1)
    reader = optuna.storages.RDBStorage(url)
    reader.set_trial_state_values(lost._trial_id, optuna.trial.TrialState.FAIL)
    storage.flush_trials([kept._trial_id, lost._trial_id])
    assert reader.get_trial(kept._trial_id).intermediate_values == {1: 0.5}
    assert reader.get_trial(lost._trial_id).intermediate_values == {}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        lost.report(0.6, 2)
    study.tell(kept, 0.5)
    assert reader.get_trial(kept._trial_id).value == 0.5


def test_a_rounds_reports_in_one_call_land_and_name_the_trials_failed_elsewhere(tmp_path):
    """A cohort reports a round's values in one call: they land at the next flush, and a
    trial another worker failed meanwhile is named (not raised), at the flush that finds
    out and at every report after it."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600)
    study = optuna.create_study(study_name="r", storage=storage)
    kept, lost = study.ask(), study.ask()
    ids = kept._trial_id, lost._trial_id
    assert storage.set_intermediate_values([(ids[0], 1, 0.5), (ids[1], 1, 0.7)]) == []
    reader = optuna.storages.RDBStorage(url)
    assert reader.get_trial(ids[0]).intermediate_values == {}  # not flushed yet
    assert storage.get_trial(ids[1]).intermediate_values == {1: 0.7}  # but read back
    reader.set_trial_state_values(ids[1], optuna.trial.TrialState.FAIL)
    storage.flush_s = 0.0  # the next report flushes
    assert storage.set_intermediate_values([(ids[0], 2, 0.4), (ids[1], 2, 0.6)]) == [ids[1]]
    assert reader.get_trial(ids[0]).intermediate_values == {1: 0.5, 2: 0.4}
    assert reader.get_trial(ids[1]).intermediate_values == {}
    assert storage.set_intermediate_values([(ids[0], 3, 0.3), (ids[1], 3, 0.5)]) == [ids[1]]
    assert reader.get_trial(ids[0]).intermediate_values == {1: 0.5, 2: 0.4, 3: 0.3}


def test_a_failed_trial_keeps_what_it_reported(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    storage = WriteBehindStorage(optuna.storages.RDBStorage(url), flush_s=3600)
    study = optuna.create_study(study_name="f", storage=storage)

    def interrupted(trial):
        trial.report(0.9, 1)
        trial.report(0.8, 2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.optimize(interrupted, n_trials=1)
    stored = optuna.storages.RDBStorage(url).get_all_trials(study._study_id)[0]
    assert stored.state == optuna.trial.TrialState.FAIL
    assert stored.intermediate_values == {1: 0.9, 2: 0.8}


def test_deadlocks_and_lock_timeouts_are_retried_other_errors_are_not():
    import pymysql
    import sqlalchemy

    from hpsearch.storage.bulk_sql import _is_transient

    def mysql(code: int, text: str) -> Exception:
        return sqlalchemy.exc.OperationalError("INSERT", {}, pymysql.err.OperationalError(code,
                                                                                          text))

    assert _is_transient(mysql(1213, "Deadlock found when trying to get lock"))
    assert _is_transient(mysql(1205, "Lock wait timeout exceeded"))
    assert not _is_transient(mysql(1045, "Access denied for user"))
    assert not _is_transient(None)


def test_a_study_name_is_looked_up_once_and_forgotten_when_the_study_is_deleted(tmp_path):
    """Hyperband makes a Study by name for every decision: the name's id is read once (not a
    query per decision), and a study deleted here and made again gets its new id."""
    backend = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'n.db'}")
    storage = WriteBehindStorage(backend)
    first = optuna.create_study(study_name="n", storage=storage)._study_id
    queries = []
    sqlalchemy.event.listen(backend.engine, "before_cursor_execute",
                            lambda *args: queries.append(args[2]))
    assert [storage.get_study_id_from_name("n") for _ in range(3)] == [first] * 3
    assert len(queries) <= 1
    storage.delete_study(first)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("n")  # not served from what was read before
    optuna.create_study(study_name="other", storage=storage)
    second = optuna.create_study(study_name="n", storage=storage)._study_id
    assert storage.get_study_id_from_name("n") == second
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("never made")


def test_trial_times_are_stored_as_optuna_stores_them(write_study, tmp_path, monkeypatch):
    """Optuna's tables hold naive UTC times: in a time zone other than UTC, Optuna's own
    reading of what the write-behind storage wrote gives the local times of the search."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        url = f"sqlite:///{tmp_path / 'times.db'}"
        started = datetime.datetime.now() - datetime.timedelta(seconds=1)
        run_search(load_study_config(str(write_study())), url, 3, engine="reference")
        ended = datetime.datetime.now() + datetime.timedelta(seconds=1)
        study = optuna.load_study(study_name="small", storage=url)
        trials = study.trials
        assert len(trials) == 3
        for trial in trials:
            assert started <= trial.datetime_start <= trial.datetime_complete <= ended
        ours = open_storage(url).get_all_trials(study._study_id)
        assert [(t.datetime_start, t.datetime_complete) for t in ours] == [
            (t.datetime_start, t.datetime_complete) for t in trials]
    finally:
        monkeypatch.undo()
        time.tzset()
