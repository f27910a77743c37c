"""Searches run by the cohort engine: ordinary Optuna studies, with the reference engine's
records, targets, pruning and resumption."""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from conftest import SMALL_WINE
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.errors import ConfigError
from hpsearch.report import trials_frame
from hpsearch.search.driver import COHORT, REFERENCE, choose_engine
from hpsearch.studies import retrain_trial, run_search


@pytest.fixture(scope="module")
def cohort_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    """A 20-trial wine search by the cohort engine, 5 trials at a time (SQLite)."""
    folder = tmp_path_factory.mktemp("cohort_study")
    path = folder / "small.toml"
    path.write_text(SMALL_WINE.format(search=""))
    url = f"sqlite:///{folder / 'study.db'}"
    outcome = run_search(load_study_config(str(path)), url, 20, engine=COHORT, cohort_size=5)
    return url, outcome


def test_a_cohort_search_reaches_exactly_its_target_with_complete_records(cohort_study):
    url, outcome = cohort_study
    assert outcome.engine == COHORT and outcome.cohort_size == 5
    study = optuna.load_study(study_name="small", storage=url)
    trials = study.get_trials()
    assert len(trials) == 20
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert outcome.counts.complete >= 1 and outcome.counts.pruned >= 1
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["engine"] == COHORT
        assert attrs["seed"] == 1 + trial.number
        steps = sorted(trial.intermediate_values)
        if attrs["end_reason"] == "diverged":
            assert steps == list(range(1, len(steps) + 1))
            continue
        # Every epoch trained is in the database, and nothing else.
        assert steps == list(range(1, attrs["epochs_run"] + 1))
        assert len(attrs["lr_curve"]) == attrs["epochs_run"]
        if trial.state == TrialState.COMPLETE:
            assert attrs["epochs_run"] == 12
            assert trial.value == trial.intermediate_values[12]
        else:
            assert attrs["end_reason"] == "pruned"
            assert "pruned by the median pruner at epoch" in attrs["end_detail"]


def test_pruning_waits_for_the_pruners_warmup_and_startup(cohort_study):
    url, _ = cohort_study
    study = optuna.load_study(study_name="small", storage=url)
    for trial in study.get_trials(states=(TrialState.PRUNED,)):
        if trial.user_attrs["end_reason"] == "pruned":
            assert trial.user_attrs["epochs_run"] >= 3  # warmup_epochs = 3


def test_the_cohort_starts_with_the_pruners_startup_trials_then_fills_up(cohort_study):
    """Until the pruner's 3 startup trials complete it prunes nothing: the cohort trains just
    those, and only then fills its 5 slots (members asked earlier would all train to the
    end)."""
    url, _ = cohort_study
    trials = optuna.load_study(study_name="small", storage=url).get_trials()
    first = [t for t in trials if t.number < 3]
    assert all(t.state == TrialState.COMPLETE for t in first)
    startup_done = max(t.datetime_complete for t in first)
    assert all(t.datetime_start >= startup_done for t in trials if t.number >= 3)
    # From then on up to 5 at a time: trial 7 starts before trials 3..7 all ended.
    assert trials[7].datetime_start < max(t.datetime_complete for t in trials[3:7])
    most = max(sum(t.datetime_start <= when < t.datetime_complete for t in trials)
               for when in (t.datetime_start for t in trials))
    assert most == 5


def test_a_running_cohort_is_refilled_once_a_quarter_of_it_is_free(write_study, tmp_path,
                                                                   monkeypatch):
    """A refill costs about as much for one trial as for several: a running cohort of 8 waits
    for 2 free slots (REFILL_AT = 4), then takes trials for all of them."""
    from hpsearch.search import driver as cohort_search
    from hpsearch.engines.cohort import Cohort

    assert cohort_search.REFILL_AT == 4
    refills = []  # (members before, joining)
    add = Cohort.add

    def recording_add(self, members):
        refills.append((len(self), len(members)))
        return add(self, members)

    monkeypatch.setattr(Cohort, "add", recording_add)
    run_search(load_study_config(str(write_study())), f"sqlite:///{tmp_path / 's.db'}", 40,
               engine=COHORT, cohort_size=8)
    running = [(before, joining) for before, joining in refills if before and joining]
    assert len(running) >= 3
    assert all(8 - before >= 2 for before, _ in running)
    # Each took as many trials as were free, but the last, when the study had less room.
    assert all(before + joining == 8 for before, joining in running[:-1])


def test_reports_read_a_cohort_study(cohort_study):
    url, _ = cohort_study
    frame = trials_frame(optuna.load_study(study_name="small", storage=url))
    assert len(frame) == 20
    assert set(frame["optimizer"].dropna()) <= {
        "sgd", "adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad", "adadelta"}


def test_the_reference_engine_retrains_a_cohort_trial_to_the_same_loss(cohort_study):
    url, _ = cohort_study
    study = optuna.load_study(study_name="small", storage=url)
    best = study.best_trial
    again = retrain_trial("small", url, best.number)
    assert math.isclose(again.retrained_loss, again.stored_loss, rel_tol=1e-3, abs_tol=1e-6)


def test_a_cohort_search_resumes_to_a_larger_target(write_study, tmp_path: Path):
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    first = run_search(config, url, 7, engine=COHORT, cohort_size=4)
    assert first.counts.finished == 7
    second = run_search(config, url, 11, engine=COHORT, cohort_size=4)
    assert second.counts.finished == 11 and second.ran == 4


def test_auto_picks_the_cohort_engine_where_it_can_and_says_why_not(write_study):
    config = load_study_config(str(write_study()))
    assert choose_engine("auto", config, config.load_data()) == (COHORT, "")
    assert choose_engine(REFERENCE, config, config.load_data()) == (REFERENCE, "")
    text = Path(write_study()).read_text().replace('hidden = [10, 10]',
                                                   'hidden = [10, 10]\ndropout = 0.1')
    dropout = load_study_config(str(write_study("dropout", text=text)))
    engine, why = choose_engine("auto", dropout, dropout.load_data())
    assert engine == REFERENCE and "dropout" in why
    with pytest.raises(ConfigError, match="--engine cohort cannot train study 'dropout'"):
        choose_engine(COHORT, dropout, dropout.load_data())


def test_cli_runs_the_cohort_engine_and_says_so(write_study, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(cli, [
        "optimize", "--study", str(write_study()), "--trials", "6", "--storage", url,
        "--engine", "cohort", "--cohort-size", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "cohort engine, 3 trials at a time" in result.output
    assert "6 of 6 finished trials" in result.output
    bad = CliRunner().invoke(cli, [
        "optimize", "--study", str(write_study()), "--trials", "6", "--storage", url,
        "--engine", "cohort", "--cohort-size", "0", "--quiet"])
    assert bad.exit_code != 0 and "--cohort-size must be >= 1" in bad.output


def test_two_cohort_workers_share_a_study_and_stop_at_the_target(write_study, tmp_path: Path):
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'workers.db'}"
    outcome = run_search(config, url, 12, workers=2, engine=COHORT, cohort_size=4)
    assert outcome.counts.finished == 12 and outcome.counts.failed == 0
    trials = optuna.load_study(study_name="small", storage=url).get_trials()
    assert len(trials) == 12
    # Which worker ran which trial is a race (the first may finish before the second has
    # imported torch); that each trial names its worker process is not.
    assert all(":" in t.system_attrs["hpsearch_worker"] for t in trials)


def test_ctrl_c_fails_the_cohorts_trials_and_the_study_resumes(write_study, tmp_path: Path):
    """Interrupted mid-round, the cohort's running trials end FAILED (none left RUNNING), and
    the same command later reaches the target."""
    path = write_study(text=write_study().read_text().replace("epochs = 12", "epochs = 1000"))
    url = f"sqlite:///{tmp_path / 'ctrl_c.db'}"
    command = [sys.executable, "-m", "hpsearch", "optimize", "--study", str(path),
               "--trials", "8", "--storage", url, "--quiet", "--engine", "cohort",
               "--cohort-size", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until a cohort is training
        time.sleep(0.5)
        with contextlib.suppress(KeyError):
            trials = optuna.load_study(study_name="small", storage=url).trials
            # 3: the cohort starts with the pruner's startup trials
            if sum(t.state == TrialState.RUNNING for t in trials) == 3:
                break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    trials = optuna.load_study(study_name="small", storage=url).trials
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert sum(t.state == TrialState.FAIL for t in trials) >= 3
    outcome = run_search(load_study_config(str(path)), url, 8, engine=COHORT, cohort_size=4)
    assert outcome.counts.finished == 8 and outcome.counts.running == 0
