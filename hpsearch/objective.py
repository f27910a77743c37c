"""The Optuna objective: trial -> parameters -> the shared training loop -> validation loss.

It reports the validation loss every epoch (the dashboard's curves, and what the pruner
judges), stops a trial the pruner condemns, and records what a person later wants to know
about the trial as user attrs. A diverged trial (non-finite loss) ends as PRUNED with
`end_reason = "diverged"`: it can never become the best trial, the sampler still learns that its
region is bad (a FAIL would be ignored by TPE), and the study goes on.
"""

from __future__ import annotations

import optuna

from hpsearch.config import StudyConfig
from hpsearch.data import Dataset
from hpsearch.training import COMPLETED, DIVERGED, EpochStats, FitResult, train_configuration

PRUNED = "pruned"

# User attrs of a trial (names are part of the stored format; reports read them).
ATTR_SEED = "seed"
ATTR_LR_CURVE = "lr_curve"
ATTR_TRAIN_LOSS = "train_loss"
ATTR_VAL_ACCURACY = "val_accuracy"
ATTR_EPOCHS_RUN = "epochs_run"
ATTR_END_REASON = "end_reason"  # completed | pruned | diverged
ATTR_END_DETAIL = "end_detail"


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Every trial trains from its own seed, fixed by the study's seed and its number."""
    return study_seed + trial_number


class Objective:
    """Callable objective for `study.optimize`."""

    def __init__(self, config: StudyConfig, data: Dataset):
        self.config = config
        self.data = data

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.config.space.suggest(trial)
        seed = trial_seed(self.config.seed, trial.number)

        def report_and_judge(stats: EpochStats) -> bool:
            trial.report(stats.val_loss, stats.epoch)
            return trial.should_prune()

        run = train_configuration(self.config, self.data, params, seed, report_and_judge)
        result = run.result
        reason = {COMPLETED: COMPLETED, DIVERGED: DIVERGED}.get(result.end_reason, PRUNED)
        if reason == PRUNED:
            result.detail = f"pruned by the {self.config.pruner.kind} pruner at epoch " \
                            f"{result.last.epoch}"
        record_trial(trial, result, seed, reason)
        if reason != COMPLETED:
            raise optuna.TrialPruned(result.detail)
        return result.last.val_loss


def record_trial(trial: optuna.Trial, result: FitResult, seed: int, reason: str) -> None:
    """Store the trial's story as user attrs (a handful of writes, once per trial)."""
    last = result.last
    trial.set_user_attr(ATTR_SEED, seed)
    trial.set_user_attr(ATTR_LR_CURVE, [stats.lr for stats in result.history])
    trial.set_user_attr(ATTR_EPOCHS_RUN, len(result.history))
    trial.set_user_attr(ATTR_END_REASON, reason)
    if result.detail:
        trial.set_user_attr(ATTR_END_DETAIL, result.detail)
    if last is not None:
        trial.set_user_attr(ATTR_TRAIN_LOSS, last.train_loss)
        if last.val_accuracy is not None:
            trial.set_user_attr(ATTR_VAL_ACCURACY, last.val_accuracy)
