"""The study's pruner, deciding for all members of a cohort's round.

Optuna's `PercentilePruner` (and `MedianPruner`, its 50th percentile) computes the percentile
of the completed trials' values at a trial's step afresh for every member and every epoch:
after the cohort engine's other savings it was the largest cost of a round. Those values only
change when a trial completes, so `RoundPruner` keeps each step's percentile until the number
of completed trials changes (a completed trial never changes again) and otherwise takes
Optuna's own steps, in Optuna's order, with Optuna's helpers: the same decisions. Any other
pruner (successive halving, Hyperband, patient, a user's subclass) decides through its own
`prune`, as `trial.should_prune()` would.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import MedianPruner, PercentilePruner
from optuna.pruners._percentile import (
    _get_best_intermediate_result_over_steps,
    _get_percentile_intermediate_result_over_trials,
    _is_first_in_interval_step,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class RoundPruner:
    def __init__(self, pruner: optuna.pruners.BasePruner):
        self.pruner = pruner
        # Exactly these classes: a subclass may decide otherwise.
        self.remembers = type(pruner) in (MedianPruner, PercentilePruner)
        self._percentiles: dict[int, float] = {}  # step -> percentile over completed trials
        self._completed = -1  # how many completed trials _percentiles was computed from

    def decide(self, study: optuna.Study, trials: list[FrozenTrial]) -> list[bool]:
        """Whether to prune each of `trials` (their latest state), all judged on the study
        as it is now."""
        if not self.remembers:
            return [self.pruner.prune(study, trial) for trial in trials]
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) != self._completed:
            self._percentiles.clear()
            self._completed = len(completed)
        return [self._prune(study, trial, completed) for trial in trials]

    def _prune(self, study: optuna.Study, trial: FrozenTrial,
               completed: list[FrozenTrial]) -> bool:
        """PercentilePruner.prune, step by step."""
        pruner: PercentilePruner = self.pruner  # type: ignore[assignment]
        if not completed or len(completed) < pruner._n_startup_trials:
            return False
        step = trial.last_step
        if step is None or step < pruner._n_warmup_steps:
            return False
        if not _is_first_in_interval_step(step, trial.intermediate_values.keys(),
                                          pruner._n_warmup_steps, pruner._interval_steps):
            return False
        direction = study.direction
        best = _get_best_intermediate_result_over_steps(trial, direction)
        if math.isnan(best):
            return True
        percentile = self._percentiles.get(step)
        if percentile is None:
            percentile = self._percentiles[step] = _get_percentile_intermediate_result_over_trials(
                completed, direction, step, pruner._percentile, pruner._n_min_trials)
        if math.isnan(percentile):
            return False
        if direction == StudyDirection.MAXIMIZE:
            return best < percentile
        return best > percentile
