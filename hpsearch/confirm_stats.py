"""The statistics of a confirmation, as pure pandas (and scipy): no storage, no training.

A confirmation re-trains each chosen configuration over the same seeds (see `confirm.py`);
every run is a trial of the confirmation study. From those trials:

- `runs_frame`: one row per run: its configuration, seed, and the final validation and
  held-out test loss and accuracy (missing where the run diverged).
- `configuration_table`: per configuration, the mean and 95% t-interval of each metric over
  its seeds, and the optimism of its search: confirmed mean minus the loss the search saw.
  Ranked by mean validation loss; a configuration that diverged on any seed ranks after every
  one that never did (it is not a safe choice, whatever its other runs scored).
- `compare`: the best configuration against each runner-up, and the best schedule family (the
  best configuration of each scheduler) against each other family; each a two-sided Wilcoxon
  signed-rank test on the validation losses paired by seed, Holm-corrected within its question.
- `confirmation_verdict`: a paragraph: "winner", "tied with X" (identical on every seed),
  "inconclusive against X" (not significant), or "inconclusive — more seeds needed" (with n
  seeds whose results differ, the smallest exact two-sided p is 2/2^n: 5 seeds can never
  reach p < 0.05, and each extra comparison asks for more).

Decisions are made on the validation loss, as the search's were: the test split stays an
honest estimate of how the chosen configuration does on unseen data, never a selection tool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hpsearch.paired_stats import (
    ALPHA,
    BETTER,
    INCONCLUSIVE,
    TIED,
    WORSE,
    holm,
    mean_interval,
    outcome,
    paired_differences,
    seeds_needed,
    smallest_p,
    wilcoxon_p,
)
from hpsearch.records import (
    ATTR_CONFIG_ID,
    ATTR_END_REASON,
    ATTR_EPOCHS_RUN,
    ATTR_SEARCH_VALUE,
    ATTR_SEED,
    ATTR_SEED_INDEX,
    ATTR_SOURCE_TRIAL,
    ATTR_TEST_ACCURACY,
    ATTR_TEST_LOSS,
    ATTR_VAL_ACCURACY,
    DIVERGED,
)
from hpsearch.report import complete_trials, counted, format_cell, format_interval, listed

METRICS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
# What each metric can be at all (cross-entropy and MSE are never negative): a t-interval
# knows nothing of that, so it is clipped to them.
METRIC_RANGES = {"val_loss": (0.0, math.inf), "val_accuracy": (0.0, 1.0),
                 "test_loss": (0.0, math.inf), "test_accuracy": (0.0, 1.0)}
QUESTIONS = ("configuration", "schedule")

# Parameters with their own column in the tables; the others are listed as `name=value`.
_OWN_COLUMNS = ("optimizer", "lr", "scheduler")

RUN_COLUMNS = {
    "number": "int64", "config_id": "str", "source_trial": "int64", "optimizer": "str",
    "scheduler": "str", "lr": "float64", "other_params": "str", "search_value": "float64",
    "seed_index": "int64", "seed": "int64", "diverged": "bool", **dict.fromkeys(METRICS,
                                                                                "float64"),
    "epochs_run": "int64", "duration_s": "float64",
}
COMPARISON_COLUMNS = {
    "question": "str", "best": "str", "other": "str", "best_config": "str",
    "other_config": "str", "seeds": "int64", "wins": "int64", "losses": "int64",
    "mean_difference": "float64", "difference_low": "float64", "difference_high": "float64",
    "p_value": "float64", "p_holm": "float64", "outcome": "str",
}


# -- runs -------------------------------------------------------------------------------------
def runs_frame(trials: Iterable[FrozenTrial]) -> pd.DataFrame:
    """One row per finished run (complete, or diverged), in trial order. Where two commands
    ran the same (configuration, seed) at once, the first stored run counts."""
    rows = [_run_row(t) for t in sorted(trials, key=lambda t: t.number)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and ATTR_CONFIG_ID in t.user_attrs]
    frame = pd.DataFrame.from_records(rows, columns=list(RUN_COLUMNS)).astype(RUN_COLUMNS)
    return frame.drop_duplicates(["config_id", "seed"], ignore_index=True)


def _run_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    diverged = trial.state != TrialState.COMPLETE or attrs.get(ATTR_END_REASON) == DIVERGED
    metrics = {
        "val_loss": trial.value, "val_accuracy": attrs.get(ATTR_VAL_ACCURACY),
        "test_loss": attrs.get(ATTR_TEST_LOSS), "test_accuracy": attrs.get(ATTR_TEST_ACCURACY),
    }
    duration = trial.duration.total_seconds() if trial.duration is not None else math.nan
    search_value = attrs.get(ATTR_SEARCH_VALUE)
    return {
        "number": trial.number, "config_id": attrs[ATTR_CONFIG_ID],
        "source_trial": attrs[ATTR_SOURCE_TRIAL],
        "optimizer": trial.params.get("optimizer"), "scheduler": trial.params.get("scheduler"),
        "lr": trial.params.get("lr", math.nan),
        "other_params": ", ".join(f"{name}={format_cell(value)}" for name, value
                                  in trial.params.items() if name not in _OWN_COLUMNS),
        "search_value": math.nan if search_value is None else search_value,
        "seed_index": attrs[ATTR_SEED_INDEX], "seed": attrs[ATTR_SEED],
        "diverged": diverged,
        # A diverged run has no final model worth measuring: its metrics are missing.
        **{name: math.nan if diverged or value is None else value
           for name, value in metrics.items()},
        "epochs_run": attrs.get(ATTR_EPOCHS_RUN, 0), "duration_s": round(duration, 3),
    }


def configuration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, best first: `rank`, `config` (the search trial it came
    from, `#N`), its choices, `seeds` run, `diverged` runs, `<metric>_mean/_low/_high` for
    each metric, the search's value and `optimism` (confirmed mean validation loss minus the
    search's value: positive where the search looked better than the configuration is)."""
    rows = []
    for config_id, group in runs.groupby("config_id", sort=False):
        # If one configuration came from several trials (equal parameters), name it after the
        # one the search ranked best.
        source = group.sort_values(["search_value", "source_trial"], na_position="last").iloc[0]
        row: dict[str, Any] = {
            "config": f"#{source['source_trial']}", "config_id": config_id,
            "source_trial": source["source_trial"], "optimizer": source["optimizer"],
            "scheduler": source["scheduler"], "lr": source["lr"], "seeds": len(group),
            "diverged": int(group["diverged"].sum()),
        }
        for metric in METRICS:
            mean, low, high = mean_interval(group[metric], within=METRIC_RANGES[metric])
            row |= {f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high}
        row["search_value"] = source["search_value"]
        row["optimism"] = row["val_loss_mean"] - source["search_value"]
        row["other_params"] = source["other_params"]
        rows.append(row)
    columns = ["rank", "config", "config_id", "source_trial", "optimizer", "scheduler", "lr",
               "seeds", "diverged", *(f"{m}_{s}" for m in METRICS for s in ("mean", "low",
                                                                            "high")),
               "search_value", "optimism", "other_params"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["_unsafe"] = table["diverged"] > 0
    table = table.sort_values(["_unsafe", "val_loss_mean", "source_trial"], kind="stable",
                              na_position="last", ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table[columns]


def compare(runs: pd.DataFrame, table: pd.DataFrame, runner_ups: int,
            alpha: float = ALPHA) -> pd.DataFrame:
    """Paired comparisons of the best configuration (rank 1 of `table`) against the next
    `runner_ups`, and of its schedule family against every other family, each family being
    its scheduler's best configuration. Outcome per comparison: `better` (Holm-adjusted
    p < alpha, best lower on average), `worse` (significant the other way), `tied` (identical
    on every seed) or `inconclusive` (not significant: too few seeds with differing results for
    any p to reach alpha after the correction, or differences the seeds cannot tell from
    chance)."""
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COMPARISON_COLUMNS.items()})
    losses = runs.assign(loss=runs["val_loss"].where(~runs["diverged"], math.inf)).pivot(
        index="seed", columns="config_id", values="loss")
    best = table.iloc[0]
    pairs = [("configuration", other) for _, other in table.iloc[1:1 + runner_ups].iterrows()]
    families = table.drop_duplicates("scheduler")
    pairs += [("schedule", other) for _, other in families.iloc[1:].iterrows()]
    rows = [_comparison(question, best, other, losses) for question, other in pairs]
    frame = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    for question in QUESTIONS:
        asked = frame["question"] == question
        frame.loc[asked, "p_holm"] = holm(frame.loc[asked, "p_value"].tolist())
        needed = seeds_needed(int(asked.sum()), alpha)
        frame.loc[asked, "outcome"] = [_outcome(row, needed, alpha)
                                       for _, row in frame[asked].iterrows()]
    return frame.astype(COMPARISON_COLUMNS)


def _comparison(question: str, best: pd.Series, other: pd.Series,
                losses: pd.DataFrame) -> dict[str, Any]:
    d = paired_differences(losses[best["config_id"]].dropna(),
                           losses[other["config_id"]].dropna())
    mean, low, high = mean_interval(d)
    return {
        "question": question, "best": _name(question, best), "other": _name(question, other),
        "best_config": best["config"], "other_config": other["config"], "seeds": len(d),
        "wins": int((d < 0).sum()), "losses": int((d > 0).sum()),
        "mean_difference": mean, "difference_low": low, "difference_high": high,
        "p_value": wilcoxon_p(d), "p_holm": math.nan, "outcome": "",
    }


def _name(question: str, row: pd.Series) -> str:
    if question == "schedule":
        return f"{row['scheduler']} ({row['config']})"
    return f"{row['config']} ({row['optimizer']}, {row['scheduler']})"


def _outcome(row: pd.Series, needed: int, alpha: float) -> str:
    return outcome(row["wins"], row["losses"], row["seeds"], row["p_holm"],
                   row["mean_difference"], needed, alpha)


# -- the verdict ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    """Everything a confirmation report shows, from the runs stored so far."""

    runs: pd.DataFrame
    table: pd.DataFrame
    comparisons: pd.DataFrame
    verdict: str
    alpha: float = ALPHA


def analyze(runs: pd.DataFrame, runner_ups: int, alpha: float = ALPHA) -> Analysis:
    """The table, the comparisons and the verdict of a confirmation's runs."""
    table = configuration_table(runs)
    comparisons = compare(runs, table, runner_ups, alpha)
    return Analysis(runs, table, comparisons, confirmation_verdict(runs, table, comparisons,
                                                                   alpha), alpha)


def confirmation_verdict(runs: pd.DataFrame, table: pd.DataFrame, comparisons: pd.DataFrame,
                         alpha: float = ALPHA) -> str:
    """A paragraph in plain words: what was run, the best configuration with its intervals
    on validation and test, how optimistic its search value was, and whether it (and its
    schedule) beats the runners-up."""
    if table.empty:
        return "No confirmation run has finished yet."
    seeds = sorted(set(table["seeds"]))
    each = f"{seeds[0]} seeds each" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]} seeds"
    diverged = int(runs["diverged"].sum())
    sentences = [f"Confirmed {counted(len(table), 'configuration')} over {each} "
                 f"({counted(len(runs), 'run')}, {diverged} diverged), re-trained from scratch "
                 "without pruning; figures are means with 95% intervals."]
    best = table.iloc[0]
    sentences.append(f"The best is {best['config']} ({best['optimizer']} with "
                     f"{best['scheduler']}, lr {best['lr']:.3g}): validation "
                     f"{_metrics(best, 'val')}; on the held-out test split "
                     f"{_metrics(best, 'test')}.")
    if best["diverged"]:
        sentences.append(f"Every configuration diverged on some seed; {best['config']} did on "
                         f"{best['diverged']} of {best['seeds']}.")
    sentences.append(_optimism(best))
    sentences.append(_test_rank(table))
    for question in QUESTIONS:
        sentences.append(_question_verdict(comparisons[comparisons["question"] == question],
                                           question, best, alpha))
    return " ".join(s for s in sentences if s)


def _metrics(row: pd.Series, split: str) -> str:
    said = f"loss {_interval(row, f'{split}_loss')}"
    if not pd.isna(row[f"{split}_accuracy_mean"]):
        said += f", accuracy {_interval(row, f'{split}_accuracy')}"
    return said


def _interval(row: pd.Series, metric: str) -> str:
    return format_interval(*(row[f"{metric}_{s}"] for s in ("mean", "low", "high")))


def _optimism(best: pd.Series) -> str:
    searched = best["search_value"]
    if pd.isna(searched):
        return f"{best['config']} did not complete in the search, so there is no search " \
               "value to compare with."
    where = ("below the interval: the search's single run was a lucky draw"
             if searched < best["val_loss_low"] else
             "above the interval: the search's single run was an unlucky draw"
             if searched > best["val_loss_high"] else "within the interval")
    return (f"The search saw {searched:.4g} for it; the confirmed mean is "
            f"{best['optimism']:+.3g} from that, {where}.")


def _test_rank(table: pd.DataFrame) -> str:
    tested = table.dropna(subset=["test_loss_mean"])
    if len(tested) < 2:
        return ""
    best = table.iloc[0]
    lowest = tested.sort_values(["test_loss_mean", "rank"], kind="stable").iloc[0]
    if lowest["config"] == best["config"]:
        return "It also has the lowest mean test loss of the confirmed configurations."
    return (f"On the test split {lowest['config']} has the lower mean loss "
            f"({lowest['test_loss_mean']:.4g} against {best['test_loss_mean']:.4g}).")


def _question_verdict(rows: pd.DataFrame, question: str, best: pd.Series,
                      alpha: float) -> str:
    subject = (f"Best configuration {best['config']}" if question == "configuration"
               else f"Best schedule {best['scheduler']} (its best configuration "
                    f"{best['config']})")
    if rows.empty:
        what = "configuration" if question == "configuration" else "schedule"
        return f"{subject}: no other {what} was confirmed, so there is nothing to compare."
    said = {outcome: rows[rows["outcome"] == outcome]
            for outcome in (BETTER, TIED, WORSE, INCONCLUSIVE)}
    m, needed = len(rows), seeds_needed(len(rows), alpha)
    undecided = said[INCONCLUSIVE]
    too_few = undecided[undecided["wins"] + undecided["losses"] < needed]
    if not too_few.empty:
        fewer = needed - 1
        times = f", times {m} comparisons, {m * smallest_p(fewer):.3g}" if m > 1 else ""
        label = (f"inconclusive — more seeds needed: no difference can be significant at "
                 f"{alpha:.0%} until at least {needed} seeds give differing results (with "
                 f"{fewer} the smallest exact two-sided p is 2/2^{fewer} = "
                 f"{smallest_p(fewer):.3g}{times}); run at least {needed} seeds")
    elif not said[WORSE].empty:
        label = f"not the winner — {listed(said[WORSE]['other'])} did better on the paired seeds"
    elif not undecided.empty:
        label = (f"inconclusive against {listed(undecided['other'])} — the paired seeds "
                 f"cannot tell them apart at {alpha:.0%}; more seeds may")
    elif not said[TIED].empty:
        label = f"tied with {listed(said[TIED]['other'])}"
    else:
        label = "winner"
    details = " ".join(
        f"{_HEADINGS[outcome]}: "
        + "; ".join(f"{row['other']}, {_evidence(row)}" for _, row in frame.iterrows()) + "."
        for outcome, frame in said.items() if not frame.empty)
    return (f"{subject}: {label}. Paired by seed (Wilcoxon signed-rank on validation loss, "
            f"Holm-corrected) — {details}")


_HEADINGS = {BETTER: "It beats", TIED: "Tied with", WORSE: "It loses to",
             INCONCLUSIVE: "Inconclusive against"}


def _evidence(row: pd.Series) -> str:
    if row["seeds"] > 0 and row["wins"] + row["losses"] == 0:
        return f"identical on all {row['seeds']} seeds"
    return (f"lower on {row['wins']} of {row['seeds']} seeds, mean difference "
            f"{row['mean_difference']:+.3g}, p = {row['p_holm']:.3g}")



def search_and_confirmation(analysis: Analysis, frame: pd.DataFrame) -> str:
    """Where the search (its `trials_frame`) and the confirmation agree on the winner and its
    schedule, and where they disagree, in plain words ("" before either has one)."""
    complete = complete_trials(frame)
    table = analysis.table
    if complete.empty or table.empty:
        return ""
    searched = complete.iloc[0]
    number, schedule = int(searched["number"]), searched["scheduler"]
    confirmed = table.iloc[0]
    if int(confirmed["source_trial"]) == number:
        said = [f"The search's best trial #{number} is the confirmation's best too."]
    else:
        row = table[table["source_trial"] == number]
        where = (f"ranks {int(row.iloc[0]['rank'])} of {len(table)} in the confirmation "
                 f"(confirmed mean validation loss {row.iloc[0]['val_loss_mean']:.4g})"
                 if not row.empty else "was not confirmed")
        compared = analysis.comparisons[
            (analysis.comparisons["question"] == "configuration")
            & (analysis.comparisons["other_config"] == f"#{number}")]
        found = (f"; the confirmation finds the two {compared.iloc[0]['outcome']}"
                 if not compared.empty and compared.iloc[0]["outcome"] != BETTER else "")
        said = [f"The search and the confirmation disagree on the winner: the search's best "
                f"trial #{number} {where}, the confirmation's best is {confirmed['config']} "
                f"({confirmed['val_loss_mean']:.4g}){found}."]
    if confirmed["scheduler"] != schedule:
        said.append(f"The search's best schedule, {schedule}, is not the confirmation's "
                    f"({confirmed['scheduler']}).")
    return " ".join(said)
