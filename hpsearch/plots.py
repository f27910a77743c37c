"""PNG plots of a study, from the frames of `report.py`: the optimization history, the final
loss by scheduler, the loss and learning-rate curves of each scheduler's best trial, the lr
against the final loss, the parameter importances, and a confirmation's configurations with
their intervals over seeds.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot): no window opens,
and importing this module never changes a notebook's backend. Each function saves its figure
to `path` and returns it (a notebook shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpsearch.optimizers import OPTIMIZERS
from hpsearch.report import COMPLETE, DIVERGED, PRUNED, complete_trials, summary
from hpsearch.schedulers import SCHEDULERS

DPI = 110
_PALETTE = [f"C{i}" for i in range(10)]


def plot_history(frame: pd.DataFrame, path: str | Path) -> Figure:
    """Validation loss of every finished trial by trial number, and the best so far."""
    figure, ax = _figure()
    ordered = frame.sort_values("number")
    complete = ordered[ordered["state"] == COMPLETE]
    for state, marker, colour in ((PRUNED, "x", "0.6"), (DIVERGED, "v", "C3")):
        rows = ordered[(ordered["state"] == state) & ordered["value"].notna()]
        if not rows.empty:
            ax.scatter(rows["number"], rows["value"], marker=marker, color=colour, s=18,
                       label=f"{state} (last reported loss)")
    ax.scatter(complete["number"], complete["value"], color="C0", s=18, label="complete")
    ax.step(complete["number"], complete["value"].cummin(), where="post", color="C1",
            label="best so far")
    _focus(ax, ordered["value"])
    _label(ax, "Optimization history", "trial", "validation loss")
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_loss_by_scheduler(frame: pd.DataFrame, path: str | Path) -> Figure:
    """Final validation loss of the complete trials, one box (and its points) per scheduler,
    best scheduler first."""
    figure, ax = _figure()
    order = [s for s in summary(frame, "scheduler").query("complete > 0")["scheduler"]]
    complete = complete_trials(frame)
    groups = [complete.loc[complete["scheduler"] == s, "value"].to_numpy() for s in order]
    ax.boxplot(groups, showfliers=False, widths=0.5)
    jitter = np.random.default_rng(0)  # fixed: the same study gives the same picture
    for position, (name, values) in enumerate(zip(order, groups, strict=True), start=1):
        offsets = jitter.uniform(-0.15, 0.15, len(values))
        ax.scatter(position + offsets, values, s=14, color=_colour(name, SCHEDULERS),
                   alpha=0.8, zorder=3)
    ax.set_xticks(range(1, len(order) + 1),
                  [f"{name}\n(n={len(values)})" for name, values in zip(order, groups,
                                                                          strict=True)],
                  rotation=30, ha="right", fontsize="small")
    _focus(ax, complete["value"])
    _label(ax, "Final validation loss by scheduler (complete trials)", "", "validation loss")
    return _save(figure, path)


def plot_val_loss_curves(frame: pd.DataFrame, curves: pd.DataFrame,
                         path: str | Path) -> Figure:
    """Validation loss per epoch of each scheduler's best trial."""
    return _best_curves(frame, curves, "val_loss", path, "Validation loss of each scheduler's "
                        "best trial", "validation loss")


def plot_lr_curves(frame: pd.DataFrame, curves: pd.DataFrame, path: str | Path) -> Figure:
    """The learning rate per epoch of each scheduler's best trial: the schedules themselves."""
    return _best_curves(frame, curves, "lr", path, "Learning rate of each scheduler's best "
                        "trial", "learning rate")


def plot_lr_vs_loss(frame: pd.DataFrame, path: str | Path) -> Figure:
    """Learning rate (log scale) against final validation loss, one colour per optimizer."""
    figure, ax = _figure()
    complete = complete_trials(frame)
    for name in sorted(complete["optimizer"].unique(), key=_registry_order(OPTIMIZERS)):
        rows = complete[complete["optimizer"] == name]
        ax.scatter(rows["lr"], rows["value"], s=18, label=name, color=_colour(name, OPTIMIZERS),
                   alpha=0.85)
    ax.set_xscale("log")
    _focus(ax, complete["value"])
    _label(ax, "Learning rate against final validation loss (complete trials)",
           "learning rate", "validation loss")
    ax.legend(fontsize="small", ncols=2)
    return _save(figure, path)


def plot_importances(importances: pd.Series, path: str | Path) -> Figure:
    """Horizontal bars of `report.param_importances`, most important on top."""
    figure, ax = _figure(height=1.2 + 0.4 * len(importances))
    ordered = importances.sort_values()
    ax.barh(list(ordered.index), ordered.to_numpy(), color="C0")
    for y, value in enumerate(ordered):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(1.0, ordered.max() * 1.15))
    _label(ax, f"Parameter importances ({importances.name})", "importance (sums to 1)", "")
    return _save(figure, path)


def plot_confirmation(table: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> Figure:
    """Each confirmed configuration (`confirm_stats.configuration_table`, best first): its
    validation and held-out test loss as the mean with a 95%-interval error bar, every seed's
    run as a faint point beside it, and the value the search saw as a cross; below, the same
    for accuracy where the study classifies."""
    classify = table["val_accuracy_mean"].notna().any()
    figure = Figure(figsize=(max(8.0, 1.0 + 0.9 * len(table)), 8.0 if classify else 4.5),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if classify else 1, 1, sharex=True, squeeze=False)[:, 0]
    positions = np.arange(len(table))
    jitter = np.random.default_rng(0)  # fixed: the same confirmation gives the same picture
    panels = [("loss", "validation loss", "test loss")]
    if classify:
        panels.append(("accuracy", "validation accuracy", "test accuracy"))
    for ax, (kind, *labels) in zip(axes, panels, strict=True):
        for offset, split, colour, label in ((-0.15, "val", "C0", labels[0]),
                                             (0.15, "test", "C1", labels[1])):
            metric = f"{split}_{kind}"
            mean = table[f"{metric}_mean"].to_numpy(float)
            errors = np.nan_to_num([mean - table[f"{metric}_low"].to_numpy(float),
                                    table[f"{metric}_high"].to_numpy(float) - mean])
            for position, config_id in zip(positions, table["config_id"], strict=True):
                values = runs.loc[runs["config_id"] == config_id, metric].dropna()
                ax.scatter(position + offset + jitter.uniform(-0.06, 0.06, len(values)),
                           values, s=8, color=colour, alpha=0.3, linewidths=0)
            ax.errorbar(positions + offset, mean, yerr=errors, fmt="o", color=colour,
                        capsize=4, label=f"{label} (mean, 95% interval)")
        if kind == "loss":
            ax.scatter(positions - 0.15, table["search_value"], marker="x", color="C3", s=40,
                       zorder=3, label="validation loss the search saw")
            _wide_scale(ax, pd.concat([runs["val_loss"], runs["test_loss"],
                                       table["search_value"]]).dropna())
        _label(ax, f"Confirmed configurations: {kind} over seeds (best first)", "", kind)
        ax.legend(fontsize="small")
    axes[-1].set_xticks(positions, [f"{row.config}\n{row.optimizer}\n{row.scheduler}"
                                    for row in table.itertuples()], fontsize="small")
    return _save(figure, path)


def _best_curves(frame: pd.DataFrame, curves: pd.DataFrame, column: str, path: str | Path,
                 title: str, ylabel: str) -> Figure:
    figure, ax = _figure()
    best = summary(frame, "scheduler").query("complete > 0")
    for row in best.itertuples():
        curve = curves[curves["number"] == row.best_trial]
        ax.plot(curve["epoch"], curve[column], color=_colour(row.scheduler, SCHEDULERS),
                label=f"{row.scheduler} (#{row.best_trial}, {row.optimizer})")
    _wide_scale(ax, curves.loc[curves["number"].isin(best["best_trial"]), column])
    _label(ax, title, "epoch", ylabel)
    ax.legend(fontsize="small")
    return _save(figure, path)


def _wide_scale(ax: Axes, values: pd.Series) -> None:
    """A log scale where values span decades; symlog where some are 0 (a loss can be)."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.empty or (finite < 0).any() or positive.max() < 20 * positive.min():
        return
    if (finite > 0).all():
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=max(positive.min(), positive.max() * 1e-6))


def _focus(ax: Axes, losses: pd.Series) -> None:
    """Keep the bulk of the losses readable: a few exploded (but finite) losses would squash
    every other point into one line. They are cut off, and the plot says how many."""
    finite = losses[np.isfinite(losses)]
    if finite.empty:
        return
    low, bulk = finite.min(), finite.quantile(0.9)
    top = bulk + 0.5 * (bulk - low)
    if bulk == low or finite.max() <= top:
        return
    ax.set_ylim(low - 0.05 * (top - low), top)
    hidden = int((finite > top).sum())
    ax.text(0.99, 0.98, f"{hidden} trial{'s' if hidden > 1 else ''} above {top:.3g} not shown",
            transform=ax.transAxes, ha="right", va="top", fontsize="small", color="0.4")


def _figure(height: float = 4.5) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save(figure: Figure, path: str | Path) -> Figure:
    # No metadata: the same study gives the same bytes whatever the date.
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return figure


def _registry_order(registry: Iterable[str]) -> Callable[[str], tuple[int, str]]:
    names = list(registry)
    return lambda name: (names.index(name) if name in names else len(names), name)


def _colour(name: str, registry: Iterable[str]) -> str:
    """A name's colour, fixed by its place in the registry: the same in every plot."""
    names = list(registry)
    return _PALETTE[names.index(name) % len(_PALETTE)] if name in names else "0.3"
