"""Many workers on one study: real worker processes on real SQLite, PostgreSQL and MariaDB
databases, by either engine; a worker killed with SIGKILL, Ctrl-C (of one search process too),
resuming, stale trials of earlier runs."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from conftest import SEARCH_ENGINES
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE
from hpsearch.engines.reference import ReferenceEngine
from hpsearch.records import (
    ATTR_END_DETAIL,
    ATTR_END_REASON,
    ATTR_WORKER,
    COMPLETED,
    FAILED,
    INTERRUPTED_DETAIL,
    count_trials,
    stale_detail,
)
from hpsearch.search.driver import SearchDriver
from hpsearch.search.run import run_search
from hpsearch.search.samplers import worker_seed
from hpsearch.search.workers import FileLock, Interruptions, run_workers
from hpsearch.storage.urls import open_storage
from hpsearch.studies import open_study

DATABASES = ["sqlite", "postgres", "mariadb"]


@pytest.fixture
def storage_url(request, tmp_path):
    """A storage URL of each kind: a new SQLite file, or this run's PostgreSQL/MariaDB
    database (tests sharing it use studies of their own names)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'workers.db'}"
    return request.getfixturevalue(f"{request.param}_url")


def _unique(config):
    return config.renamed(f"w_{uuid.uuid4().hex[:8]}")


def _assert_consistent(trials, target, epochs):
    """No trial lost or duplicated, nothing left running, every finished trial complete in
    the database: its intermediate values, its seed, the worker that ran it."""
    assert [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state not in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == target
    for trial in finished:
        run = trial.user_attrs["epochs_run"]
        assert sorted(trial.intermediate_values) == list(range(1, run + 1))
        assert trial.user_attrs["seed"] == 1 + trial.number
        if trial.state == TrialState.COMPLETE:
            assert run == epochs and trial.value == trial.intermediate_values[epochs]
    return finished


@pytest.mark.parametrize("storage_url", DATABASES, indirect=True)
@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_four_workers_reach_exactly_the_target(write_study, storage_url, engine):
    config = _unique(load_study_config(str(write_study())))
    outcome = run_search(config, storage_url, 14, workers=4, engine=engine, cohort_size=4)
    trials = optuna.load_study(study_name=config.name, storage=storage_url).trials
    finished = _assert_consistent(trials, 14, epochs=12)
    assert outcome.engine == engine and {t.user_attrs["engine"] for t in finished} == {engine}
    assert outcome.counts.finished == 14 and outcome.counts.failed == 0
    assert outcome.ran == len(trials) == 14 and outcome.workers == 4
    # Worker processes ran the trials ("host:pid", none of them this one), each drawing its
    # own parameters.
    workers = {t.system_attrs[ATTR_WORKER] for t in trials}
    pids = {int(worker.rsplit(":", 1)[1]) for worker in workers}
    # Which worker takes how many is a race (the first may take them all before the others
    # have imported torch): only that none but the workers ran any.
    assert os.getpid() not in pids and 1 <= len(pids) <= 4
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 14
    again = run_search(config, storage_url, 14, workers=4, engine=engine, cohort_size=4)
    assert again.ran == 0 and again.counts.finished == 14


def test_worker_seeds_differ_and_worker_0_keeps_the_study_seed():
    assert worker_seed(7, 0) == 7
    seeds = [worker_seed(7, k) for k in range(8)]
    assert len(set(seeds)) == 8 and seeds == [worker_seed(7, k) for k in range(8)]


def test_the_trial_of_a_killed_worker_is_failed_and_retried(write_study, tmp_path):
    # Trials of ~1-2 s (no pruning, many epochs): the kill lands mid-trial.
    text = write_study().read_text().replace("epochs = 12", "epochs = 400").replace(
        'kind = "median"', 'kind = "none"')
    config = load_study_config(str(write_study("slow", text=text)))
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    killed: dict = {}

    def kill_a_worker_mid_trial() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="slow", storage=url).trials
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                continue  # no study yet, or the search is creating the schema right now
            for trial in trials:
                worker = trial.system_attrs.get(ATTR_WORKER, "")
                if trial.state == TrialState.RUNNING and worker:
                    os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
                    killed.update(number=trial.number, worker=worker)
                    break

    killer = threading.Thread(target=kill_a_worker_mid_trial)
    killer.start()
    outcome = run_search(config, url, 6, workers=3, heartbeat_s=1, engine="reference")
    killer.join()
    assert killed, "no worker was killed"
    trials = optuna.load_study(study_name="slow", storage=url).trials
    victim = trials[killed["number"]]
    assert victim.state == TrialState.FAIL
    assert victim.user_attrs[ATTR_END_REASON] == FAILED
    assert victim.user_attrs[ATTR_END_DETAIL] == stale_detail(3)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs[ATTR_END_REASON] == COMPLETED  # not its original's end
    assert ATTR_END_DETAIL not in retries[0].user_attrs
    assert retries[0].params == victim.params
    assert retries[0].system_attrs[ATTR_WORKER] != killed["worker"]
    assert outcome.counts.finished == 6 and outcome.counts.failed == 1
    _assert_consistent(trials, 6, epochs=400)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_restart_fails_the_stale_trials_of_earlier_runs_first(write_study, tmp_path):
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'stale.db'}"
    run_search(config, url, 3, engine="reference")
    storage = open_storage(url, write_behind=False, heartbeat_s=1)
    study = optuna.load_study(study_name="small", storage=storage)
    lr = study.trials[0].distributions["lr"]
    beating = study.ask({"lr": lr})
    storage.record_heartbeat(beating._trial_id)  # ... and then its worker died
    beatless = study.ask()  # its worker died before the first beat
    time.sleep(3.5)  # the grace period: 3 beats of 1 s
    outcome = run_search(config, url, 6, heartbeat_s=1, engine="reference")
    trials = outcome.study.get_trials()
    assert trials[beating.number].state == TrialState.FAIL
    assert trials[beatless.number].state == TrialState.FAIL
    assert {trials[n].user_attrs[ATTR_END_DETAIL] for n in (beating.number, beatless.number)} \
        == {stale_detail(3)}
    retried = {t.system_attrs.get("failed_trial"): t for t in trials}
    assert retried[beating.number].params["lr"] == beating.params["lr"]
    assert retried[beatless.number].state.is_finished()
    counts = count_trials(trials)
    assert counts.finished == 6 and counts.failed == 2 and counts.running == 0


def _wait_for_trials(url: str, name: str, condition: Callable[[list], bool],
                     process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Read the study's trials until `condition(trials)` holds while `process` searches it;
    fail if the search ends first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        # No study yet, or the search is creating the schema (or writing) right now.
        with contextlib.suppress(KeyError, sqlalchemy.exc.SQLAlchemyError):
            if condition(optuna.load_study(study_name=name, storage=url).trials):
                return
        if process.poll() is not None:
            pytest.fail(f"the search ended first: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no such trials after {timeout_s} s")
        time.sleep(0.1)


# When Ctrl-C comes, every worker has started this many trials: the reference engine its 4th
# (3 have finished), the cohort engine the pruner's 3 startup trials, which it trains together
# to their last epoch before it ends any (and before it takes a 4th).
STARTED_AT_CTRL_C = {REFERENCE: 4, COHORT: 3}


@pytest.mark.parametrize(("workers", "whom"), [(1, "parent"), (2, "parent"),
                                               (2, "process group")],
                         ids=["one process", "2 workers, parent", "2 workers, process group"])
@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_ctrl_c_fails_the_running_trials_and_the_same_command_resumes(write_study, tmp_path,
                                                                     engine, workers, whom):
    """Ctrl-C to the `hpsearch optimize` process, or a terminal's to it and its workers: the
    running trials end FAILED (a cohort's all), the finished ones stay, the command exits 130
    with one line, and run again it runs only what is missing."""
    # The cohort's startup trials train for seconds (about 0.5 ms an epoch), long enough for
    # the signal to land meanwhile, even through the parent of workers (it polls every 0.5 s);
    # the reference engine's are short, since it trains 3 before the signal.
    epochs = 5000 if engine == COHORT else 100
    path = write_study(text=write_study().read_text().replace("epochs = 12",
                                                              f"epochs = {epochs}"))
    url = f"sqlite:///{tmp_path / 'i.db'}"

    def command(trials: int) -> list[str]:
        return ["optimize", "--study", str(path), "--trials", str(trials), "--storage", url,
                "--workers", str(workers), "--engine", engine, "--cohort-size", "4", "--quiet"]

    def every_worker_started_enough(trials: list) -> bool:
        started = Counter(t.system_attrs.get(ATTR_WORKER) for t in trials)
        started.pop(None, None)
        return len(started) == workers and min(started.values()) >= STARTED_AT_CTRL_C[engine]

    process = subprocess.Popen([sys.executable, "-m", "hpsearch", *command(60)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_for_trials(url, "small", every_worker_started_enough, process)
        if whom == "parent":
            process.send_signal(signal.SIGINT)
        else:  # a terminal's Ctrl-C reaches the parent and the workers
            os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert "Interrupted. Finished trials are stored in sqlite:///" in stderr
    assert "Traceback" not in stderr
    trials = optuna.load_study(study_name="small", storage=url).trials
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert {t.user_attrs.get(ATTR_END_DETAIL) for t in trials if t.state == TrialState.FAIL} \
        == {INTERRUPTED_DETAIL}
    counts = count_trials(trials)
    if engine == REFERENCE:
        assert 3 * workers <= counts.finished < 60 and counts.failed <= workers
    else:
        assert counts.finished == 0 and counts.failed == 3 * workers
    target = counts.finished + 2
    result = CliRunner().invoke(cli, command(target))
    assert result.exit_code == 0, result.output
    assert f"{target} of {target} finished trials (ran 2 trials" in result.output
    _assert_consistent(optuna.load_study(study_name="small", storage=url).trials, target,
                       epochs=epochs)


def test_ctrl_c_as_a_trials_write_commits_waits_for_the_write(write_study, tmp_path):
    """The signal lands as a report's records commit, before the storage notes them written
    (cut there, the trial's FAILED end would write them again, the database would refuse the
    duplicates and the trial stay RUNNING): the trial ends FAILED with that epoch stored once,
    and the study resumes."""
    config = load_study_config(str(write_study()))
    data = config.load_data()
    url = f"sqlite:///{tmp_path / 'i.db'}"
    study = open_study(config, url, data.fingerprint)
    study._storage.flush_s = 0  # every report is written at once
    sessions = study._storage._backend.scoped_session
    engine = study._storage._backend.engine
    reports: list[str] = []

    def note_a_report(_connection, _cursor, statement, *_):
        if "INSERT INTO trial_intermediate_values" in statement:
            reports.append(statement)

    def interrupt_the_first_report(_session):
        if len(reports) == 1:
            reports.append("committed")
            os.kill(os.getpid(), signal.SIGINT)  # handled here, just after the commit

    sqlalchemy.event.listen(engine, "before_cursor_execute", note_a_report)
    sqlalchemy.event.listen(sessions, "after_commit", interrupt_the_first_report)
    previous = signal.getsignal(signal.SIGINT)
    interruptions = Interruptions()
    interruptions.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            SearchDriver(study, config, ReferenceEngine(config, data), 1,
                         interruptions).run(4, threading.Lock())
    finally:
        signal.signal(signal.SIGINT, previous)
        sqlalchemy.event.remove(engine, "before_cursor_execute", note_a_report)
        sqlalchemy.event.remove(sessions, "after_commit", interrupt_the_first_report)
    assert reports[1] == "committed"
    [trial] = optuna.load_study(study_name="small", storage=url).trials
    assert trial.state == TrialState.FAIL
    assert list(trial.intermediate_values) == [1]
    outcome = run_search(config, url, 2, engine="reference")
    assert count_trials(outcome.study.get_trials()).finished == 2


def _hold_the_lock(path: str, holding: multiprocessing.synchronize.Event) -> None:
    """A worker's process that takes the slot lock and keeps it until it is killed."""
    lock = FileLock(path)
    lock.acquire()
    holding.set()
    time.sleep(600)


def test_the_slot_lock_of_a_worker_killed_while_holding_it_is_free_at_once(tmp_path):
    path = str(tmp_path / "slots.lock")
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=_hold_the_lock, args=(path, holding))
    holder.start()
    try:
        assert holding.wait(120)
        lock = FileLock(path)
        assert not lock.acquire(blocking=False)  # held by the other process
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
        assert holder.exitcode == -signal.SIGKILL
        assert lock.acquire(blocking=False)  # the kernel released it with its holder
        lock.release()
        lock.close()
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()


def _never_called(*_: object) -> None:
    raise AssertionError("the worker was to be stopped during its imports")


def test_a_worker_stopped_during_its_start_up_imports_ends_at_once(tmp_path, monkeypatch):
    """SIGTERM while the worker imports what its engine needs (`imports`): it ends as a stopped
    worker, with no traceback, instead of finishing the import first."""
    mark = tmp_path / "importing"
    monkeypatch.setenv("HPSEARCH_TEST_IMPORT_MARK", str(mark))
    stopped = []

    def stop_it_once_importing() -> None:
        if mark.exists() and mark.read_text() and not stopped:
            stopped.append(int(mark.read_text()))
            os.kill(stopped[0], signal.SIGTERM)

    pids = run_workers(_never_called, 1, (), on_poll=stop_it_once_importing, poll_s=0.05,
                       imports=("slow_import_for_workers",))
    assert stopped == pids


def _exited(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal "
                    "is Linux's")
def test_workers_stop_when_their_parent_is_killed(write_study, tmp_path):
    path = write_study(text=write_study().read_text().replace("epochs = 12", "epochs = 200"))
    url = f"sqlite:///{tmp_path / 'p.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "optimize", "--study", str(path), "--trials", "500",
         "--storage", url, "--workers", "2", "--engine", "reference", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children: list[int] = []
    try:
        def both_workers_train(trials: list) -> bool:
            running = {t.system_attrs.get(ATTR_WORKER) for t in trials
                       if t.state == TrialState.RUNNING}
            return len(running - {None}) == 2

        _wait_for_trials(url, "small", both_workers_train, process)
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as listed:
            children = [int(pid) for pid in listed.read().split()]
        workers = {int(w.rsplit(":", 1)[1]) for w in
                   (t.system_attrs.get(ATTR_WORKER) for t in
                    optuna.load_study(study_name="small", storage=url).trials) if w}
        assert workers <= set(children) and len(workers) == 2
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 60
        while not all(_exited(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)  # the workers are stopping (their running trials end FAILED)
        assert all(_exited(pid) for pid in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    trials = optuna.load_study(study_name="small", storage=url).trials
    assert not any(t.state == TrialState.RUNNING for t in trials)  # failed as on Ctrl-C
    assert any(t.state == TrialState.FAIL for t in trials)


def test_two_commands_sharing_a_study_each_count_only_their_own_trials(write_study, tmp_path):
    """Started together on one study, each command's summary says what it ran: together,
    the target (whichever got how many)."""
    import re

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_study()
    run_search(load_study_config(str(path)), url, 1, engine="reference")  # the study exists
    command = [sys.executable, "-m", "hpsearch", "optimize", "--study", str(path), "--trials",
               "12", "--storage", url, "--engine", "reference"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    ran = []
    for output in outputs:
        # 12 of 12, or one over (the overshoot below): "13 (the target is 12) finished".
        found = re.search(r"(?:12 of 12|13 \(the target is 12\)) finished trials "
                          r"\(ran (\d+) trials", output)
        ran.append(int(found.group(1)) if found else 0)
        assert found or "nothing to run" in output, output
    trials = optuna.load_study(study_name="small", storage=url).trials
    # Two commands share no slot lock (as on two machines): one may slip in a trial between
    # the other's count and its creation, the documented overshoot of (commands - 1) x slots.
    assert sum(ran) == len(trials) - 1 and len(trials) - 1 in (11, 12)
