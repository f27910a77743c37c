"""The study's pruner, deciding from a trial's curve kept as it trains.

Optuna's `PercentilePruner` (and `MedianPruner`, its 50th percentile) computes the percentile
of the completed trials' values at a trial's step afresh for every trial and every epoch (a
list of every completed trial's value and a `numpy.nanpercentile` call), and reads the trial's
best value and previous step from a copy of all its values: in the cohort engine, whose rounds
cost little else, that is the largest cost of a round, and in the reference engine a real
share of a search. `RoundPruner` keeps each step's completed values sorted (`_StepValues`; a
completed trial never changes, so each joins once) and reads the percentile off them with
numpy's own interpolation, written out (`_percentile_of_sorted`, tested equal to Optuna's helper
bit for bit); otherwise it takes Optuna's own steps, in Optuna's order: the same decisions. It
reads a trial as a `Curve` (its last step, best value and previous step), which both engines
keep for their trials as they train (`Curve.extended`). Any other pruner (successive halving,
Hyperband, patient, a user's subclass) decides through its own `prune`, as
`trial.should_prune()` would.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import optuna
from optuna.pruners import MedianPruner, NopPruner, PercentilePruner
from optuna.pruners._percentile import _get_best_intermediate_result_over_steps
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import PrunerConfig, StudyConfig

# Pruners that prune nothing until `startup_trials` trials completed.
PRUNERS_WITH_STARTUP = ("median", "percentile", "patient", "paired")


def build_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    median = optuna.pruners.MedianPruner(
        n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
    )
    pruners: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "median": lambda: median,
        "percentile": lambda: optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        ),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_epochs, reduction_factor=p.reduction_factor
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=p.min_epochs, max_resource=config.training.epochs,
            reduction_factor=p.reduction_factor,
        ),
        "patient": lambda: optuna.pruners.PatientPruner(median, patience=p.patience),
        "paired": optuna.pruners.NopPruner,  # the driver decides (PairedPruning)
        "none": optuna.pruners.NopPruner,
    }
    return pruners[p.kind]()


def startup_trials(pruner: PrunerConfig) -> int:
    """Complete trials before the study's pruner prunes anything (0: it may from the first)."""
    return pruner.startup_trials if pruner.kind in PRUNERS_WITH_STARTUP else 0


class Curve(NamedTuple):
    """What a percentile pruner reads of a trial's intermediate values."""

    step: int  # the last step reported
    best: float  # the best value over all steps (NaNs skipped; NaN if all are NaN)
    previous_step: int  # the largest reported step other than `step`, or -1

    @classmethod
    def of(cls, trial: FrozenTrial, direction: StudyDirection) -> Curve | None:
        """The curve of `trial`, as Optuna's helpers read it; None if it reported nothing."""
        step = trial.last_step
        if step is None:
            return None
        steps = trial.intermediate_values.keys()
        return cls(step, _get_best_intermediate_result_over_steps(trial, direction),
                   max((s for s in steps if s != step), default=-1))

    @classmethod
    def extended(cls, curve: Curve | None, step: int, value: float,
                 direction: StudyDirection) -> Curve:
        """`curve` (None: nothing reported yet) after `value` is reported at `step`: how
        both engines keep a trial's curve as it trains, epoch after epoch (finite values: a
        non-finite loss ends a trial as diverged before it is reported)."""
        if curve is None:
            return cls(step, value, -1)
        better = max if direction == StudyDirection.MAXIMIZE else min
        return cls(step, better(curve.best, value), curve.step)


class RoundPruner:
    """A study's pruner, deciding a round of trials at once (see the module docstring)."""

    def __init__(self, study: optuna.Study):
        self.study = study
        self.pruner = study.pruner
        # A read of the storage, and a study's direction never changes: read once, not for
        # every decision (the reference engine decides every epoch).
        self.direction = study.direction
        # Exactly these classes: a subclass may decide otherwise.
        self.remembers = type(self.pruner) in (MedianPruner, PercentilePruner)
        self.prunes = type(self.pruner) is not NopPruner  # NopPruner: never, no reads
        if self.remembers:
            # Optuna's _get_percentile_intermediate_result_over_trials: the top percentile
            # when maximizing.
            percent = self.pruner._percentile
            self._completed = _StepValues(
                100 - percent if self.direction == StudyDirection.MAXIMIZE else percent,
                self.pruner._n_min_trials)

    def decide(self, trials: list[FrozenTrial]) -> list[bool]:
        """Whether to prune each of `trials` (their latest state), all judged on the study
        as it is now."""
        if not self.prunes:
            return [False] * len(trials)
        if not self.remembers:
            return [self.pruner.prune(self.study, trial) for trial in trials]
        return self.decide_curves([Curve.of(trial, self.direction) for trial in trials])

    def decide_curves(self, curves: list[Curve | None]) -> list[bool]:
        """`decide` for a median or percentile pruner (`remembers`), from what it reads of
        each trial: a cohort keeps its members' curves as they train, where a FrozenTrial
        would be a copy of every value so far, per member and epoch."""
        completed = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self._completed.update(completed)
        pruner: PercentilePruner = self.pruner  # type: ignore[assignment]
        if not completed or len(completed) < pruner._n_startup_trials:
            return [False] * len(curves)
        warmup, interval = pruner._n_warmup_steps, pruner._interval_steps
        maximize = self.direction == StudyDirection.MAXIMIZE
        percentile_at = self._completed.percentile
        decisions = []
        # PercentilePruner.prune for each curve, step by step (in one loop: it runs for every
        # member of every round).
        for curve in curves:
            if curve is None or curve.step < warmup:
                decisions.append(False)
                continue
            step = curve.step
            # _is_first_in_interval_step, from the previous step instead of all of them.
            nearest_lower_pruning_step = (step - warmup) // interval * interval + warmup
            if curve.previous_step >= nearest_lower_pruning_step:
                decisions.append(False)
                continue
            if math.isnan(curve.best):
                decisions.append(True)
                continue
            percentile = percentile_at(step)
            decisions.append(not math.isnan(percentile) and (
                curve.best < percentile if maximize else curve.best > percentile))
        return decisions


class _StepValues:
    """The completed trials' intermediate values, step by step, sorted: what a percentile
    pruner reads, kept up to date as trials complete."""

    def __init__(self, percent: float, n_min_trials: int) -> None:
        self.percent = percent  # the direction applied: the top one when maximizing
        self.n_min_trials = n_min_trials
        self._seen: set[int] = set()  # the trial ids whose values are in
        self._sorted: dict[int, list[float]] = {}  # step -> its values, NaNs left out
        self._counts: dict[int, int] = {}  # step -> its values, NaNs counted

    def update(self, completed: list[FrozenTrial]) -> None:
        """Take in the completed trials not in yet (`completed`: all of them, in any order;
        trials only ever join this list, and a completed trial never changes)."""
        if len(completed) == len(self._seen):
            return
        for trial in completed:
            if trial._trial_id in self._seen:
                continue
            self._seen.add(trial._trial_id)
            for step, value in trial.intermediate_values.items():
                self._counts[step] = self._counts.get(step, 0) + 1
                if not math.isnan(value):
                    bisect.insort(self._sorted.setdefault(step, []), value)

    def percentile(self, step: int) -> float:
        """Optuna's `_get_percentile_intermediate_result_over_trials` at `step` for these
        trials."""
        if self._counts.get(step, 0) < self.n_min_trials:
            return math.nan
        return _percentile_of_sorted(self._sorted.get(step, []), self.percent)


def _percentile_of_sorted(values: list[float], percent: float) -> float:
    """`numpy.nanpercentile(values, percent)` of sorted, NaN-free `values` (NaN if there are
    none), as numpy's default method computes it, operation by operation: the virtual index
    (n - 1) * q between two neighbours, and its lerp from the nearer end."""
    n = len(values)
    if n == 0:
        return math.nan  # nanpercentile of an all-NaN slice
    index = (n - 1) * (percent / 100)
    if index >= n - 1:
        return values[-1]
    if index < 0:
        return values[0]
    below = math.floor(index)
    gamma = index - below
    low, high = values[below], values[below + 1]
    difference = high - low
    if gamma >= 0.5:
        return high - difference * (1 - gamma)
    return low + difference * gamma



class PairedPruning:
    """The paired pruner: a trial whose runs are worse, run by run, than the incumbent's same
    runs at the same epoch is pruned. Every trial of a study trains the same (fold, seed) runs,
    so a trial and the incumbent (the best trial this process completed) are compared pair by
    pair, as Optuna's `WilcoxonPruner` compares instances: from `warmup` epochs on, the
    one-sided signed-rank test of the differences (does the trial lose?) with p below
    `p_threshold` prunes. A pair-wise test sees a trial that is a little worse on every fold
    and seed, which a percentile of means blurs with the folds' own differences.

    The p is exact (every sign flip of the ranks) up to `EXACT_UP_TO` differing pairs, the
    normal approximation beyond. Each process keeps its own incumbent: workers, and a resumed
    search until its first trial completes, judge against what they have seen."""

    EXACT_UP_TO = 14

    def __init__(self, warmup: int, p_threshold: float) -> None:
        self.warmup = warmup
        self.p_threshold = p_threshold
        # The incumbent: its value and each run's validation loss, epoch by epoch.
        self.incumbent: tuple[float, list[list[float]]] | None = None
        self._flips: dict[int, np.ndarray] = {}  # pairs -> every sign pattern, a row each

    def completed(self, value: float, run_curves: list[list[float]]) -> None:
        """A trial completed with `value` (the mean of its runs' final losses)."""
        if self.incumbent is None or value < self.incumbent[0]:
            self.incumbent = (value, run_curves)

    def prunes(self, epoch: int, run_losses: Sequence[float]) -> bool:
        """Whether a trial whose runs reached `run_losses` at `epoch` is pruned."""
        if self.incumbent is None or epoch < self.warmup:
            return False
        best = np.array([curve[epoch - 1] for curve in self.incumbent[1]])
        return self.p_worse(np.asarray(run_losses) - best) < self.p_threshold

    def p_worse(self, differences: np.ndarray) -> float:
        """One-sided signed-rank p that the trial's losses are higher (zeros dropped)."""
        d = differences[differences != 0]
        if len(d) == 0:
            return 1.0
        ranks = _average_ranks(np.abs(d))
        observed = float(ranks[d > 0].sum() - ranks[d < 0].sum())
        if len(d) > self.EXACT_UP_TO:
            return 0.5 * math.erfc(observed / math.sqrt(2 * float((ranks ** 2).sum())))
        flips = self._flips.get(len(d))
        if flips is None:
            grid = np.indices((2,) * len(d)).reshape(len(d), -1).T
            flips = self._flips[len(d)] = 2.0 * grid - 1
        # A tolerance for float sums of half-integer ranks.
        return float(np.mean(flips @ ranks >= observed - 1e-9))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average (as scipy's `rankdata`)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]
