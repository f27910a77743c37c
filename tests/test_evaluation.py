"""Trials measured over folds x seeds: the folds, the runs every trial shares, mean values and
curves on both engines, pruning a trial with all its runs, resume, workers, re-training."""

from __future__ import annotations

import statistics

import numpy as np
import optuna
import pytest
import torch
from conftest import SEARCH_ENGINES, SMALL_WINE
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpsearch.config import EvaluationConfig, load_study_config
from hpsearch.confirm import run_confirmation
from hpsearch.data import load_dataset
from hpsearch.errors import ConfigError
from hpsearch.records import (
    ATTR_FOLD,
    ATTR_RUN_VAL_ACCURACY,
    ATTR_RUN_VAL_LOSS,
    ATTR_SEED,
    ATTR_VAL_ACCURACY,
    ATTR_VAL_LOSS_SEM,
    ATTR_VAL_LOSS_STD,
    Run,
    evaluation_runs,
    run_seed,
)
from hpsearch.report import expected_best, summary, trials_frame, verdict
from hpsearch.search.run import run_search
from hpsearch.studies import open_study, retrain_trial

EVALUATION = "\n[evaluation]\nfolds = 3\nseeds = 2\n"


@pytest.fixture
def cv_study(tmp_path):
    """A small wine study whose every trial is 3 folds x 2 seeds = 6 runs."""
    path = tmp_path / "small.toml"
    path.write_text(SMALL_WINE.format(search="") + EVALUATION)
    return path


# -- the folds --------------------------------------------------------------------------------
def test_folds_are_disjoint_cover_the_rest_and_are_stratified():
    data = load_dataset("wine", folds=4, split_seed=3)
    assert data.n_folds == 4 and data.fold(0) is data.folds[0]
    rows = [{tuple(np.round(r, 5)) for r in fold.valid.features.tolist()} for fold in data.folds]
    # Scaled differently per fold: compare the raw rows through their targets and counts.
    sizes = [len(fold.valid) for fold in data.folds]
    assert sum(sizes) == len(data.folds[0].train) + len(data.folds[0].valid)
    assert max(sizes) - min(sizes) <= 1
    for fold in data.folds:
        assert len(fold.train) + len(fold.valid) == sum(sizes)
        assert len(fold.test) == len(data.test)
        counts = np.bincount(fold.valid.target.numpy(), minlength=3) / len(fold.valid)
        overall = np.bincount(data.folds[0].train.target.numpy().tolist()
                              + data.folds[0].valid.target.numpy().tolist()) / sum(sizes)
        assert np.abs(counts - overall).max() < 0.06  # stratified
    assert all(len(r) == s for r, s in zip(rows, sizes, strict=True))


def test_every_row_is_validated_once_and_the_test_rows_never(tmp_path):
    # Unscaled, so that rows can be recognised across folds.
    data = load_dataset("wine", folds=3, scale=False)
    key = lambda split: {tuple(r) for r in split.features.tolist()}  # noqa: E731
    valid = [key(fold.valid) for fold in data.folds]
    assert not (valid[0] & valid[1]) and not (valid[0] & valid[2]) and not (valid[1] & valid[2])
    rest = key(data.folds[0].train) | valid[0]
    assert valid[0] | valid[1] | valid[2] == rest
    assert not (rest & key(data.test))
    for fold, own in zip(data.folds, valid, strict=True):
        assert key(fold.train) == rest - own


def test_each_fold_is_scaled_as_fit_on_its_training_part():
    data = load_dataset("wine", folds=3)
    for fold in data.folds:
        train = fold.train.features.double()
        assert torch.allclose(train.mean(0), torch.zeros(train.shape[1], dtype=train.dtype),
                              atol=1e-5)
        assert torch.allclose(train.std(0, unbiased=False),
                              torch.ones(train.shape[1], dtype=train.dtype), atol=1e-4)
        assert fold.valid.features.double().mean(0).abs().max() > 1e-3  # not refit there
    one = load_dataset("wine")
    assert one.n_folds == 1 and one.fold(0) is one and one.folds == ()
    assert load_dataset("wine", folds=3).fingerprint != one.fingerprint


# -- the study file ---------------------------------------------------------------------------
def test_the_evaluation_table_and_its_default(cv_study, write_study):
    config = load_study_config(str(cv_study))
    assert config.evaluation == EvaluationConfig(folds=3, seeds=2)
    assert config.evaluation.describe() == "3 folds x 2 seeds = 6 runs per trial"
    assert config.as_dict()["evaluation"] == {"folds": 3, "seeds": 2}
    plain = load_study_config(str(write_study()))
    assert plain.evaluation.runs == 1
    # A study file without [evaluation] stores what it always stored: older studies resume.
    assert "evaluation" not in plain.as_dict()
    bad = cv_study.with_name("bad.toml")
    bad.write_text(SMALL_WINE.format(search="") + "\n[evaluation]\nfolds = 0\n")
    with pytest.raises(ConfigError, match=r"\[evaluation\]\.folds must be >= 1; got 0"):
        load_study_config(str(bad))


def test_every_trial_shares_the_same_runs():
    runs = evaluation_runs(EvaluationConfig(folds=2, seeds=3))
    assert runs == [Run(0, 0), Run(0, 1), Run(0, 2), Run(1, 0), Run(1, 1), Run(1, 2)]
    # Common random numbers: the same seeds whatever the trial; one run: the trial's own.
    assert [run_seed(7, 12, run, 6) for run in runs] == [7, 8, 9, 7, 8, 9]
    assert [run_seed(7, 3, run, 6) for run in runs] == [7, 8, 9, 7, 8, 9]
    assert run_seed(7, 12, Run(0, 0), 1) == 19


# -- a search ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_a_trial_is_the_mean_of_its_runs(cv_study, tmp_path, engine):
    config = load_study_config(str(cv_study))
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    outcome = run_search(config, url, 8, engine=engine, cohort_size=4)
    assert outcome.counts.finished == 8 and outcome.counts.failed == 0
    trials = optuna.load_study(study_name="small", storage=url).trials
    for trial in trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        losses = trial.user_attrs[ATTR_RUN_VAL_LOSS]
        assert len(losses) == 6 and len(trial.user_attrs[ATTR_RUN_VAL_ACCURACY]) == 6
        last = trial.intermediate_values[max(trial.intermediate_values)]
        assert last == pytest.approx(statistics.fmean(losses), rel=1e-12)
        assert trial.user_attrs[ATTR_VAL_LOSS_STD] == pytest.approx(statistics.stdev(losses))
        assert trial.user_attrs[ATTR_VAL_LOSS_SEM] == pytest.approx(
            statistics.stdev(losses) / 6 ** 0.5)
        assert trial.user_attrs[ATTR_VAL_ACCURACY] == pytest.approx(
            statistics.fmean(trial.user_attrs[ATTR_RUN_VAL_ACCURACY]))
        assert sorted(trial.intermediate_values) == list(range(1, len(
            trial.intermediate_values) + 1))  # a pruned trial's runs left together
        assert trial.user_attrs[ATTR_SEED] == config.seed  # its first run's
        if trial.state == TrialState.COMPLETE:
            assert trial.value == last and len(trial.intermediate_values) == 12
    assert any(t.state == TrialState.PRUNED for t in trials)


def test_both_engines_give_the_same_runs(cv_study, tmp_path):
    config = load_study_config(str(cv_study))
    studies = {}
    for engine in SEARCH_ENGINES:
        url = f"sqlite:///{tmp_path / f'{engine}.db'}"
        study = open_study(config, url, config.load_data().fingerprint)
        # The same two configurations for both engines, each twice: the runs are shared.
        for _ in range(2):
            for given in ({"optimizer": "adam", "lr": 0.01, "scheduler": "none"},
                          {"optimizer": "sgd", "lr": 0.1, "scheduler": "cosine"}):
                study.enqueue_trial(config.space.complete(given))
        run_search(config, url, 4, engine=engine)
        studies[engine] = optuna.load_study(study_name="small", storage=url).trials
    reference, cohort = (studies[e] for e in SEARCH_ENGINES)
    for ours in (reference, cohort):
        assert ours[0].params == ours[2].params and ours[1].params == ours[3].params
    assert reference[0].user_attrs[ATTR_RUN_VAL_LOSS] == reference[2].user_attrs[
        ATTR_RUN_VAL_LOSS]  # one run at a time: bit for bit
    for mine, theirs in zip(reference, cohort, strict=True):
        assert mine.params == theirs.params
        assert mine.user_attrs[ATTR_RUN_VAL_LOSS] == pytest.approx(
            theirs.user_attrs[ATTR_RUN_VAL_LOSS], rel=1e-3)


def test_resume_workers_and_retraining_with_runs(cv_study, tmp_path):
    config = load_study_config(str(cv_study))
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    first = run_search(config, url, 3, engine="reference")
    assert first.ran == 3
    second = run_search(config, url, 7, workers=2, engine="reference")
    assert second.ran == 4 and second.counts.finished == 7 and second.counts.running == 0
    trials = optuna.load_study(study_name="small", storage=url).trials
    assert all(len(t.user_attrs[ATTR_RUN_VAL_LOSS]) == 6 for t in trials)
    complete = next(t for t in trials if t.state == TrialState.COMPLETE)
    again = retrain_trial("small", url, complete.number, device="cpu")
    assert len(again.runs) == 6
    assert [r.result.last.val_loss for r in again.runs] == complete.user_attrs[ATTR_RUN_VAL_LOSS]
    assert again.retrained_loss == again.stored_loss == complete.value


def test_confirm_covers_every_fold(cv_study, tmp_path):
    config = load_study_config(str(cv_study))
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    run_search(config, url, 4, engine="cohort")
    outcome = run_confirmation("small", url, top=1, seeds=4)
    runs = optuna.load_study(study_name="small:confirm", storage=url).trials
    assert len(runs) == outcome.ran == 4 * len(outcome.configurations)
    for run in runs:
        assert run.state == TrialState.COMPLETE
        assert run.user_attrs[ATTR_FOLD] == run.user_attrs["seed_index"] % 3
        assert len(run.intermediate_values) == 12 and "test_loss" in run.user_attrs
    # Each seed is one fold for every configuration: paired run by run.
    by_seed = outcome.analysis.runs.groupby("seed")["config_id"].nunique()
    assert (by_seed == len(outcome.configurations)).all()


# -- which schedule wins, run by run ----------------------------------------------------------
def _trial(number: int, scheduler: str, runs: list[float]) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=statistics.fmean(runs),
        params={"optimizer": "adam", "lr": 0.01, "scheduler": scheduler},
        distributions={"optimizer": CategoricalDistribution(["adam"]),
                       "lr": FloatDistribution(1e-4, 1.0, log=True),
                       "scheduler": CategoricalDistribution(["a", "b", "c", "d"])},
        user_attrs={ATTR_RUN_VAL_LOSS: runs})
    trial.number = number
    return trial


def test_groups_are_compared_run_by_run_with_the_best():
    trials = [
        _trial(0, "a", [1.0] * 8),
        _trial(1, "b", [2.0] * 8),  # worse on every run: 8 of 8 pairs, p = 2/2^8
        _trial(2, "c", [1.0] * 8),  # the same runs: tied
        _trial(3, "d", [0.5, 1.5] * 4),  # as good on average, half the runs each way
        _trial(4, "b", [3.0] * 8),  # b's second trial: not its best
    ]
    table = summary(trials_frame(trials), "scheduler").set_index("scheduler")
    assert table.loc["a", "paired"] == "best" and table.loc["a", "best_trial"] == 0
    assert table.loc["b", "paired"] == "better"  # the best is better than b's best
    assert table.loc["b", "p_holm"] == pytest.approx(3 * 2 / 2 ** 8)
    assert table.loc["c", "paired"] == "tied" and table.loc["c", "p_holm"] == 1.0
    assert table.loc["d", "paired"] == "inconclusive"  # not significant: not "as good"
    # At equal budget (the smallest group's 1 complete trial): each group's mean value.
    assert table.loc["b", "expected_best"] == pytest.approx(2.5)
    said = verdict(trials_frame(trials))
    assert said.count("better than b; tied with c; inconclusive against d") == 1
    assert expected_best([4.0, 1.0, 3.0, 2.0], 2) == pytest.approx(10 / 6)
    assert expected_best([1.0, 2.0], 3) != expected_best([1.0, 2.0], 3)  # NaN: no such budget


def test_one_run_studies_have_no_paired_column(small_study):
    url, name = small_study
    frame = trials_frame(optuna.load_study(study_name=name, storage=url))
    assert "paired" not in summary(frame, "scheduler")
    assert "expected_best" in summary(frame, "scheduler")
