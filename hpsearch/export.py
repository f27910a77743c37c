"""A stored study's report: read once from its storage, assembled from `report.py`'s tables,
rendered for a terminal (`hpsearch report`) or written to a folder of CSV, markdown and PNG
files with a `report.md` that links them (`hpsearch export`). Where the study has been
confirmed (`hpsearch confirm`), the confirmation's intervals, comparisons and verdict follow."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial

from hpsearch.confirm import confirm_study_name, load_confirmation
from hpsearch.confirm_stats import METRICS, Analysis, search_and_confirmation
from hpsearch.errors import ConfigError, HPSearchError
from hpsearch.records import ATTR_CONFIG, ATTR_FINGERPRINT, ATTR_VERSION
from hpsearch.report import (
    SUMMARY_BY,
    check_by,
    curves_frame,
    format_interval,
    leaderboard,
    markdown_table,
    param_importances,
    summary,
    text_table,
    trials_frame,
    verdict,
    wrap,
)
from hpsearch.storage.urls import mask_url
from hpsearch.studies import load_stored_study

DEFAULT_TOP = 10
FORMATS = ("table", "markdown", "csv")
# The text report fits a terminal this wide (`wide=True`: every column on one line).
TEXT_WIDTH = 120
# Counts the text report leaves out where they are zero in every row (the tally says so).
ZERO_COUNTS = ("diverged", "failed", "running")
# The leaderboard's columns that are lists of parameters: on their own lines in the text.
PARAM_COLUMNS = ("scheduler_params", "optimizer_params")
# What the columns of a table split to fit the width repeat at the start of each part.
KEYS = {"leaderboard": ["rank", "number"], "scheduler": ["scheduler"],
        "optimizer": ["optimizer"], "pair": ["optimizer", "scheduler"]}
TITLES = {"scheduler": "Which schedule wins", "optimizer": "Which optimizer wins",
          "pair": "Which optimizer × scheduler pair wins"}
# The file each summary is exported to (`<name>.csv` and `<name>.md`).
SUMMARY_FILES = {"scheduler": "schedulers", "optimizer": "optimizers", "pair": "pairs"}
FILE_NOTES = {
    "trials.csv": "every trial, one row: state, validation loss, accuracy, epochs, duration, "
                  "every parameter as a column",
    "leaderboard.csv": "the leaderboard above, full precision",
    "schedulers.csv": "the per-scheduler summary, full precision",
    "optimizers.csv": "the per-optimizer summary, full precision",
    "pairs.csv": "the per optimizer × scheduler summary, full precision",
    "importances.csv": "fANOVA importance of each parameter every complete trial has",
    "confirm.csv": "the confirmed configurations: mean, 95% interval low and high of each "
                   "metric over the seeds, full precision",
    "confirm_comparisons.csv": "the confirmation's paired comparisons, full precision",
    "confirm_runs.csv": "every confirmation run: configuration, seed, validation and test "
                        "metrics",
}
CONFIRM_PLOT = "Confirmed configurations: mean and 95% interval over seeds"
CONFIRM_NOTE = ("The best configurations re-trained from scratch over several seeds, without "
                "pruning: mean [95% interval] over the seeds; `test` is the held-out split "
                "the search never saw; `optimism` is the confirmed mean validation loss minus "
                "the value the search saw (`search_value`).")
COMPARISONS_NOTE = ("Validation loss paired by seed: two-sided Wilcoxon signed-rank, "
                    "Holm-corrected within each question (configuration, schedule); `wins`: "
                    "seeds on which the best had the lower loss.")


@dataclass(frozen=True)
class StudyReport:
    """What `hpsearch report` shows: built from one read of the study."""

    study_name: str
    storage: str  # masked: no password
    trials: pd.DataFrame
    leaderboard: pd.DataFrame
    summaries: dict[str, pd.DataFrame]  # by -> table, in the order asked
    verdict: str
    top: int
    about: dict[str, Any] = field(default_factory=dict)  # what was run, from the study's attrs
    confirmation: Analysis | None = None  # `hpsearch confirm`'s runs, where there are any
    # fANOVA importance per parameter (`param_importances`), or why there is none.
    importances: pd.Series | None = None
    no_importances: str = ""


def build_report(study_name: str, storage_url: str, top: int = DEFAULT_TOP,
                 by: Sequence[str] = SUMMARY_BY) -> StudyReport:
    """The report of a stored study; raises HPSearchError where the study has nothing to rank."""
    report, _ = _read_report(study_name, storage_url, top, by)
    return report


def _read_report(study_name: str, storage_url: str, top: int,
                 by: Sequence[str]) -> tuple[StudyReport, list[FrozenTrial]]:
    by = list(dict.fromkeys(check_by(name) for name in by))
    if top < 1:  # checked before the (possibly long) read of the study
        raise ConfigError(f"--top must be >= 1; got {top}")
    study = load_stored_study(study_name, storage_url, read_only=True)
    trials = study.get_trials(deepcopy=False)
    frame = trials_frame(trials)
    if not (frame["state"] == "complete").any():
        counts = frame["state"].value_counts()
        tally = ", ".join(f"{counts.get(state, 0)} {state}"
                          for state in ("pruned", "diverged", "failed", "running"))
        raise HPSearchError(f"study {study_name!r} has no complete trial yet ({len(frame)} "
                            f"trials: {tally}); nothing to rank")
    try:
        importances, no_importances = param_importances(trials), ""
    except HPSearchError as exc:
        importances, no_importances = None, str(exc)
    summaries = {name: summary(frame, name)
                 for name in dict.fromkeys([*by, "scheduler", "optimizer"])}
    report = StudyReport(
        study_name=study_name, storage=mask_url(storage_url), trials=frame,
        leaderboard=leaderboard(frame, top), summaries={name: summaries[name] for name in by},
        verdict=verdict(frame, summaries), top=top, about=_about(study.user_attrs),
        confirmation=load_confirmation(study), importances=importances,
        no_importances=no_importances,
    )
    return report, trials


def _about(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What was run, where the study says so (a study not made by hpsearch may not)."""
    config = attrs.get(ATTR_CONFIG) or {}
    found = {
        "description": config.get("description"),
        "dataset": (config.get("data") or {}).get("dataset"),
        "epochs": (config.get("training") or {}).get("epochs"),
        "sampler": (config.get("sampler") or {}).get("kind"),
        "pruner": (config.get("pruner") or {}).get("kind"),
        "seed": config.get("seed"),
        "data fingerprint": attrs.get(ATTR_FINGERPRINT),
        "hpsearch version": attrs.get(ATTR_VERSION),
    }
    return {key: value for key, value in found.items() if value not in (None, "")}


# -- rendering for the terminal ---------------------------------------------------------------
def renderer(fmt: str, wide: bool = False) -> Callable[[StudyReport], str]:
    """The function that renders a report as `fmt` (table, markdown or csv). A table fits
    `TEXT_WIDTH` columns unless `wide`."""
    renderers = {"table": lambda report: _as_text(report, wide), "markdown": report_markdown,
                 "csv": _as_csv}
    if fmt not in renderers:
        raise ConfigError(f"format {fmt!r} is unknown; known: {', '.join(FORMATS)}")
    return renderers[fmt]


def _as_text(report: StudyReport, wide: bool = False) -> str:
    parts = [wrap(f"Study {report.study_name!r} in {report.storage}: {_tally(report.trials)}",
                  TEXT_WIDTH), ""]
    if report.confirmation is not None:
        parts += ["Confirmed verdict", wrap(confirmed_lead(report)), ""]
    board = report.leaderboard
    parts += [f"Leaderboard (top {report.top}, by validation loss)"]
    if wide:
        parts += [text_table(board)]
    else:
        parts += [_fitted_table(board.drop(columns=list(PARAM_COLUMNS)), KEYS["leaderboard"]), "",
                  "Their schedule's and optimizer's own parameters", _param_lines(board)]
    for by, table in report.summaries.items():
        parts += ["", f"{TITLES[by]} (by {by})", _shown_table(table, KEYS[by], wide)]
    parts += ["", "Parameter importances (fANOVA, over the complete trials)"]
    parts += [_importance_lines(report.importances) if report.importances is not None
              else wrap(f"None: {report.no_importances}.")]
    parts += ["", "Verdict", wrap(report.verdict)]
    if report.confirmation is not None:
        parts += ["", confirmation_text(report.confirmation, report.study_name, wide)]
    return "\n".join(parts)


def _shown_table(table: pd.DataFrame, keys: Sequence[str], wide: bool) -> str:
    """`table` for a terminal: every column on one line if `wide`, else `_fitted_table`."""
    return text_table(table) if wide else _fitted_table(table, keys)


def _fitted_table(table: pd.DataFrame, keys: Sequence[str], width: int = TEXT_WIDTH) -> str:
    """`text_table` within `width` columns: the counts that are zero in every row left out,
    then, where it is still wider, its columns split into parts one below the other, each
    starting with the `keys` columns, so that every row can still be read across."""
    table = table.drop(columns=[c for c in ZERO_COUNTS
                                if c in table and (table[c].fillna(0) == 0).all()])
    keys = [c for c in keys if c in table]

    def fits(columns: list[str]) -> bool:
        return max(map(len, text_table(table[columns]).splitlines())) <= width

    parts: list[list[str]] = [list(keys)]
    for column in (c for c in table.columns if c not in keys):
        if len(parts[-1]) > len(keys) and not fits([*parts[-1], column]):
            parts.append(list(keys))
        parts[-1].append(column)
    return "\n\n".join(text_table(table[columns]) for columns in parts)


def _param_lines(board: pd.DataFrame, width: int = TEXT_WIDTH) -> str:
    """One entry per leaderboard trial: `#N` and its branch parameters, wrapped."""
    lines = []
    for _, row in board.iterrows():
        given = [str(row[c]) for c in PARAM_COLUMNS if c in row and str(row[c]) not in ("", "-")]
        lines.append(textwrap.fill(f"#{row['number']}: " + ("; ".join(given) or "none"),
                                   width=width, subsequent_indent="    ",
                                   break_on_hyphens=False))
    return "\n".join(lines)


def _importance_lines(importances: pd.Series) -> str:
    """Each parameter's share of the explained variance, largest first, with a bar."""
    name_width = max(map(len, importances.index))
    return "\n".join(f"{name.ljust(name_width)}  {share:6.1%}  {'#' * round(share * 40)}"
                     for name, share in importances.items())


def _as_csv(report: StudyReport) -> str:
    """Each table as CSV under a `# title` line, tables apart by a blank line; one table per
    file is what `hpsearch export` writes."""
    parts = [f"# leaderboard (top {report.top})", report.leaderboard.to_csv(index=False)]
    for by, table in report.summaries.items():
        parts += [f"# by {by}", table.to_csv(index=False)]
    if report.importances is not None:
        parts += ["# importances", report.importances.to_csv()]
    if report.confirmation is not None:
        parts += ["# confirmation", report.confirmation.table.to_csv(index=False),
                  "# confirmation comparisons",
                  report.confirmation.comparisons.to_csv(index=False)]
    return "\n".join(parts).rstrip("\n")


def report_markdown(report: StudyReport, plot_files: Mapping[str, str] | None = None,
                    skipped: Mapping[str, str] | None = None) -> str:
    """The report as a markdown document; with `plot_files` (title -> file name) it shows the
    plots, and `skipped` (title -> why) says which could not be drawn."""
    lines = [f"# Study `{report.study_name}`: which schedule wins", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.about.items()]
    lines += [f"- **trials**: {_tally(report.trials)}", ""]
    if report.confirmation is not None:
        lines += ["## Confirmed verdict", "", confirmed_lead(report), ""]
    lines += ["## Verdict", "", report.verdict, "",
              f"## Leaderboard (top {report.top})", "",
              "Complete trials ranked by validation loss (ties by trial number); where fewer "
              "completed, pruned and diverged trials follow, unranked, with the last loss "
              "they reported.", "", markdown_table(report.leaderboard)]
    for by, table in report.summaries.items():
        lines += ["", f"## {TITLES[by]}", "",
                  "Counts by state; best and median validation loss of the complete trials; "
                  "the best trial's number, its other choices and lr.", "",
                  markdown_table(table)]
    lines += ["", "## Parameter importances", ""]
    lines += (["fANOVA importance of each parameter every complete trial has (shares of the "
               "explained variance of the validation loss).", "",
               markdown_table(report.importances.rename("importance").reset_index())]
              if report.importances is not None else [f"None: {report.no_importances}."])
    if report.confirmation is not None:
        lines += ["", confirmation_markdown(report.confirmation, report.study_name).rstrip("\n")]
    if plot_files or skipped:
        lines += ["", "## Plots"]
        for title, name in (plot_files or {}).items():
            lines += ["", f"### {title}", "", f"![{title}]({name})"]
        for title, why in (skipped or {}).items():
            lines += ["", f"### {title}", "", f"Not drawn: {why}."]
    return "\n".join(lines) + "\n"


# -- the confirmation -------------------------------------------------------------------------
def confirmed_lead(report: StudyReport) -> str:
    """What a report leads with once the study is confirmed: the confirmation's verdict, and
    where the search and the confirmation disagree."""
    analysis = report.confirmation
    return " ".join(part for part in (analysis.verdict,
                                      search_and_confirmation(analysis, report.trials)) if part)


def confirmation_tables(analysis: Analysis, digits: int = 4) -> tuple[pd.DataFrame,
                                                                      pd.DataFrame]:
    """The confirmation's table and comparisons for people: each metric as one
    `mean [low, high]` cell (`analysis.table` has them as numbers)."""
    table = analysis.table
    shown = table[["rank", "config", "optimizer", "scheduler", "lr", "seeds", "diverged"]].copy()
    for metric in METRICS:
        if table[f"{metric}_mean"].notna().any():  # a regression study has no accuracy
            shown[metric] = [_interval(row, metric, digits) for _, row in table.iterrows()]
    shown[["search_value", "optimism", "other_params"]] = table[["search_value", "optimism",
                                                                 "other_params"]]
    comparisons = analysis.comparisons
    compared = comparisons[["question", "best", "other", "seeds", "wins", "losses"]].copy()
    compared["mean_difference"] = [_interval(row, "difference", digits, mean="mean_difference")
                                   for _, row in comparisons.iterrows()]
    compared[["p_value", "p_holm", "outcome"]] = comparisons[["p_value", "p_holm", "outcome"]]
    return shown, compared


def _interval(row: pd.Series, metric: str, digits: int, mean: str | None = None) -> str:
    return format_interval(row[mean or f"{metric}_mean"], row[f"{metric}_low"],
                           row[f"{metric}_high"], digits)


def confirmation_text(analysis: Analysis, study_name: str, wide: bool = False) -> str:
    """The confirmation of `study_name` for a terminal: tables and verdict."""
    table, comparisons = confirmation_tables(analysis)
    parts = [wrap(f"Confirmation (study {confirm_study_name(study_name)!r}): mean [95% "
                  "interval] over seeds; test = the held-out split; search_value = what the "
                  "search saw", TEXT_WIDTH), _shown_table(table, ["rank", "config"], wide)]
    if not comparisons.empty:
        parts += ["", "Paired comparisons (validation loss on the same seeds; Wilcoxon "
                      "signed-rank, Holm-corrected per question)",
                  _shown_table(comparisons, ["question", "other"], wide)]
    parts += ["", "Confirmation verdict", wrap(analysis.verdict)]
    return "\n".join(parts)


def confirmation_markdown(analysis: Analysis, study_name: str) -> str:
    """The confirmation of `study_name` as a markdown section."""
    table, comparisons = confirmation_tables(analysis)
    lines = ["## Confirmation", "", f"Study `{confirm_study_name(study_name)}`. {CONFIRM_NOTE}",
             "", analysis.verdict, "", markdown_table(table)]
    if not comparisons.empty:
        lines += ["", "### Paired comparisons", "", COMPARISONS_NOTE, "",
                  markdown_table(comparisons)]
    return "\n".join(lines) + "\n"


def _tally(frame: pd.DataFrame) -> str:
    counts = frame["state"].value_counts()
    states = ", ".join(f"{counts.get(state, 0)} {state}"
                       for state in ("complete", "pruned", "diverged", "failed", "running"))
    return f"{len(frame)} trials ({states})"


# -- export to a folder -----------------------------------------------------------------------
@dataclass(frozen=True)
class Exported:
    report: StudyReport
    folder: Path
    files: list[str]  # names written in `folder`, in writing order
    skipped: dict[str, str]  # plot title -> why it was not drawn


def export_report(study_name: str, storage_url: str, out: str | Path,
                  top: int = DEFAULT_TOP) -> Exported:
    """Write a study's report to the folder `out` (created if needed): trials.csv,
    leaderboard/schedulers/optimizers/pairs as .csv and .md, importances.csv, PNG plots and a
    report.md linking them; where the study was confirmed, also confirm.csv/.md,
    confirm_comparisons.csv/.md, confirm_runs.csv and confirm.png. Existing files of the same
    names are replaced."""
    report, trials = _read_report(study_name, storage_url, top, SUMMARY_BY)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files, skipped = _write_all(report, trials, folder)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {folder}: "
                          f"{exc.strerror or exc}") from None
    return Exported(report, folder, files, skipped)


def _write_all(report: StudyReport, trials: list[FrozenTrial],
               folder: Path) -> tuple[list[str], dict[str, str]]:
    # Imported here: matplotlib draws only the exported files, not `hpsearch report`'s text.
    from hpsearch import plots

    files: list[str] = []

    def write(name: str, text: str) -> None:
        (folder / name).write_text(text, encoding="utf-8")
        files.append(name)

    # Full precision in CSV (for machines); 6 significant digits in markdown (for people).
    write("trials.csv", report.trials.to_csv(index=False))
    tables = {"leaderboard": report.leaderboard}
    tables |= {SUMMARY_FILES[by]: table for by, table in report.summaries.items()}
    for name, table in tables.items():
        write(f"{name}.csv", table.to_csv(index=False))
        write(f"{name}.md", markdown_table(table) + "\n")
    confirmation = report.confirmation
    if confirmation is not None:
        shown, compared = confirmation_tables(confirmation, digits=6)
        write("confirm.csv", confirmation.table.to_csv(index=False))
        write("confirm.md", markdown_table(shown) + "\n")
        write("confirm_comparisons.csv", confirmation.comparisons.to_csv(index=False))
        write("confirm_comparisons.md", markdown_table(compared) + "\n")
        write("confirm_runs.csv", confirmation.runs.to_csv(index=False))

    frame = report.trials
    curves = curves_frame(trials, report.summaries["scheduler"]["best_trial"].dropna().tolist())
    drawings: dict[str, tuple[str, Callable[[Path], object]]] = {
        "Optimization history": ("history.png", lambda p: plots.plot_history(frame, p)),
        "Final validation loss by scheduler": (
            "loss_by_scheduler.png", lambda p: plots.plot_loss_by_scheduler(frame, p)),
        "Validation loss of each scheduler's best trial": (
            "val_loss_curves.png", lambda p: plots.plot_val_loss_curves(frame, curves, p)),
        "Learning-rate schedule of each scheduler's best trial": (
            "lr_curves.png", lambda p: plots.plot_lr_curves(frame, curves, p)),
        "Learning rate against final validation loss": (
            "lr_vs_loss.png", lambda p: plots.plot_lr_vs_loss(frame, p)),
    }
    skipped: dict[str, str] = {}
    importances = report.importances
    if importances is None:
        skipped["Parameter importances"] = report.no_importances
    else:
        write("importances.csv", importances.to_csv())
        drawings["Parameter importances"] = (
            "importances.png", lambda p: plots.plot_importances(importances, p))
    if confirmation is not None:
        drawings[CONFIRM_PLOT] = ("confirm.png", lambda p: plots.plot_confirmation(
            confirmation.table, confirmation.runs, p))
    plot_files: dict[str, str] = {}
    for title, (name, draw) in drawings.items():
        draw(folder / name)
        files.append(name)
        plot_files[title] = name
    listing = [f"- [{name}]({name}): {FILE_NOTES[name]}" for name in files
               if name in FILE_NOTES]
    write("report.md", report_markdown(report, plot_files, skipped)
          + "\n## Files\n\n" + "\n".join(listing) + "\n")
    return files, skipped
