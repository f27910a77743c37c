"""What only the cohort engine does in a search: a cohort's startup and refills, and which
studies `auto` gives it. What every search does, the cohort's included, is tested over both
engines (test_study.py, test_workers.py, test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE, choose_engine
from hpsearch.errors import ConfigError
from hpsearch.search.run import run_search


def test_the_cohort_starts_with_the_pruners_startup_trials_then_fills_up(cohort_study):
    """Until the pruner's 3 startup trials complete it prunes nothing: the cohort trains just
    those, and only then fills its 5 slots (members asked earlier would all train to the
    end)."""
    url, name = cohort_study
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
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
    from hpsearch.engines.cohort import Cohort
    from hpsearch.search import driver

    assert driver.REFILL_AT == 4
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
