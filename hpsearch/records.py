"""What a study and its trials record: the stored names (user and system attrs), how a trial
ended, the best-trial rule, and trial counts by how they ended.

These names are the stored format: the search driver writes them; reports, the dashboard note,
`confirm` and `hpsearch train --trial` read them. Renaming one makes older studies unreadable.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:  # config imports the registries (torch); the stored names need neither
    from hpsearch.config import EvaluationConfig

# -- study user attrs: enough for a report on another machine to know what was run -----------
ATTR_CONFIG = "hpsearch_config"
ATTR_FINGERPRINT = "hpsearch_data_fingerprint"
ATTR_VERSION = "hpsearch_version"

# Study user attrs of a confirmation (`hpsearch confirm`): the confirmation names its parent;
# the parent names its confirmation (so that the dashboard leads from one to the other); how
# many runners-up the last command compared (so that `hpsearch report` repeats its analysis).
ATTR_CONFIRM_OF = "hpsearch_confirm_of"
ATTR_CONFIRM_STUDY = "hpsearch_confirm_study"
ATTR_RUNNER_UPS = "hpsearch_confirm_runner_ups"

# -- trial user attrs -------------------------------------------------------------------------
ATTR_SEED = "seed"
ATTR_LR_CURVE = "lr_curve"
ATTR_TRAIN_LOSS = "train_loss"
ATTR_VAL_ACCURACY = "val_accuracy"
ATTR_VAL_RMSE = "val_rmse"  # regression: the validation loss as an RMSE in the target's units
ATTR_EPOCHS_RUN = "epochs_run"
ATTR_END_REASON = "end_reason"  # one of END_REASONS
ATTR_END_DETAIL = "end_detail"
ATTR_DEVICE = "device"  # cpu | cuda | mps: where the trial trained
ATTR_ENGINE = "engine"  # reference | cohort: what trained it
# A trial of several runs (`[evaluation]` folds x seeds): each run's final validation loss and
# accuracy, in the order of `evaluation_runs`, and the spread of the losses. Its value, its
# intermediate values and `val_accuracy` are the means over the runs.
ATTR_RUN_VAL_LOSS = "run_val_loss"
ATTR_RUN_VAL_ACCURACY = "run_val_accuracy"
ATTR_VAL_LOSS_STD = "val_loss_std"
ATTR_VAL_LOSS_SEM = "val_loss_sem"  # the standard error of the mean
ATTR_FOLD = "fold"  # a confirmation run's fold (0 without folds)

# A confirmation run's own: which configuration (a hash of its parameters), found by which
# trial of the search with which value, which of the confirmation's seeds, and its loss and
# accuracy on the held-out test split.
ATTR_CONFIG_ID = "config_id"
ATTR_SOURCE_TRIAL = "source_trial"
ATTR_SEARCH_VALUE = "search_value"
ATTR_SEED_INDEX = "seed_index"
ATTR_TEST_LOSS = "test_loss"
ATTR_TEST_ACCURACY = "test_accuracy"

# Trial system attr: which process ran the trial ("host:pid"), to tell whose trial went stale.
ATTR_WORKER = "hpsearch_worker"

# -- how a trial ended (its end_reason) -------------------------------------------------------
# A diverged trial (non-finite loss) is stored as PRUNED with end_reason "diverged": it can
# never become the best trial, the sampler still learns that its region is bad (TPE ignores a
# FAIL), and the study goes on.
COMPLETED = "completed"
PRUNED = "pruned"
DIVERGED = "diverged"
FAILED = "failed"  # an error, an interruption, a dead worker; stored as FAIL
END_REASONS = (COMPLETED, PRUNED, DIVERGED, FAILED)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A trial of one run trains from its own seed, fixed by the study's seed and its
    number."""
    return study_seed + trial_number


@dataclass(frozen=True)
class Run:
    """One of a trial's training runs: which fold it trains and validates on, which seed."""

    fold: int
    seed_index: int


def evaluation_runs(evaluation: EvaluationConfig) -> list[Run]:
    """The runs of every trial of a study (`config.EvaluationConfig`): each fold's seeds."""
    return [Run(fold, seed) for fold in range(evaluation.folds)
            for seed in range(evaluation.seeds)]


def run_seed(study_seed: int, trial_number: int, run: Run, runs: int) -> int:
    """The seed of `run` of trial `trial_number`. A trial of one run: its own seed (so that
    such a study searches as it always has). Several runs: the same seeds for every trial of
    the study (common random numbers: any two trials are compared run by run, on the same
    initial weights and batch orders)."""
    if runs == 1:
        return trial_seed(study_seed, trial_number)
    return study_seed + run.seed_index


# Each run's accuracy is shown, never tested (the paired statistics compare the runs'
# losses, which are kept whole: rounded, two close losses could tie and turn a win into a
# draw). A fraction of the validation rows, computed in float32 by default: 7 significant
# digits keep every such fraction of up to a million rows apart, in half the characters.
RUN_ACCURACY_DIGITS = 7


def run_user_attrs(histories: Sequence[Sequence[Any]], epochs: int) -> dict[str, Any]:
    """The per-run records of a trial of several runs at its last reported epoch `epochs`
    (each run's `training.EpochStats`), and the spread of their validation losses; nothing
    for a trial that reported no epoch."""
    if epochs == 0:
        return {}
    last = [history[epochs - 1] for history in histories]
    losses = [stats.val_loss for stats in last]
    spread = statistics.stdev(losses)
    attrs: dict[str, Any] = {
        ATTR_RUN_VAL_LOSS: losses,
        ATTR_VAL_LOSS_STD: spread,
        ATTR_VAL_LOSS_SEM: spread / math.sqrt(len(losses)),
    }
    if last[0].val_accuracy is not None:
        attrs[ATTR_RUN_VAL_ACCURACY] = _significant(
            (stats.val_accuracy for stats in last), RUN_ACCURACY_DIGITS)
    return attrs


def pruned_detail(pruner_kind: str, epoch: int) -> str:
    return f"pruned by the {pruner_kind} pruner at epoch {epoch}"


# Why a trial failed that no error of its own ended (its end_detail).
INTERRUPTED_DETAIL = "interrupted (Ctrl-C or SIGTERM) while it trained"


def stale_detail(grace_s: float) -> str:
    return (f"no heartbeat for {grace_s:g} s: its worker died or lost the database; "
            "queued again")


def best_of(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The best complete trial: the lowest value, the earliest of equal ones."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return min(complete, key=best_order) if complete else None


def best_order(trial: FrozenTrial) -> tuple[float, int]:
    """The sort key of complete trials, best first."""
    return trial.value, trial.number


# The stored lr curve is read, never trained from (`hpsearch train` prints the lrs it trains
# with): 4 significant digits draw it as exactly as a plot can show, and keep it to about a
# third of the characters of full floats, in a record that optuna-dashboard loads for every
# trial of a study. Most 100-epoch curves then fit the 1,024 characters that the dashboard
# shows of an attr.
LR_CURVE_DIGITS = 4


def stored_lrs(lrs: Iterable[float]) -> list[float]:
    """A trial's lr per epoch as its `lr_curve` stores it."""
    return _significant(lrs, LR_CURVE_DIGITS)


def _significant(values: Iterable[float], digits: int) -> list[float]:
    return [float(f"{value:.{digits}g}") for value in values]


def ended_user_attrs(history: Sequence[Any], seed: int, reason: str, detail: str = "",
                     device: str | None = None, engine: str | None = None) -> dict[str, Any]:
    """The user attrs of a trial that ended: its story. `history` holds the epochs it
    trained (`training.EpochStats`)."""
    attrs: dict[str, Any] = {
        ATTR_SEED: seed,
        ATTR_LR_CURVE: stored_lrs(stats.lr for stats in history),
        ATTR_EPOCHS_RUN: len(history),
        ATTR_END_REASON: reason,
    }
    if device is not None:
        attrs[ATTR_DEVICE] = device
    if engine is not None:
        attrs[ATTR_ENGINE] = engine
    if detail:
        attrs[ATTR_END_DETAIL] = detail
    if history:
        last = history[-1]
        attrs[ATTR_TRAIN_LOSS] = last.train_loss
        if last.val_accuracy is not None:
            attrs[ATTR_VAL_ACCURACY] = last.val_accuracy
    return attrs


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0  # by the pruner
    diverged: int = 0  # non-finite loss (stored as PRUNED with end_reason "diverged")
    failed: int = 0
    running: int = 0
    waiting: int = 0  # queued: a grid's configurations, retries of a dead worker's trials

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    @property
    def total(self) -> int:
        return self.finished + self.failed + self.running + self.waiting


def count_trials(trials: Iterable[FrozenTrial]) -> TrialCounts:
    counts = dict.fromkeys(("complete", "pruned", "diverged", "failed", "running", "waiting"), 0)
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            key = "diverged" if trial.user_attrs.get(ATTR_END_REASON) == DIVERGED else "pruned"
            counts[key] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed"] += 1
        elif trial.state == TrialState.WAITING:
            counts["waiting"] += 1
        else:
            counts["running"] += 1
    return TrialCounts(**counts)
