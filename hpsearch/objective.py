"""The Optuna objective: trial -> parameters -> the shared training loop -> validation loss.

It reports the validation loss every epoch (the dashboard's curves, and what the pruner
judges: the median and percentile pruners through `pruning.RoundPruner`, the same decisions as
`trial.should_prune()` at a fraction of the cost), stops a trial the pruner condemns, and
records what a person later wants to know about the trial as user attrs. A diverged trial
(non-finite loss) ends as PRUNED with `end_reason = "diverged"`: it can never become the best
trial, the sampler still learns that its region is bad (a FAIL would be ignored by TPE), and
the study goes on.
"""

from __future__ import annotations

from typing import Any

import optuna
import torch

from hpsearch.config import StudyConfig
from hpsearch.data import Dataset
from hpsearch.search.pruning import Curve, RoundPruner
from hpsearch.search.workers import Interruptions
from hpsearch.storage.write_behind import flush_trial
from hpsearch.training import (
    COMPLETED,
    DIVERGED,
    EpochStats,
    FitResult,
    check_model,
    resolve_device,
    train_configuration,
)

PRUNED = "pruned"

# User attrs of a trial (names are part of the stored format; reports read them).
ATTR_SEED = "seed"
ATTR_LR_CURVE = "lr_curve"
ATTR_TRAIN_LOSS = "train_loss"
ATTR_VAL_ACCURACY = "val_accuracy"
ATTR_EPOCHS_RUN = "epochs_run"
ATTR_END_REASON = "end_reason"  # completed | pruned | diverged
ATTR_END_DETAIL = "end_detail"
ATTR_DEVICE = "device"  # cpu | cuda | mps: where the trial trained


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Every trial trains from its own seed, fixed by the study's seed and its number."""
    return study_seed + trial_number


class Objective:
    """Callable objective for `study.optimize`, training every trial on `device`.

    Building it checks the study's model once (see `check_model`) and moves the data to the
    device once for all its trials.

    With `interruptions` (a search's Ctrl-C handling), a signal stops a trial's training at
    once but never cuts its storage calls short: the trial then ends FAILED, as it should.
    Without, Ctrl-C raises wherever it lands, as in any Python program."""

    def __init__(self, config: StudyConfig, data: Dataset,
                 device: str | torch.device = "cpu",
                 interruptions: Interruptions | None = None):
        self.config = config
        self.device = resolve_device(device)
        check_model(config, data)
        self.data = data.to(self.device)
        self._pruner: RoundPruner | None = None
        self.interruptions = interruptions or Interruptions()

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.config.space.suggest(trial)
        # The configuration reaches the database before training: if this worker dies, the
        # retry of its trial runs the same configuration.
        flush_trial(trial)
        seed = trial_seed(self.config.seed, trial.number)
        study = trial.study
        if self._pruner is None or self._pruner.study is not study:
            self._pruner = RoundPruner(study)  # its percentiles outlive a trial
        pruner = self._pruner
        curve: Curve | None = None

        def report_and_judge(stats: EpochStats) -> bool:
            nonlocal curve
            with self.interruptions.shielded():
                trial.report(stats.val_loss, stats.epoch)
                if not pruner.remembers:
                    return trial.should_prune()
                curve = Curve.extended(curve, stats.epoch, stats.val_loss, pruner.direction)
                return pruner.decide_curves([curve])[0]

        with self.interruptions.interruptible():
            run = train_configuration(self.config, self.data, params, seed, report_and_judge,
                                      device=self.device)
        result = run.result
        reason = {COMPLETED: COMPLETED, DIVERGED: DIVERGED}.get(result.end_reason, PRUNED)
        if reason == PRUNED:
            result.detail = f"pruned by the {self.config.pruner.kind} pruner at epoch " \
                            f"{result.last.epoch}"
        for key, value in trial_user_attrs(result, seed, reason, self.device.type).items():
            trial.set_user_attr(key, value)
        if reason != COMPLETED:
            raise optuna.TrialPruned(result.detail)
        return result.last.val_loss


def trial_user_attrs(
    result: FitResult, seed: int, reason: str, device: str | None = None
) -> dict[str, Any]:
    """The trial's story, stored as user attrs."""
    last = result.last
    attrs: dict[str, Any] = {
        ATTR_SEED: seed,
        ATTR_LR_CURVE: [stats.lr for stats in result.history],
        ATTR_EPOCHS_RUN: len(result.history),
        ATTR_END_REASON: reason,
    }
    if device is not None:
        attrs[ATTR_DEVICE] = device
    if result.detail:
        attrs[ATTR_END_DETAIL] = result.detail
    if last is not None:
        attrs[ATTR_TRAIN_LOSS] = last.train_loss
        if last.val_accuracy is not None:
            attrs[ATTR_VAL_ACCURACY] = last.val_accuracy
    return attrs
