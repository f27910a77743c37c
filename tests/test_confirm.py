"""`hpsearch confirm`: real re-training of hand-placed configurations of a real (cut-down)
wine study on real SQLite files, the statistics against known values, and the command's
output and errors through the real CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.confirm import (
    confirm_seed,
    confirm_study_name,
    run_confirmation,
    select_configurations,
)
from hpsearch.confirm_stats import (
    analyze,
    holm,
    mean_interval,
    paired_differences,
    runs_frame,
    seeds_needed,
    smallest_p,
    wilcoxon_p,
)
from hpsearch.export import build_report, renderer
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.records import ATTR_CONFIRM_OF, ATTR_CONFIRM_STUDY
from hpsearch.schedulers import SCHEDULERS
from hpsearch.studies import open_study, study_names
from hpsearch.training import evaluate, loss_function, train_configuration

DISTRIBUTIONS = {
    "optimizer": CategoricalDistribution(list(OPTIMIZERS)),
    "lr": FloatDistribution(1e-6, 1.0, log=True),
    "use_weight_decay": CategoricalDistribution([False, True]),
    "scheduler": CategoricalDistribution(list(SCHEDULERS)),
    "step_size_frac": FloatDistribution(0.0, 1.0),
    "step_gamma": FloatDistribution(1e-6, 1.0),
}
GOOD = {"optimizer": "adam", "lr": 0.01, "use_weight_decay": False, "scheduler": "none"}
# StepLR stepping once, after the last epoch: the same training as GOOD, bit for bit.
SAME = {**GOOD, "scheduler": "step", "step_size_frac": 1.0, "step_gamma": 0.5}
TINY = {**GOOD, "lr": 1e-5}


def add(study: optuna.Study, params: dict, value: float | None,
        state: TrialState = TrialState.COMPLETE) -> None:
    study.add_trial(create_trial(state=state, value=value, params=params,
                                 distributions={k: DISTRIBUTIONS[k] for k in params}))


@pytest.fixture
def parent(write_study, tmp_path: Path) -> str:
    """URL of a hpsearch study 'small' (12 epochs of wine) holding three complete trials
    placed by hand: #0 GOOD, #1 SAME (trains identically), #2 TINY (lr 1e-5)."""
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'parent.db'}"
    study = open_study(config, url, config.load_data().fingerprint)
    add(study, GOOD, 0.30)
    add(study, SAME, 0.31)
    add(study, TINY, 1.05)
    return url


def stored_runs(url: str) -> list[optuna.trial.FrozenTrial]:
    """The confirmation's finished runs (an interrupted one leaves the rest queued)."""
    return optuna.load_study(study_name="small:confirm", storage=url).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# -- the tests ------------------------------------------------------------------------
def test_identical_configurations_come_out_tied(parent):
    # One run at a time: bit-identical runs of identical configurations (a cohort's stacked
    # products round a member by where it sits in the stack).
    outcome = run_confirmation("small", parent, seeds=6, trials=[0, 1], engine="reference")
    runs = outcome.analysis.runs
    by_seed = runs.pivot(index="seed", columns="source_trial", values="val_loss")
    assert (by_seed[0] == by_seed[1]).all()  # identical run for run...
    assert by_seed[0].nunique() == 6  # ...while every seed trains differently
    comparisons = outcome.analysis.comparisons
    assert comparisons["question"].tolist() == ["configuration", "schedule"]
    assert comparisons["outcome"].tolist() == ["tied", "tied"]
    assert comparisons[["wins", "losses"]].to_numpy().sum() == 0
    assert comparisons["p_value"].tolist() == [1.0, 1.0]
    verdict = outcome.analysis.verdict
    assert "Best configuration #0: tied with #1 (adam, step)." in verdict
    assert "identical on all 6 seeds" in verdict


def test_a_tiny_learning_rate_loses_with_significance(parent):
    five = run_confirmation("small", parent, seeds=5, trials=[0, 2])
    row = five.analysis.comparisons.iloc[0]
    # 5 seeds, all won: the smallest p there is, and still not below 5%.
    assert (row["wins"], row["p_value"], row["outcome"]) == (5, 0.0625, "inconclusive")
    assert "inconclusive — more seeds needed" in five.analysis.verdict
    assert "run at least 6 seeds" in five.analysis.verdict

    six = run_confirmation("small", parent, seeds=6, trials=[0, 2])
    assert (six.planned, six.ran) == (2, 2)  # only the sixth seed of each
    table = six.analysis.table
    assert table["config"].tolist() == ["#0", "#2"]
    assert table.loc[1, "val_loss_low"] > table.loc[0, "val_loss_high"]  # far apart
    assert table.loc[1, "test_loss_mean"] > table.loc[0, "test_loss_mean"]
    row = six.analysis.comparisons.iloc[0]
    assert row["question"] == "configuration"
    assert (row["best"], row["other"]) == ("#0 (adam, none)", "#2 (adam, none)")
    assert (row["wins"], row["losses"], row["p_holm"], row["outcome"]) == (
        6, 0, pytest.approx(0.03125), "better")
    assert row["difference_high"] < 0
    assert "Best configuration #0: winner." in six.analysis.verdict
    # One schedule among them: nothing to compare there.
    assert "no other schedule was confirmed" in six.analysis.verdict


def test_intervals_shrink_as_seeds_grow(parent):
    few = run_confirmation("small", parent, seeds=3, trials=[0]).analysis.table.iloc[0]
    many = run_confirmation("small", parent, seeds=12, trials=[0]).analysis.table.iloc[0]
    assert (few["seeds"], many["seeds"]) == (3, 12)
    for metric in ("val_loss", "test_loss"):
        width = {name: row[f"{metric}_high"] - row[f"{metric}_low"]
                 for name, row in (("few", few), ("many", many))}
        assert 0 < width["many"] < width["few"] / 2, metric
        assert many[f"{metric}_low"] < many[f"{metric}_mean"] < many[f"{metric}_high"]


@pytest.mark.parametrize("engine", ["reference", "cohort"])
def test_test_metrics_come_from_the_held_out_split(parent, write_study, engine):
    config = load_study_config(str(write_study()))
    data = config.load_data()
    rows = {name: {tuple(np.round(r, 6)) for r in getattr(data, name).features.tolist()}
            for name in ("train", "valid", "test")}
    assert len(data.test) > 0
    assert rows["test"].isdisjoint(rows["train"]) and rows["test"].isdisjoint(rows["valid"])

    assert run_confirmation("small", parent, seeds=2, trials=[0], engine=engine).engine == engine
    stored = {t.user_attrs["seed_index"]: t for t in stored_runs(parent)}
    seed = confirm_seed(config.seed, 0)
    assert stored[0].user_attrs["seed"] == seed
    again = train_configuration(config, data, config.space.complete(GOOD), seed)
    classify = data.task == "classification"
    test_loss, test_accuracy = evaluate(again.model, data.test, loss_function(data.task),
                                        classify)
    valid_loss, _ = evaluate(again.model, data.valid, loss_function(data.task), classify)
    # The cohort engine trains in float32 as the reference does, its rounding of its own.
    same = pytest.approx if engine == "cohort" else (lambda value: value)
    assert stored[0].user_attrs["test_loss"] == same(test_loss.item())
    assert stored[0].user_attrs["test_accuracy"] == test_accuracy.item()
    assert stored[0].value == same(valid_loss.item())
    assert valid_loss.item() == again.result.last.val_loss
    assert stored[0].value != stored[0].user_attrs["test_loss"]


@pytest.mark.parametrize("engine", ["reference", "cohort"])
def test_resume_after_interruption_does_not_redo_finished_seeds(parent, engine):
    def interrupt_after_three(ran: int) -> None:
        if ran == 3:
            raise KeyboardInterrupt

    # A cohort of three: the first three runs end together, in the order they were queued.
    with pytest.raises(KeyboardInterrupt):
        run_confirmation("small", parent, seeds=4, trials=[0, 2], engine=engine,
                         cohort_size=3, on_progress=interrupt_after_three)
    before = stored_runs(parent)
    assert len(before) == 3
    # Planned seed by seed: both configurations' seed 0, then the first one's seed 1.
    assert [(t.user_attrs["source_trial"], t.user_attrs["seed_index"]) for t in before] == [
        (0, 0), (2, 0), (0, 1)]

    outcome = run_confirmation("small", parent, seeds=4, trials=[0, 2], engine=engine)
    assert (outcome.planned, outcome.ran) == (5, 5)
    after = stored_runs(parent)
    assert len(after) == 8
    for old, new in zip(before, after, strict=False):  # untouched, not re-run
        assert (new.number, new.value, new.datetime_start) == (
            old.number, old.value, old.datetime_start)
    pairs = {(t.user_attrs["config_id"], t.user_attrs["seed"]) for t in after}
    assert len(pairs) == 8
    assert run_confirmation("small", parent, seeds=4, trials=[0, 2]).planned == 0


# -- running ----------------------------------------------------------------------------------
def test_workers_give_the_same_runs_as_one_process(parent, tmp_path):
    one = run_confirmation("small", parent, seeds=2, trials=[0, 2]).analysis.runs
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="small", from_storage=parent, to_storage=copy)
    two = run_confirmation("small", copy, seeds=2, trials=[0, 2], workers=2)
    assert (two.workers, two.ran) == (2, 4)
    columns = ["config_id", "seed", "val_loss", "val_accuracy", "test_loss", "test_accuracy"]
    key = ["config_id", "seed"]
    pd.testing.assert_frame_equal(
        one[columns].sort_values(key, ignore_index=True),
        two.analysis.runs[columns].sort_values(key, ignore_index=True))


def test_the_confirmation_study_is_linked_and_shows_its_runs(parent, write_study):
    run_confirmation("small", parent, seeds=2, trials=[0])
    confirm = optuna.load_study(study_name="small:confirm", storage=parent)
    assert confirm.user_attrs[ATTR_CONFIRM_OF] == "small"
    small = optuna.load_study(study_name="small", storage=parent)
    assert small.user_attrs[ATTR_CONFIRM_STUDY] == "small:confirm"
    run_ = confirm.trials[0]
    config = load_study_config(str(write_study()))
    assert run_.params == config.space.complete(GOOD)  # the configuration as trained
    assert run_.state == TrialState.COMPLETE
    assert sorted(run_.intermediate_values) == list(range(1, 13))  # never pruned: 12 epochs
    assert run_.value == run_.intermediate_values[12]
    assert run_.user_attrs["source_trial"] == 0
    assert run_.user_attrs["search_value"] == 0.30
    assert len(run_.user_attrs["lr_curve"]) == 12


def test_default_selection_is_the_top_k_and_each_schedulers_top_k():
    trials = []
    values = {("none", 0.01): 0.1, ("none", 0.02): 0.2, ("none", 0.03): 0.3,
              ("step", 0.01): 0.5, ("step", 0.02): 0.6, ("cosine", 0.01): 0.9}
    for number, ((scheduler, lr), value) in enumerate(values.items()):
        params = {**GOOD, "scheduler": scheduler, "lr": lr}
        if scheduler == "step":
            params |= {"step_size_frac": 0.5, "step_gamma": 0.5}
        trial = create_trial(state=TrialState.COMPLETE, value=value, params=params,
                             distributions={k: DISTRIBUTIONS.get(k, FloatDistribution(0, 1))
                                            for k in params})
        trial.number = number
        trials.append(trial)
    twin = create_trial(state=TrialState.COMPLETE, value=0.25, params=trials[0].params,
                        distributions=trials[0].distributions)
    twin.number = len(trials)
    chosen = select_configurations("s", [*trials, twin], top=2)
    # Top 2 overall (#0, #1), then the best 2 of step and of cosine; #6 repeats #0's params.
    assert [c.source_trial for c in chosen] == [0, 1, 3, 4, 5]
    assert [c.search_value for c in chosen] == [0.1, 0.2, 0.5, 0.6, 0.9]
    assert [c.source_trial for c in select_configurations("s", trials, top=1)] == [0, 3, 5]


# -- statistics -------------------------------------------------------------------------------
def test_mean_interval_is_the_student_t_interval():
    values = [0.2, 0.25, 0.22, 0.31, 0.27]
    mean, low, high = mean_interval(values)
    expected = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert (low, high) == pytest.approx(expected)
    assert mean == pytest.approx(0.25)
    assert mean_interval([0.9, 0.99, 1.0], within=(0, 1))[2] == 1.0
    assert math.isnan(mean_interval([0.3])[1])
    assert mean_interval([0.3, 0.3]) == (0.3, 0.3, 0.3)


def test_holm_and_the_seeds_needed():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert smallest_p(5) == 0.0625 and smallest_p(6) == 0.03125
    assert [seeds_needed(m) for m in (1, 2, 3, 8)] == [6, 7, 7, 9]


def test_diverged_runs_lose_every_pairing():
    best = pd.Series([0.1, 0.2, math.inf, 0.3], index=[1, 2, 3, 4])
    other = pd.Series([0.4, math.inf, math.inf, 0.5, 0.6], index=[1, 2, 3, 4, 5])
    assert paired_differences(best, other).tolist() == [
        pytest.approx(-0.3), -math.inf, 0.0, pytest.approx(-0.2)]
    assert wilcoxon_p(np.array([-1.0, -math.inf, -2.0, -3.0, -4.0, -5.0])) == 0.03125
    assert wilcoxon_p(np.zeros(4)) == 1.0


def test_a_configuration_that_diverged_ranks_last_whatever_its_mean():
    rows = []
    for seed in range(6):
        rows.append({"config_id": "steady", "seed": seed, "val_loss": 0.5 + seed / 100,
                     "diverged": False})
        rows.append({"config_id": "wild", "seed": seed, "diverged": seed == 0,
                     "val_loss": math.nan if seed == 0 else 0.1})
    runs = pd.DataFrame(rows).assign(
        source_trial=lambda f: (f["config_id"] == "wild").astype(int), optimizer="adam",
        scheduler="none", lr=0.01, other_params="", search_value=0.3, val_accuracy=math.nan,
        test_loss=0.4, test_accuracy=math.nan)
    analysis = analyze(runs, runner_ups=1)
    assert analysis.table["config_id"].tolist() == ["steady", "wild"]
    assert analysis.table["diverged"].tolist() == [0, 1]
    assert analysis.comparisons.iloc[0]["wins"] == 1  # the diverged seed; 5 losses
    assert analysis.comparisons.iloc[0]["outcome"] == "inconclusive"  # not significant


def test_a_difference_the_seeds_cannot_tell_from_chance_is_inconclusive_never_tied():
    """Enough seeds for significance, differences both ways: the table and the verdict both
    say inconclusive (a tie is only identical results)."""
    rows = []
    for seed in range(8):
        rows.append({"config_id": "a", "seed": seed, "val_loss": 0.5, "diverged": False})
        rows.append({"config_id": "b", "seed": seed, "diverged": False,
                     "val_loss": 0.5 + (0.01 if seed % 2 else -0.0099)})
    runs = pd.DataFrame(rows).assign(
        source_trial=lambda f: (f["config_id"] == "b").astype(int), optimizer="adam",
        scheduler="none", lr=0.01, other_params="", search_value=0.3, val_accuracy=math.nan,
        test_loss=0.4, test_accuracy=math.nan)
    analysis = analyze(runs, runner_ups=1)
    assert analysis.comparisons["outcome"].tolist() == ["inconclusive"]
    assert "Best configuration #0: inconclusive against #1 (adam, none) — the paired seeds " \
           "cannot tell them apart at 5%; more seeds may." in analysis.verdict
    assert "tied" not in analysis.verdict.lower()


def test_runs_frame_reads_only_confirmation_runs(parent):
    assert runs_frame(optuna.load_study(study_name="small", storage=parent).trials).empty


# -- the command ------------------------------------------------------------------------------
def test_confirm_command_prints_tables_and_verdict_and_resumes(parent):
    code, output = run("confirm", "--study", "small", "--trial", "0", "--trial", "2",
                       "--seeds", "6", "--storage", parent, "--quiet")
    assert code == 0, output
    lines = output.splitlines()
    seconds = lines[0].split(" in ")[2].split(" s ")[0]
    assert lines[0] == (f"Confirmed 2 configurations of 'small' over 6 seeds in {parent}: ran "
                        f"12 runs in {seconds} s (cohort engine); 0 runs were stored already.")
    assert lines[2].startswith("Confirmation (study 'small:confirm'): mean [95% interval]")
    table = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    # No run diverged: the text leaves that column of zeros out (the verdict counts them).
    assert lines[table].split()[:8] == ["rank", "config", "optimizer", "scheduler", "lr",
                                        "seeds", "val_loss", "val_accuracy"]
    assert lines[table + 1].split()[:6] == ["1", "#0", "adam", "none", "0.01", "6"]
    assert max(map(len, lines[1:])) <= 120  # the tables and the verdict fit a terminal
    assert "Best configuration #0: winner." in " ".join(lines)

    code, output = run("confirm", "--study", "small", "--trial", "0", "--trial", "2",
                       "--seeds", "6", "--storage", parent, "--quiet")
    assert code == 0, output
    assert output.splitlines()[0].endswith(": nothing to run; 12 runs were stored already.")

    # A confirmation's runs are seeds, not a search: no best value to list.
    code, output = run("studies", "--storage", parent)
    assert code == 0, output
    rows = {line.split()[0]: line.split() for line in output.splitlines()[2:]}
    assert rows["small:confirm"][1:10] == ["12", "12", "0", "0", "0", "0", "0", "-", "-"]
    assert rows["small"][8] != "-"
    assert output.splitlines()[-1].startswith("small:confirm: the confirmation runs of 'small'")


def test_report_and_export_include_the_confirmation(parent, tmp_path):
    run_confirmation("small", parent, seeds=3, trials=[0, 1, 2])
    code, output = run("report", "--study", "small", "--storage", parent)
    assert code == 0, output
    assert "Confirmation (study 'small:confirm')" in output
    assert "\nConfirmation verdict\n" in output
    out = tmp_path / "out"
    code, output = run("export", "--study", "small", "--storage", parent, "--out", str(out))
    assert code == 0, output
    for name in ("confirm.csv", "confirm.md", "confirm_comparisons.csv",
                 "confirm_comparisons.md", "confirm_runs.csv", "confirm.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "confirm.png").read_bytes().startswith(b"\x89PNG")
    table = pd.read_csv(out / "confirm.csv")
    assert table["seeds"].tolist() == [3, 3, 3]
    assert (table["val_loss_low"] <= table["val_loss_mean"]).all()
    assert len(pd.read_csv(out / "confirm_runs.csv")) == 9
    text = (out / "report.md").read_text()
    assert "\n## Confirmation\n" in text and "](confirm.png)" in text


@pytest.mark.parametrize(("args", "error"), [
    (["--study", "nope"], "Error: no study 'nope' in {url}; it has: small"),
    (["--study", "small", "--seeds", "1"],
     "Error: --seeds must be >= 2 (a confidence interval needs at least two runs); got 1"),
    (["--study", "small", "--top", "0"], "Error: --top must be >= 1; got 0"),
    (["--study", "small", "--workers", "0"], "Error: --workers must be >= 1; got 0"),
    (["--study", "small", "--trial", "7"], "Error: study 'small' has trials 0..2; got --trial 7"),
])
def test_bad_input_is_a_one_line_error_that_writes_nothing(parent, args, error):
    code, output = run("confirm", *args, "--storage", parent)
    assert (code, output) == (1, error.format(url=parent) + "\n")
    assert confirm_study_name("small") not in study_names(optuna.storages.RDBStorage(parent))


def test_a_study_without_complete_trials_has_nothing_to_confirm(write_study, tmp_path):
    config = load_study_config(str(write_study()))
    url = f"sqlite:///{tmp_path / 'stalled.db'}"
    study = open_study(config, url, config.load_data().fingerprint)
    add(study, GOOD, 0.9, TrialState.PRUNED)
    add(study, TINY, None, TrialState.FAIL)
    code, output = run("confirm", "--study", "small", "--storage", url)
    assert (code, output) == (1, "Error: study 'small' has no complete trial yet (2 trials: 1 "
                                 "pruned, 0 diverged, 1 failed, 0 running); nothing to "
                                 "confirm\n")
    code, output = run("confirm", "--study", "small", "--trial", "1", "--storage", url)
    assert (code, output) == (1, "Error: trial 1 of 'small' is failed: only complete or pruned "
                                 "trials can be confirmed\n")


def test_the_report_leads_with_the_confirmed_verdict_and_where_search_and_it_disagree(parent):
    study = optuna.load_study(study_name="small", storage=parent)
    add(study, TINY, 0.01)  # #3: the search's best by a lucky value, confirmed far worse
    run_confirmation("small", parent, seeds=6, trials=[0, 3], engine="reference")
    text = renderer("table")(build_report("small", parent, 3))
    lines = text.splitlines()
    start = lines.index("Confirmed verdict")
    assert lines[start - 1] == "" and lines[0].startswith("Study 'small' in ")  # right after
    lead = " ".join(lines[start + 1:lines.index("Leaderboard (top 3, by validation loss)")])
    assert "The search and the confirmation disagree on the winner: the search's best trial #3 "\
           "ranks 2 of 2 in the confirmation" in lead
    assert "the confirmation's best is #0" in lead
    markdown = renderer("markdown")(build_report("small", parent, 3))
    assert markdown.index("## Confirmed verdict") < markdown.index("## Verdict")
