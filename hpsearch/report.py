"""Reports of a study as pure pandas: a tidy trials frame, a leaderboard, which scheduler /
optimizer / pair wins, a verdict in plain words, and tables as text or GitHub markdown.

No I/O and no printing: `export.py` and the CLI write and print what these return. Functions
that read a study accept the study itself or the trials already read from it
(`study.get_trials(deepcopy=False)`), so that one read of the storage serves a whole report.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import ConfigError, HPSearchError
from hpsearch.optimizers import MOMENTUM, OPTIMIZERS
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
    wilcoxon_p,
)
from hpsearch.records import (
    ATTR_END_DETAIL,
    ATTR_END_REASON,
    ATTR_EPOCHS_RUN,
    ATTR_LR_CURVE,
    ATTR_RUN_VAL_LOSS,
    ATTR_SEED,
    ATTR_TRAIN_LOSS,
    ATTR_VAL_ACCURACY,
    ATTR_VAL_RMSE,
    DIVERGED,
)
from hpsearch.schedulers import SCHEDULERS, WARMUP

StudyOrTrials = optuna.Study | Sequence[FrozenTrial]

COMPLETE, PRUNED, FAILED, RUNNING = "complete", "pruned", "failed", "running"
STATES = (COMPLETE, PRUNED, DIVERGED, FAILED, RUNNING)

# The columns every trials frame has, in this order; the other parameters follow them.
CORE_COLUMNS = (
    "number", "state", "value", "val_accuracy", "train_loss", "epochs_run", "duration_s",
    "optimizer", "lr", "weight_decay", "momentum", "scheduler",
)
TRAILING_COLUMNS = ("seed", "datetime_start", "end_detail")
# The frame's attrs key of each trial's runs (`[evaluation]`): trial number -> each run's final
# validation loss, in the order every trial of the study shares. An attr, not a column: a
# list per cell does not belong in trials.csv.
RUNS = "run_val_loss"


class RunLosses(dict):
    """The value of a frame's `RUNS` attr. pandas deep-copies a frame's attrs into every frame
    derived from it (each filter, sort and groupby of a report); these losses are only read,
    so every derived frame shares the one mapping instead of copying it each time."""

    def __deepcopy__(self, memo: dict) -> RunLosses:
        return self


SUMMARY_BY = ("scheduler", "optimizer", "pair")
_GROUP_KEYS = {"scheduler": ["scheduler"], "optimizer": ["optimizer"],
               "pair": ["optimizer", "scheduler"]}
# The best trial's other choice and its lr, next to each group's best value.
_BEST_DETAILS = {"scheduler": ["optimizer", "lr"], "optimizer": ["scheduler", "lr"],
                 "pair": ["lr"]}

# Below this many complete trials a group's best value is one draw, not a trend.
FEW_TRIALS = 5
# Relative leads (of the runner-up's best loss) below these are a tie / narrow.
NEGLIGIBLE_LEAD = 0.01
NARROW_LEAD = 0.10
# fANOVA's forest needs a few points to say anything.
MIN_TRIALS_FOR_IMPORTANCE = 3
# A lighter forest than Optuna's default (64 trees of depth 64), whose cost grows with the
# trials: much quicker on a long study, with importances that barely differ.
FANOVA_TREES, FANOVA_DEPTH = 32, 8


# -- the trials frame -------------------------------------------------------------------------
def study_trials(source: StudyOrTrials) -> list[FrozenTrial]:
    """The trials of a study (one read of its storage), or the trials given."""
    if isinstance(source, optuna.Study):
        return source.get_trials(deepcopy=False)
    return list(source)


def trial_state(trial: FrozenTrial) -> str:
    """complete / pruned / diverged / failed / running (waiting trials count as running)."""
    if trial.state == TrialState.COMPLETE:
        return COMPLETE
    if trial.state == TrialState.PRUNED:
        return DIVERGED if trial.user_attrs.get(ATTR_END_REASON) == DIVERGED else PRUNED
    return FAILED if trial.state == TrialState.FAIL else RUNNING


def trials_frame(study: StudyOrTrials) -> pd.DataFrame:
    """One row per trial, in trial-number order: its state, validation loss (`value`; for a
    pruned or diverged trial the last loss it reported), accuracy, epochs, duration, and every
    parameter as its own column (missing where the trial's branch did not take it).
    `weight_decay` is 0.0 where weight decay was off."""
    trials = sorted(study_trials(study), key=lambda t: t.number)
    distributions: dict[str, BaseDistribution] = {}
    for trial in trials:
        for name, distribution in trial.distributions.items():
            distributions.setdefault(name, distribution)
    rows = [_trial_row(trial) for trial in trials]
    params = _param_order(distributions)
    columns = [*CORE_COLUMNS, *params, *TRAILING_COLUMNS]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    dtypes = {
        "number": "Int64", "state": "str", "value": "float64", "val_accuracy": "float64",
        "train_loss": "float64", "epochs_run": "Int64", "duration_s": "float64",
        "seed": "Int64", "datetime_start": "datetime64[us]", "end_detail": "str",
        "weight_decay": "float64", "momentum": "float64",
        **{name: _dtype(distributions[name]) for name in params},
        "optimizer": "str", "lr": "float64", "scheduler": "str",
    }
    frame = frame.astype(dtypes)
    # A regression study's loss in the target's own units, next to the loss.
    if any(ATTR_VAL_RMSE in t.user_attrs for t in trials):
        frame.insert(frame.columns.get_loc("value") + 1, "val_rmse", pd.array(
            [t.user_attrs.get(ATTR_VAL_RMSE) for t in trials], dtype="Float64").astype(
                "float64"))
    runs = {t.number: t.user_attrs[ATTR_RUN_VAL_LOSS] for t in trials
            if ATTR_RUN_VAL_LOSS in t.user_attrs}
    if runs:
        frame.attrs[RUNS] = RunLosses(runs)
    return frame


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    params = dict(trial.params)
    if "weight_decay" not in params and params.get("use_weight_decay") is False:
        params["weight_decay"] = 0.0
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        **params,
        "number": trial.number, "state": trial_state(trial), "value": trial.value,
        "val_accuracy": attrs.get(ATTR_VAL_ACCURACY), "train_loss": attrs.get(ATTR_TRAIN_LOSS),
        "epochs_run": attrs.get(ATTR_EPOCHS_RUN),
        # Milliseconds are plenty, and keep the tables readable.
        "duration_s": round(duration, 3) if duration is not None else None,
        "seed": attrs.get(ATTR_SEED), "datetime_start": trial.datetime_start,
        "end_detail": attrs.get(ATTR_END_DETAIL),
    }


def _param_order(distributions: Mapping[str, BaseDistribution]) -> list[str]:
    """Parameters outside the core columns: the registries' order (optimizers' then
    schedulers'), then any this version does not know, by name."""
    known = ["use_weight_decay"]
    known += [p.name for spec in OPTIMIZERS.values() for p in spec.params]
    known += [p.name for spec in SCHEDULERS.values() for p in spec.params]
    known.append(WARMUP.name)
    ordered = [name for name in dict.fromkeys(known) if name in distributions]
    unknown = sorted(set(distributions) - set(ordered) - set(CORE_COLUMNS))
    return [name for name in ordered if name not in CORE_COLUMNS] + unknown


def _dtype(distribution: BaseDistribution) -> str:
    if isinstance(distribution, IntDistribution):
        return "Int64"
    if isinstance(distribution, FloatDistribution):
        return "float64"
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        if all(isinstance(c, bool) for c in choices):
            return "boolean"
        if all(isinstance(c, str) for c in choices):
            return "str"
    return "object"


def curves_frame(study: StudyOrTrials, numbers: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-epoch curves, long format: `number`, `epoch`, `val_loss` (the reported intermediate
    value), `lr` (the learning rate that epoch trained with); for the trials `numbers`, else
    all."""
    wanted = None if numbers is None else set(numbers)
    rows = []
    for trial in study_trials(study):
        if wanted is not None and trial.number not in wanted:
            continue
        losses = trial.intermediate_values
        lrs = trial.user_attrs.get(ATTR_LR_CURVE) or []
        for epoch in range(1, max(len(lrs), max(losses, default=0)) + 1):
            lr = lrs[epoch - 1] if epoch <= len(lrs) else math.nan
            rows.append((trial.number, epoch, losses.get(epoch, math.nan), lr))
    frame = pd.DataFrame(rows, columns=["number", "epoch", "val_loss", "lr"])
    return frame.astype({"number": "int64", "epoch": "int64", "val_loss": "float64",
                         "lr": "float64"}).sort_values(["number", "epoch"], ignore_index=True)


def param_importances(study: StudyOrTrials) -> pd.Series:
    """Optuna's fANOVA importances of the parameters every complete trial has (optimizer, lr,
    use_weight_decay, scheduler, ...): a branch's own parameters are not comparable across
    branches. Seeded, so the same study gives the same numbers. Sums to 1, largest first.
    Raises HPSearchError where there is too little to assess."""
    complete = [t for t in study_trials(study) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        raise HPSearchError(f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete "
                            f"trials; the study has {len(complete)}")
    shared = set.intersection(*(set(t.distributions) for t in complete))
    varying = sorted(name for name in shared
                     if len({_hashable(t.params[name]) for t in complete}) > 1)
    if not varying:
        raise HPSearchError("importances need a parameter that every complete trial has and "
                            "that varies; there is none")
    # The evaluators read a study: give them an in-memory one rather than a second storage read.
    with _optuna_quiet():  # Optuna would log the in-memory study's creation
        copy = optuna.create_study(direction="minimize")
    copy.add_trials(complete)
    evaluator = optuna.importance.FanovaImportanceEvaluator(
        seed=0, n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH)
    found = optuna.importance.get_param_importances(copy, evaluator=evaluator, params=varying)
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    return pd.Series(dict(ranked), name="fANOVA", dtype="float64").rename_axis("param")


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _hashable(value: Any) -> Any:
    return (type(value).__name__, value)


# -- tables -----------------------------------------------------------------------------------
def complete_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """The complete trials, best first (validation loss, then trial number)."""
    complete = frame[frame["state"] == COMPLETE]
    return complete.sort_values(["value", "number"], kind="stable", ignore_index=True)


def check_by(by: str) -> str:
    if by not in SUMMARY_BY:
        raise ConfigError(f"by {by!r} is unknown; known: {', '.join(SUMMARY_BY)}")
    return by


def summary(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Which scheduler / optimizer / (optimizer, scheduler) pair wins: one row per group with
    its trial counts by state, the best and median validation loss of its complete trials, and
    its best trial (number, and its other choice and lr). Best group first; groups without a
    complete trial last; ties by best trial number, then name."""
    keys = _GROUP_KEYS[check_by(by)]
    details = _BEST_DETAILS[by]
    columns = [*keys, "trials", *STATES, "best_value", "median_value", "best_trial", *details]
    grouped = frame.dropna(subset=keys)  # a trial that failed before drawing its parameters
    if grouped.empty:
        return pd.DataFrame({name: pd.Series(dtype=_summary_dtype(frame, name))
                             for name in columns})
    counts = pd.crosstab([grouped[k] for k in keys], grouped["state"])
    counts = counts.reindex(columns=list(STATES), fill_value=0)
    counts.insert(0, "trials", counts.sum(axis=1))
    complete = complete_trials(grouped)
    best = complete.groupby(keys, sort=False).first()
    table = counts.join(pd.DataFrame({
        "best_value": best["value"],
        "median_value": complete.groupby(keys)["value"].median(),
        "best_trial": best["number"],
        **{name: best[name] for name in details},
    }))
    table = table.reset_index().rename_axis(columns=None)
    table = table.sort_values(["best_value", "best_trial", *keys], kind="stable",
                              na_position="last", ignore_index=True)
    table = table[columns].astype({name: _summary_dtype(frame, name) for name in columns})
    # At equal budget: a group given more trials has more chances at a low best.
    ranked = table["complete"] > 0
    budget = int(table.loc[ranked, "complete"].min()) if ranked.any() else 0
    expected = complete.groupby(keys, sort=False)["value"].agg(
        lambda values: expected_best(values.tolist(), budget))
    table = table.merge(expected.rename("expected_best").reset_index(), on=keys, how="left")
    paired = group_comparisons(frame, by)
    if not paired.empty:
        table = table.merge(paired[[*keys, "outcome", "p_holm"]].rename(
            columns={"outcome": "paired"}), on=keys, how="left")
        table.loc[0, "paired"] = "best"  # the group the others are compared with
    return table


def expected_best(values: Sequence[float], budget: int) -> float:
    """The expected lowest of `budget` values drawn at random (without replacement) from
    `values`: a group's best validation loss had it been given `budget` trials. NaN for a
    budget it does not have."""
    ordered = sorted(values)
    n = len(ordered)
    if budget < 1 or budget > n:
        return math.nan
    # P(the lowest drawn is the i-th lowest) = C(n-1-i, budget-1) / C(n, budget), built up
    # step by step (the binomials themselves overflow floats for large studies).
    chance = budget / n
    expected = 0.0
    for i in range(n - budget + 1):
        expected += chance * ordered[i]
        if n - 1 - i > 0:
            chance *= (n - i - budget) / (n - 1 - i)
    return expected


def group_comparisons(frame: pd.DataFrame, by: str, alpha: float = ALPHA) -> pd.DataFrame:
    """The best trial of each group (scheduler, optimizer or pair) against the best trial
    overall, run by run over the runs every trial of the study shares (their final validation
    losses): two-sided Wilcoxon signed-rank, Holm-corrected over the groups, outcomes in the
    words of `hpsearch confirm`. Empty where the trials have no runs to pair (one run each)."""
    keys = _GROUP_KEYS[check_by(by)]
    complete = complete_trials(frame)
    stored = frame.attrs.get(RUNS, {})
    if complete.empty or not all(number in stored for number in complete["number"]):
        return pd.DataFrame()
    overall = complete.iloc[0]
    best_runs = pd.Series(stored[overall["number"]])
    best_of_group = complete.groupby(keys, sort=False).first().reset_index()
    rows = []
    for _, group in best_of_group.iterrows():
        if group["number"] == overall["number"]:
            continue
        d = paired_differences(best_runs, pd.Series(stored[group["number"]]))
        mean, low, high = mean_interval(d)
        rows.append({**{k: group[k] for k in keys}, "best_trial": group["number"],
                     "runs": len(d), "wins": int((d < 0).sum()), "losses": int((d > 0).sum()),
                     "mean_difference": mean, "difference_low": low, "difference_high": high,
                     "p_value": wilcoxon_p(d)})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].tolist())
    needed = seeds_needed(len(table), alpha)
    table["outcome"] = [outcome(r["wins"], r["losses"], r["runs"], r["p_holm"],
                                r["mean_difference"], needed, alpha)
                        for _, r in table.iterrows()]
    return table


def _summary_dtype(frame: pd.DataFrame, column: str) -> Any:
    if column in frame.columns and column not in ("number", "state"):
        return frame[column].dtype
    return "float64" if column in ("best_value", "median_value") else "Int64"


def leaderboard(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` best trials: complete ones ranked by validation loss (ties by trial number),
    so rank 1 is Optuna's `study.best_trial`; where fewer trials completed, the pruned and
    diverged ones follow, unranked, by the last loss they reported."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1; got {top}")
    unfinished = frame[frame["state"].isin([PRUNED, DIVERGED])].sort_values(
        ["value", "number"], kind="stable", na_position="last")
    complete = complete_trials(frame)
    board = pd.concat([complete, unfinished], ignore_index=True).head(top)
    ranks = pd.array(range(1, len(board) + 1), dtype="Int64")
    ranks[len(complete):] = pd.NA
    columns = {
        "rank": ranks, "number": board["number"], "state": board["state"],
        "value": board["value"],
        **({"val_rmse": board["val_rmse"]} if "val_rmse" in board else {}),
        "val_accuracy": board["val_accuracy"],
        "optimizer": board["optimizer"], "lr": board["lr"], "momentum": board["momentum"],
        "weight_decay": board["weight_decay"], "scheduler": board["scheduler"],
        "epochs_run": board["epochs_run"], "duration_s": board["duration_s"],
        # The branches' own parameters last: they are long, and vary in number.
        "scheduler_params": [_branch_params(row, _scheduler_params(row["scheduler"], row.index))
                             for _, row in board.iterrows()],
        "optimizer_params": [_branch_params(row, _optimizer_params(row["optimizer"]))
                             for _, row in board.iterrows()],
    }
    if frame["val_accuracy"].isna().all():  # a regression study: no accuracy to show
        del columns["val_accuracy"]
    table = pd.DataFrame(columns)
    return table.astype({"optimizer_params": "str", "scheduler_params": "str"})


def _optimizer_params(name: Any) -> list[str]:
    # momentum has its own column: it is shared by SGD and RMSprop.
    spec = OPTIMIZERS.get(name)
    names = [p.name for p in spec.params] if spec else []
    return [n for n in names if n != MOMENTUM.name]


def _scheduler_params(name: Any, columns: pd.Index) -> list[str]:
    spec = SCHEDULERS.get(name)
    if spec is None:  # a scheduler this version does not know: its parameters carry its name
        return [c for c in columns if str(c).startswith(f"{name}_")]
    return [p.name for p in spec.params] + ([WARMUP.name] if spec.allows_warmup else [])


def _branch_params(row: pd.Series, names: list[str]) -> str:
    """`name=value, ...` for the branch's parameters the trial has (full names, as `hpsearch
    train --set` takes them)."""
    return ", ".join(f"{name}={_short(row[name])}" for name in names
                     if name in row.index and not _missing(row[name]))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- the verdict ------------------------------------------------------------------------------
def verdict(frame: pd.DataFrame, summaries: Mapping[str, pd.DataFrame] | None = None) -> str:
    """A paragraph in plain words: the best trial, the best schedule and optimizer, by how much
    each leads its runner-up, and on how many trials each judgement rests. `summaries`: the
    frame's `summary` by scheduler and by optimizer, where the caller has them already."""
    counts = {state: int((frame["state"] == state).sum()) for state in STATES}
    tally = ", ".join(f"{n} {state}" for state, n in counts.items()
                      if n or state in (COMPLETE, PRUNED, DIVERGED))
    sentences = [f"The study has {counted(len(frame), 'trial')} ({tally})."]
    complete = complete_trials(frame)
    if complete.empty:
        sentences.append("No trial has completed yet, so nothing can be ranked: run more "
                         "trials (or loosen the pruner).")
        return " ".join(sentences)
    best = complete.iloc[0]
    accuracy = ("" if _missing(best["val_accuracy"])
                else f", validation accuracy {best['val_accuracy']:.4g}")
    if "val_rmse" in best and not _missing(best["val_rmse"]):
        accuracy += f" (RMSE {best['val_rmse']:.4g} in the target's units)"
    sentences.append(f"The best trial is #{best['number']}: {best['optimizer']} with "
                     f"{best['scheduler']} at lr {best['lr']:.3g}, validation loss "
                     f"{best['value']:.4g}{accuracy}.")
    for key, noun in (("scheduler", "schedule"), ("optimizer", "optimizer")):
        table = summaries[key] if summaries and key in summaries else summary(frame, key)
        sentences += _group_verdict(table, key, noun)
        sentences += _paired_verdict(table, key, noun)
    return " ".join(sentences)


def _paired_verdict(table: pd.DataFrame, key: str, noun: str) -> list[str]:
    """What the runs every trial shares say of the best group against the others."""
    if "paired" not in table or len(table) < 2:
        return []
    winner = table.iloc[0]
    said = {word: table.loc[table["paired"] == word, key].tolist()
            for word in (BETTER, TIED, INCONCLUSIVE, WORSE)}
    parts = [f"{phrase} {listed(pd.Series(said[word]))}" for word, phrase in (
        (BETTER, "better than"), (TIED, "tied with"), (INCONCLUSIVE, "inconclusive against"),
        (WORSE, "worse than")) if said[word]]
    if not parts:
        return []
    verdict = ("the winner" if not said[TIED] and not said[INCONCLUSIVE] and not said[WORSE]
               else "not a sole winner")
    return [f"Paired run by run over the runs every trial shares (Wilcoxon, Holm), "
            f"{winner[key]}'s best trial (#{winner['best_trial']}) is {'; '.join(parts)}: "
            f"{verdict}."]


def _group_verdict(table: pd.DataFrame, key: str, noun: str) -> list[str]:
    ranked = table[table["complete"] > 0]
    never = table.loc[table["complete"] == 0, key].tolist()
    unranked = [f"{counted(len(never), noun)} had no complete trial ({', '.join(never)})."
                ] if never else []
    winner = ranked.iloc[0]
    if len(ranked) == 1:
        return [f"Only one {noun} completed a trial, {winner[key]} "
                f"({counted(winner['complete'], 'complete trial')}): there is nothing to "
                f"compare it with yet.", *unranked]
    tied = ranked[ranked["best_value"] == winner["best_value"]]
    if len(tied) > 1:
        # Equal best losses say nothing about which is better; the medians may.
        by_median = tied.sort_values(["median_value", "best_trial"], kind="stable").iloc[0]
        return [f"{listed(tied[key])} tie for the best {noun} at validation loss "
                f"{winner['best_value']:.4g} ({_support(tied, key)}); on the median complete "
                f"trial {by_median[key]} is the better of them "
                f"({by_median['median_value']:.4g}).", *unranked]
    runner = ranked.iloc[1]
    lead = runner["best_value"] - winner["best_value"]
    relative = lead / abs(runner["best_value"]) if runner["best_value"] else math.inf
    size = ("a negligible margin, as good as a tie" if relative < NEGLIGIBLE_LEAD
            else "a narrow margin" if relative < NARROW_LEAD else "a clear margin")
    share = f" ({relative:.1%} of {runner[key]}'s best)" if math.isfinite(relative) else ""
    said = [f"The best {noun} is {winner[key]} (best validation loss "
            f"{winner['best_value']:.4g}; {_support(ranked.iloc[[0]], key)}); it leads the "
            f"runner-up {runner[key]} ({runner['best_value']:.4g}; "
            f"{_support(ranked.iloc[[1]], key)}) by {lead:.3g}{share}: {size}."]
    if winner["complete"] < FEW_TRIALS or 3 * winner["trials"] <= runner["trials"]:
        said.append(f"That rests on only {counted(winner['complete'], 'complete trial')} of "
                    f"{winner[key]} against {runner['complete']} of {runner[key]}: run more "
                    "trials before trusting it.")
    if winner["median_value"] > runner["median_value"]:
        said.append(f"On the median complete trial {runner[key]} does better "
                    f"({runner['median_value']:.4g} against {winner['median_value']:.4g}), "
                    f"so {winner[key]}'s lead may come from one lucky configuration.")
    return said + unranked


def _support(rows: pd.DataFrame, key: str) -> str:
    """How many trials each group's figures rest on."""
    label = len(rows) > 1
    return "; ".join((f"{row[key]}: " if label else "")
                     + f"{counted(row['trials'], 'trial')}, {row['complete']} complete"
                     for _, row in rows.iterrows())


def listed(values: pd.Series) -> str:
    """Names in words: "a", "a and b", "a, b and c"."""
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def counted(n: Any, noun: str) -> str:
    """"1 trial", "3 trials"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -- formatting -------------------------------------------------------------------------------
def format_cell(value: Any, digits: int = 6) -> str:
    """A table cell: floats to `digits` significant digits, missing values empty."""
    if _missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_interval(mean: Any, low: Any, high: Any, digits: int = 4) -> str:
    """"mean [low, high]" to `digits` significant digits (just the mean without an interval,
    empty without a mean)."""
    if _missing(mean):
        return ""
    if _missing(low):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned, 6 significant digits)."""
    numeric = [_is_numeric(df[c]) for c in df.columns]
    header = "| " + " | ".join(_markdown_cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    rows = ["| " + " | ".join(_markdown_cell(format_cell(v)) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *rows])


def text_table(df: pd.DataFrame, digits: int = 4) -> str:
    """An aligned plain-text table for a terminal (numbers right-aligned, missing as -)."""
    cells = [[format_cell(v, digits) or "-" for v in row]
             for row in df.itertuples(index=False, name=None)]
    headers = [str(c) for c in df.columns]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [_is_numeric(df[c]) for c in df.columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def wrap(paragraph: str, width: int = 100) -> str:
    return textwrap.fill(paragraph, width=width, break_on_hyphens=False)


def _markdown_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
