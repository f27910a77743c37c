"""Real searches on real SQLite files, by either engine: what a study records, divergence,
resume, re-training, determinism."""

from __future__ import annotations

import math

import optuna
import pytest
from conftest import SEARCH_ENGINES
from optuna.trial import TrialState

from hpsearch import __version__
from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE
from hpsearch.errors import ConfigError, StorageError
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.records import count_trials
from hpsearch.report import trials_frame
from hpsearch.search.run import run_search
from hpsearch.studies import list_studies, load_stored_study, retrain_trial, stored_config

# The shared 16-trial study each engine searched (conftest.py).
SEARCHED_STUDY = {REFERENCE: "small_study", COHORT: "cohort_study"}


@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_a_small_search_records_what_the_dashboard_and_reports_need(engine, request):
    url, name = request.getfixturevalue(SEARCHED_STUDY[engine])
    study = optuna.load_study(study_name=name, storage=url)  # plain Optuna reads it
    trials = study.get_trials()
    counts = count_trials(trials)
    assert counts.finished == len(trials) == 16
    assert counts.complete >= 4 and counts.pruned >= 1
    assert study.user_attrs["hpsearch_version"] == __version__
    assert len(study.user_attrs["hpsearch_data_fingerprint"]) == 16
    assert stored_config(study).as_dict() == study.user_attrs["hpsearch_config"]
    assert len({t.params["optimizer"] for t in trials}) >= 3
    for trial in trials:
        attrs = trial.user_attrs
        epochs = attrs["epochs_run"]
        assert attrs["engine"] == engine
        assert attrs["seed"] == 1 + trial.number
        assert len(attrs["lr_curve"]) == epochs == len(trial.intermediate_values)
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        assert 0.0 <= attrs["val_accuracy"] <= 1.0
        if trial.state == TrialState.COMPLETE:
            assert attrs["end_reason"] == "completed" and epochs == 12
            assert trial.value == trial.intermediate_values[12]
        else:  # pruned from the pruner's warm-up on (warmup_epochs = 3)
            assert attrs["end_reason"] == "pruned" and 3 <= epochs < 12
            assert attrs["end_detail"] == f"pruned by the median pruner at epoch {epochs}"
    best = study.best_trial
    assert best.value == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    frame = trials_frame(study)  # reports read it
    assert list(frame["number"]) == list(range(16))
    assert set(frame["optimizer"]) == {t.params["optimizer"] for t in trials}
    assert set(frame["optimizer"]) <= set(OPTIMIZERS)


def test_diverged_trials_end_cleanly_and_never_win(write_study, tmp_path):
    path = write_study(text="""
        seed = 3
        [data]
        dataset = "linreg"
        scale = false
        [model]
        kind = "linear"
        [training]
        epochs = 12
        [search]
        optimizers = ["sgd"]
        schedulers = ["none"]
        [search.params]
        lr = { values = [0.05, 80.0] }
        momentum = 0
        warmup_frac = 0
        weight_decay = 0
        [sampler]
        kind = "random"
    """)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    outcome = run_search(load_study_config(str(path)), url, 8, engine="reference")
    trials = outcome.study.get_trials()
    diverged = [t for t in trials if t.user_attrs["end_reason"] == "diverged"]
    assert diverged and all(t.params["lr"] == 80.0 for t in diverged)
    assert all(t.state == TrialState.PRUNED for t in diverged)
    assert all("loss became" in t.user_attrs["end_detail"] for t in diverged)
    assert outcome.counts.diverged == len(diverged) and outcome.counts.failed == 0
    assert outcome.best_trial.params["lr"] == 0.05
    assert outcome.counts.finished == 8


@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_rerunning_resumes_up_to_the_target(write_study, tmp_path, engine):
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = run_search(config, url, 5, engine=engine, cohort_size=4)
    assert first.engine == engine and first.ran == 5 and first.counts.finished == 5
    before = {t.number: (t.params, t.value) for t in first.study.get_trials()}
    second = run_search(config, url, 8, engine=engine, cohort_size=4)
    assert second.ran == 3 and second.counts.finished == 8
    after = second.study.get_trials()
    assert [t.number for t in after] == list(range(8))
    assert {t.number: (t.params, t.value) for t in after[:5]} == before
    assert {t.user_attrs["engine"] for t in after} == {engine}
    third = run_search(config, url, 8, engine=engine, cohort_size=4)
    assert third.ran == 0 and len(third.study.get_trials()) == 8


def test_same_seed_gives_the_same_trials(write_study, tmp_path):
    config = load_study_config(str(write_study()))
    runs = [run_search(config, f"sqlite:///{tmp_path / f'{i}.db'}", 8, engine="reference")
            for i in range(2)]
    a, b = ([(t.params, t.value, t.state) for t in r.study.get_trials()] for r in runs)
    assert a == b


def test_a_changed_study_file_is_refused_and_the_study_left_intact(write_study, tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run_search(load_study_config(str(write_study())), url, 3, engine="reference")
    changed = write_study(text=(tmp_path / "small.toml").read_text().replace(
        "epochs = 12", "epochs = 20"))
    with pytest.raises(ConfigError) as error:
        run_search(load_study_config(str(changed)), url, 5, engine="reference")
    assert "study 'small' in sqlite:///" in str(error.value)
    assert "was created from a different study file (training.epochs: stored 12, now 20)" \
        in str(error.value)
    assert len(load_stored_study("small", url).get_trials()) == 3
    renamed = run_search(load_study_config(str(changed)).renamed("small_20"), url, 2,
                         engine="reference")
    assert renamed.counts.finished == 2
    assert [row.name for row in list_studies(url)] == ["small", "small_20"]


@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_retraining_a_stored_trial_reproduces_its_validation_loss(engine, request):
    """The reference engine re-trains a trial of either engine: bit for bit a reference
    engine's, to float precision a cohort's (its stacked model sums in another order)."""
    url, name = request.getfixturevalue(SEARCHED_STUDY[engine])
    study = load_stored_study(name, url)
    pruned = next(t for t in study.get_trials() if t.state == TrialState.PRUNED)
    best = study.best_trial
    for trial in (best, pruned):
        again = retrain_trial(name, url, trial.number)
        assert again.params == trial.params
        assert again.epoch == max(trial.intermediate_values)
        assert again.stored_loss == trial.intermediate_values[again.epoch]
        if engine == REFERENCE:
            assert again.retrained_loss == again.stored_loss  # bit for bit
        else:
            assert math.isclose(again.retrained_loss, again.stored_loss, rel_tol=1e-3,
                                abs_tol=1e-6)
    assert len(again.run.result.history) == 12  # the pruned one, trained to the end


def test_grid_runs_each_configuration_once_and_resumes(tmp_path):
    config = load_study_config("linreg")
    url = f"sqlite:///{tmp_path / 'g.db'}"
    first = run_search(config, url, 3, engine="reference")
    assert first.counts.finished == 3
    final = run_search(config, url, 50, engine="reference")
    assert final.target == 5 and final.counts.finished == 5
    trials = final.study.get_trials()
    assert sorted(t.params["scheduler"] for t in trials) == sorted(
        ["none", "step", "cosine", "exponential", "plateau"])
    assert all(t.value == pytest.approx(0.0426, abs=0.007) for t in trials)


def test_unknown_study_lists_what_the_storage_has(small_study):
    url, _ = small_study
    with pytest.raises(StorageError, match=r"no study 'nope' in sqlite:///.*; it has: small"):
        load_stored_study("nope", url)


def test_an_in_memory_search_runs_in_one_process(write_study):
    config = load_study_config(str(write_study()))
    outcome = run_search(config, "memory", 4, engine="reference")
    assert outcome.counts.finished == 4 and outcome.best_trial is not None
    with pytest.raises(ConfigError, match="--workers needs a storage the workers share"):
        run_search(config, "memory", 4, workers=2, engine="reference")


def test_the_heap_before_a_search_is_frozen_during_it_and_only_then():
    import gc

    from hpsearch.search.run import _heap_frozen

    assert gc.get_freeze_count() == 0
    with _heap_frozen():
        assert gc.get_freeze_count() > 1000  # torch, Optuna, pytest: all there before
        garbage = []
        garbage.append(garbage)  # a cycle made during the search is still collected
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
