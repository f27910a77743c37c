"""report.py: the trials frame, summaries, leaderboard, verdict and tables, checked against
Optuna's own view of a real small study, and against hand-built studies for the edge cases
(diverged, failed and running trials, ties, a winner with few trials)."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.errors import ConfigError, HPSearchError
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.records import (
    ATTR_LR_CURVE,
    ATTR_RUN_VAL_ACCURACY,
    ATTR_RUN_VAL_LOSS,
    count_trials,
    run_user_attrs,
    stored_lrs,
)
from hpsearch.report import (
    CORE_COLUMNS,
    SUMMARY_BY,
    curves_frame,
    format_cell,
    leaderboard,
    markdown_table,
    param_importances,
    summary,
    text_table,
    trial_state,
    trials_frame,
    verdict,
)
from hpsearch.schedulers import SCHEDULERS
from hpsearch.studies import load_stored_study, retrain_trial
from hpsearch.training import EpochStats

DISTRIBUTIONS = {
    "optimizer": CategoricalDistribution(list(OPTIMIZERS)),
    "lr": FloatDistribution(1e-5, 1.0, log=True),
    "use_weight_decay": CategoricalDistribution([False, True]),
    "weight_decay": FloatDistribution(1e-6, 0.1, log=True),
    "momentum": FloatDistribution(0.0, 0.99),
    "scheduler": CategoricalDistribution(list(SCHEDULERS)),
    "step_gamma": FloatDistribution(0.05, 0.9),
}


def add_trial(study: optuna.Study, value: float | None, optimizer: str = "adam",
              scheduler: str = "none", lr: float = 0.01, state: TrialState = TrialState.COMPLETE,
              reason: str | None = None, **params: object) -> None:
    """A trial as hpsearch stores it, without training anything."""
    params = {"optimizer": optimizer, "lr": lr, "use_weight_decay": False,
              "scheduler": scheduler, **params}
    epochs = 4 if state == TrialState.COMPLETE else 2
    attrs = {"end_reason": reason or ("completed" if state == TrialState.COMPLETE else "pruned"),
             "epochs_run": epochs, "lr_curve": [lr] * epochs, "seed": len(study.trials)}
    intermediate = {} if value is None else {e: value + (epochs - e) * 0.1
                                             for e in range(1, epochs + 1)}
    # Like Optuna, a pruned trial's value is the last loss it reported.
    finished = state in (TrialState.COMPLETE, TrialState.PRUNED)
    study.add_trial(create_trial(
        state=state, value=value if finished else None,
        params=params, distributions={name: DISTRIBUTIONS[name] for name in params},
        user_attrs=attrs, intermediate_values=intermediate,
    ))


def in_memory() -> optuna.Study:
    return optuna.create_study(direction="minimize")


@pytest.fixture(scope="module")
def real(small_study: tuple[str, str]) -> tuple[optuna.Study, pd.DataFrame]:
    url, name = small_study
    study = load_stored_study(name, url)
    return study, trials_frame(study)


# -- trials frame -----------------------------------------------------------------------------
def test_trials_frame_has_one_row_per_trial_with_optunas_values(real):
    study, frame = real
    trials = study.trials
    assert frame["number"].tolist() == [t.number for t in trials]
    assert list(frame.columns[:len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    counts = count_trials(trials)
    assert (frame["state"] == "complete").sum() == counts.complete
    assert (frame["state"] == "pruned").sum() == counts.pruned
    for trial, row in zip(trials, frame.itertuples(), strict=True):
        assert row.state == trial_state(trial)
        assert row.value == pytest.approx(trial.value)
        assert row.optimizer == trial.params["optimizer"]
        assert row.scheduler == trial.params["scheduler"]
        assert row.lr == trial.params["lr"]
        assert row.epochs_run == trial.user_attrs["epochs_run"]
        assert row.duration_s == pytest.approx(trial.duration.total_seconds(), abs=1e-3)
        expected_decay = trial.params.get("weight_decay", 0.0)
        assert row.weight_decay == expected_decay
        for name, value in trial.params.items():  # every parameter is its own column
            assert frame.loc[row.Index, name] == value


def test_trials_frame_states_and_missing_branches():
    study = in_memory()
    add_trial(study, 0.5, "sgd", "step", momentum=0.9, step_gamma=0.5)
    add_trial(study, 0.7, state=TrialState.PRUNED)
    add_trial(study, 0.9, state=TrialState.PRUNED, reason="diverged")
    add_trial(study, None, state=TrialState.FAIL)
    add_trial(study, None, state=TrialState.RUNNING)
    add_trial(study, 0.4, use_weight_decay=True, weight_decay=0.01)
    frame = trials_frame(study)
    assert frame["state"].tolist() == ["complete", "pruned", "diverged", "failed", "running",
                                       "complete"]
    assert frame["momentum"].isna().tolist() == [False, True, True, True, True, True]
    assert frame["weight_decay"].tolist() == [0.0] * 5 + [0.01]
    assert frame["val_accuracy"].isna().all()
    assert frame["value"].tolist()[:3] == [0.5, 0.7, 0.9]
    assert frame["value"].isna().tolist() == [False, False, False, True, True, False]


def test_curves_frame_is_per_epoch_loss_and_lr(real):
    study, _ = real
    best = study.best_trial
    curves = curves_frame(study, [best.number])
    assert curves["number"].unique().tolist() == [best.number]
    assert curves["epoch"].tolist() == list(range(1, best.user_attrs["epochs_run"] + 1))
    assert curves["val_loss"].tolist() == [best.intermediate_values[e] for e in curves["epoch"]]
    assert curves["lr"].tolist() == best.user_attrs["lr_curve"]


def test_a_stored_lr_curve_is_the_lrs_it_trained_with_to_4_significant_digits(small_study):
    url, name = small_study
    best = load_stored_study(name, url).best_trial
    trained = [stats.lr for stats in retrain_trial(name, url, best.number).run.result.history]
    stored = best.user_attrs[ATTR_LR_CURVE]
    assert stored == [float(f"{lr:.4g}") for lr in trained] == stored_lrs(trained)
    assert stored != trained  # the searched lr has more digits than the curve keeps


def test_run_records_keep_each_runs_loss_whole_and_its_accuracy_to_7_digits():
    """The paired statistics compare the runs' losses: those are stored as they are."""
    close = 0.1606821575178448
    losses = [close, math.nextafter(close, 1.0), 0.04400026312748047]  # no tie to make
    accuracies = [27 / 29, 1.0, 26 / 28]
    histories = [[EpochStats(1, 0.1, 0.5, loss, accuracy)]
                 for loss, accuracy in zip(losses, accuracies, strict=True)]
    attrs = run_user_attrs(histories, epochs=1)
    assert attrs[ATTR_RUN_VAL_LOSS] == losses
    assert attrs[ATTR_RUN_VAL_ACCURACY] == [0.9310345, 1.0, 0.9285714]


# -- summaries --------------------------------------------------------------------------------
@pytest.mark.parametrize("by", SUMMARY_BY)
def test_summary_counts_add_up(real, by):
    study, frame = real
    table = summary(frame, by)
    counts = count_trials(study.trials)
    assert table["trials"].sum() == len(study.trials)
    assert (table["trials"] == table[["complete", "pruned", "diverged", "failed",
                                      "running"]].sum(axis=1)).all()
    assert table["complete"].sum() == counts.complete
    assert table["pruned"].sum() == counts.pruned
    keys = ["optimizer", "scheduler"] if by == "pair" else [by]
    assert not table.duplicated(keys).any()


@pytest.mark.parametrize("by", ["scheduler", "optimizer", "pair"])
def test_best_per_group_matches_a_direct_computation(real, by):
    study, frame = real
    keys = ("optimizer", "scheduler") if by == "pair" else (by,)
    complete = defaultdict(list)
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            complete[tuple(trial.params[k] for k in keys)].append(trial)
    table = summary(frame, by)
    ranked = table[table["complete"] > 0]
    assert len(ranked) == len(complete)
    for row in ranked.itertuples():
        trials = complete[tuple(getattr(row, k) for k in keys)]
        best = min(trials, key=lambda t: (t.value, t.number))
        assert row.best_value == best.value
        assert row.best_trial == best.number
        assert row.lr == best.params["lr"]
        assert row.median_value == pytest.approx(statistics.median(t.value for t in trials))
        assert row.complete == len(trials)
    # Best first, groups without a complete trial last.
    assert ranked["best_value"].is_monotonic_increasing
    assert table["complete"].tolist() == sorted(table["complete"].tolist(),
                                                key=lambda n: n == 0)


def test_summary_ties_are_broken_by_trial_number_then_name():
    study = in_memory()
    add_trial(study, 0.2, scheduler="step")
    add_trial(study, 0.2, scheduler="cosine")
    add_trial(study, 0.1, scheduler="none")
    add_trial(study, 0.3, scheduler="plateau", state=TrialState.PRUNED)
    add_trial(study, 0.3, scheduler="exponential", state=TrialState.PRUNED)
    table = summary(trials_frame(study), "scheduler")
    assert table["scheduler"].tolist() == ["none", "step", "cosine", "exponential", "plateau"]
    assert table["best_trial"].isna().tolist() == [False, False, False, True, True]


def test_summary_of_an_unknown_by_is_a_one_line_error(real):
    with pytest.raises(ConfigError) as raised:
        summary(real[1], "foo")
    assert str(raised.value) == "by 'foo' is unknown; known: scheduler, optimizer, pair"


# -- leaderboard ------------------------------------------------------------------------------
def test_leaderboard_best_is_optunas_best_trial(real):
    study, frame = real
    board = leaderboard(frame, 5)
    assert board.loc[0, "number"] == study.best_trial.number
    assert board.loc[0, "value"] == study.best_value
    assert board["rank"].tolist() == [1, 2, 3, 4, 5]
    assert board["value"].is_monotonic_increasing
    assert set(board["state"]) == {"complete"}
    row = board.iloc[0]
    best = study.best_trial
    assert row["optimizer"] == best.params["optimizer"]
    assert row["scheduler"] == best.params["scheduler"]
    for name in SCHEDULERS[best.params["scheduler"]].params:  # "name=value" for the branch
        assert f"{name.name}=" in row["scheduler_params"]


def test_leaderboard_lists_unfinished_trials_unranked_after_complete_ones():
    study = in_memory()
    add_trial(study, 0.9, state=TrialState.PRUNED)
    add_trial(study, 0.5)
    add_trial(study, 0.3, state=TrialState.PRUNED, reason="diverged")
    add_trial(study, None, state=TrialState.FAIL)
    board = leaderboard(trials_frame(study), 10)
    assert board["number"].tolist() == [1, 2, 0]
    assert board["state"].tolist() == ["complete", "diverged", "pruned"]
    assert board["rank"].tolist()[0] == 1
    assert board["rank"].isna().tolist() == [False, True, True]
    assert "val_accuracy" not in board.columns  # nothing recorded it: not a classifier
    assert leaderboard(trials_frame(study), 1)["number"].tolist() == [1]


def test_leaderboard_top_must_be_positive(real):
    with pytest.raises(ConfigError, match=r"^--top must be >= 1; got 0$"):
        leaderboard(real[1], 0)


# -- verdict ----------------------------------------------------------------------------------
def test_verdict_names_the_true_best_schedule_and_optimizer(real):
    study, frame = real
    best_by: dict[str, dict[str, float]] = {"scheduler": {}, "optimizer": {}}
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            for key, found in best_by.items():
                name = trial.params[key]
                found[name] = min(found.get(name, float("inf")), trial.value)
    text = verdict(frame)
    for key, noun in (("scheduler", "schedule"), ("optimizer", "optimizer")):
        ordered = sorted(best_by[key].items(), key=lambda item: item[1])
        assert ordered[0][1] < ordered[1][1], "the fixture study should have no tie"
        assert f"The best {noun} is {ordered[0][0]} " in text
        assert f"runner-up {ordered[1][0]} " in text
    assert f"The best trial is #{study.best_trial.number}:" in text
    assert text.startswith(f"The study has {len(study.trials)} trials (")


def test_verdict_says_when_the_winner_rests_on_few_trials():
    study = in_memory()
    for i in range(3):
        add_trial(study, 0.10 + i / 100, scheduler="cosine")
    for i in range(60):
        add_trial(study, 0.20 + i / 1000, scheduler="step")
    text = verdict(trials_frame(study))
    assert "The best schedule is cosine (best validation loss 0.1; 3 trials, 3 complete)" in text
    assert "runner-up step (0.2; 60 trials, 60 complete) by 0.1 (50.0% of step's best)" in text
    assert "a clear margin" in text
    assert ("That rests on only 3 complete trials of cosine against 60 of step: run more "
            "trials before trusting it.") in text


def test_verdict_on_a_narrow_lead_a_tie_and_a_lucky_winner():
    study = in_memory()
    add_trial(study, 0.100, scheduler="cosine")
    for value in (0.9, 0.9, 0.9, 0.9, 0.9):
        add_trial(study, value, scheduler="cosine")
    for value in (0.104, 0.2, 0.2, 0.2, 0.2, 0.2):
        add_trial(study, value, scheduler="step")
    text = verdict(trials_frame(study))
    assert "a narrow margin" in text
    assert "On the median complete trial step does better (0.2 against 0.9)" in text

    tied = in_memory()
    add_trial(tied, 0.3, scheduler="step")
    add_trial(tied, 0.3, scheduler="cosine")
    add_trial(tied, 0.5, scheduler="cosine")
    text = verdict(trials_frame(tied))
    assert "step and cosine tie for the best schedule at validation loss 0.3" in text
    assert "on the median complete trial step is the better of them (0.3)" in text


def test_verdict_without_complete_trials_still_counts_them():
    study = in_memory()
    add_trial(study, 0.9, state=TrialState.PRUNED)
    add_trial(study, 0.9, state=TrialState.PRUNED, reason="diverged")
    text = verdict(trials_frame(study))
    assert text.startswith("The study has 2 trials (0 complete, 1 pruned, 1 diverged). No "
                           "trial has completed yet")


def test_verdict_with_a_single_schedule_compares_nothing():
    study = in_memory()
    add_trial(study, 0.3, scheduler="step")
    add_trial(study, 0.4, scheduler="cosine", state=TrialState.PRUNED)
    text = verdict(trials_frame(study))
    assert "Only one schedule completed a trial, step (1 complete trial)" in text
    assert "1 schedule had no complete trial (cosine)." in text


# -- importances ------------------------------------------------------------------------------
def test_param_importances_of_shared_params_sum_to_one_and_repeat(real):
    study, _ = real
    importances = param_importances(study)
    assert importances.sum() == pytest.approx(1.0)
    assert {"lr", "optimizer", "scheduler"} <= set(importances.index)
    assert "momentum" not in importances.index  # not every trial has it
    assert importances.is_monotonic_decreasing
    pd.testing.assert_series_equal(importances, param_importances(study.trials))


def test_param_importances_need_a_few_complete_trials():
    study = in_memory()
    add_trial(study, 0.3)
    add_trial(study, 0.4, lr=0.1)
    with pytest.raises(HPSearchError, match=r"^importances need at least 3 complete trials; "
                                            r"the study has 2$"):
        param_importances(study)


# -- tables -----------------------------------------------------------------------------------
def split_row(line: str) -> list[str]:
    """The cells of a markdown table row (a `\\|` is part of a cell)."""
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.replace("\\|", "|") for cell in re.split(r"(?<!\\) \| ", line[2:-2])]


def assert_valid_markdown_table(text: str, df: pd.DataFrame) -> list[list[str]]:
    """GitHub's table grammar: a header row, a delimiter row with one `---`/`---:` per column,
    then rows with as many cells as the header. Returns the body's cells."""
    header, rule, *rows = text.split("\n")
    assert split_row(header) == [str(c) for c in df.columns]
    assert re.fullmatch(r"\|(?:---:?\|){" + str(len(df.columns)) + "}", rule), rule
    body = [split_row(row) for row in rows]
    assert len(body) == len(df)
    assert all(len(cells) == len(df.columns) for cells in body)
    return body


@pytest.mark.parametrize("table", ["leaderboard", *SUMMARY_BY])
def test_markdown_tables_are_valid_and_carry_the_frames_numbers(real, table):
    frame = real[1]
    df = leaderboard(frame, 10) if table == "leaderboard" else summary(frame, table)
    body = assert_valid_markdown_table(markdown_table(df), df)
    for cells, values in zip(body, df.itertuples(index=False, name=None), strict=True):
        for cell, value in zip(cells, values, strict=True):
            expected = format_cell(value)
            assert cell == expected
            if isinstance(value, float) and expected:
                assert float(cell) == pytest.approx(value, rel=1e-5)


def test_markdown_escapes_pipes_and_aligns_numbers_right():
    df = pd.DataFrame({"name": ["a|b", None], "value": [0.123456789, float("nan")],
                       "flag": pd.array([True, pd.NA], dtype="boolean")})
    text = markdown_table(df)
    assert text.split("\n")[1] == "|---|---:|---|"
    assert assert_valid_markdown_table(text, df) == [["a|b", "0.123457", "True"], ["", "", ""]]


def test_text_table_aligns_columns():
    df = pd.DataFrame({"scheduler": ["cosine", "step"], "best_value": [0.5, 12.25],
                       "best_trial": pd.array([3, pd.NA], dtype="Int64")})
    assert text_table(df).split("\n") == [
        "scheduler  best_value  best_trial",
        "cosine            0.5           3",
        "step            12.25           -",
    ]
