"""The one training loop every trial and `hpsearch train` share. It knows nothing about Optuna:
the objective watches it through `on_epoch_end`, which may ask it to stop.

Per epoch: train (scheduler steps per batch where the schedule says so), validate, step the
scheduler (on the validation loss for ReduceLROnPlateau), report. A non-finite loss ends the run
as "diverged".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from hpsearch.config import StudyConfig
from hpsearch.data import CLASSIFICATION, Dataset, Split
from hpsearch.models import build_model
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.params import Value
from hpsearch.schedulers import Schedule, build_schedule

COMPLETED, STOPPED, DIVERGED = "completed", "stopped", "diverged"


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    lr: float  # the learning rate the epoch started with
    train_loss: float  # mean over the epoch's batches
    val_loss: float
    val_accuracy: float | None  # classification only


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    end_reason: str = COMPLETED
    detail: str = ""

    @property
    def last(self) -> EpochStats | None:
        return self.history[-1] if self.history else None


# Returns True to stop training after this epoch.
EpochCallback = Callable[[EpochStats], bool]


def batches(split: Split, batch_size: int, generator: torch.Generator):
    """The epoch's (features, target) batches: the whole split, or a seeded shuffle."""
    n = len(split)
    if batch_size <= 0 or batch_size >= n:
        yield split.features, split.target
        return
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.features[idx], split.target[idx]


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, loss_fn: nn.Module,
    split: Split, batch_size: int, generator: torch.Generator,
) -> torch.Tensor:
    """One pass over the training split; returns the mean batch loss as a tensor (no sync)."""
    model.train()
    total = torch.zeros(())
    count = 0
    for features, target in batches(split, batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(features), target)
        loss.backward()
        optimizer.step()
        schedule.after_batch()
        total = total + loss.detach()
        count += 1
    return total / count


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, loss_fn: nn.Module, classify: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss (and accuracy, for classification) on a whole split, as tensors."""
    model.eval()
    output = model(split.features)
    loss = loss_fn(output, split.target)
    if not classify:
        return loss, None
    return loss, (output.argmax(dim=1) == split.target).float().mean()


def fit(
    model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, loss_fn: nn.Module,
    data: Dataset, epochs: int, batch_size: int, generator: torch.Generator,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    classify = data.task == CLASSIFICATION
    result = FitResult()
    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(
            model, optimizer, schedule, loss_fn, data.train, batch_size, generator
        )
        val_loss, val_accuracy = evaluate(model, data.valid, loss_fn, classify)
        # One host sync per epoch for everything the epoch reports.
        values = torch.stack(
            [train_loss, val_loss, val_accuracy if classify else val_loss]
        ).tolist()
        if not (math.isfinite(values[0]) and math.isfinite(values[1])):
            result.end_reason = DIVERGED
            which = "training" if not math.isfinite(values[0]) else "validation"
            result.detail = f"{which} loss became {values[0 if which == 'training' else 1]} " \
                            f"at epoch {epoch} (lr {lr:.3g})"
            return result
        stats = EpochStats(epoch, lr, values[0], values[1], values[2] if classify else None)
        result.history.append(stats)
        schedule.after_epoch(stats.val_loss)
        if on_epoch_end is not None and on_epoch_end(stats):
            result.end_reason = STOPPED
            return result
    return result


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == CLASSIFICATION else nn.MSELoss()


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return 1 if batch_size <= 0 or batch_size >= n_rows else math.ceil(n_rows / batch_size)


@dataclass
class TrainedRun:
    """A finished run with what built it, for callers that inspect the model afterwards."""

    result: FitResult
    model: nn.Module


def train_configuration(
    config: StudyConfig, data: Dataset, params: Mapping[str, Value], seed: int,
    on_epoch_end: EpochCallback | None = None,
) -> TrainedRun:
    """Build the model, optimizer and schedule for one configuration and train it.

    `seed` fixes the initial weights and the batch order, so the same (params, seed) trains
    the same run again.
    """
    torch.manual_seed(seed)
    model = build_model(config.model.kind, data.n_features, data.n_outputs, config.model.options)
    weight_decay = float(params.get("weight_decay", 0.0)) if params.get(
        "use_weight_decay", True) else 0.0
    optimizer = OPTIMIZERS[str(params["optimizer"])].build(
        model.parameters(), float(params["lr"]), weight_decay, params
    )
    batch_size = config.training.batch_size
    schedule = build_schedule(
        str(params["scheduler"]), optimizer, params, config.training.epochs,
        steps_per_epoch(len(data.train), batch_size),
    )
    generator = torch.Generator().manual_seed(seed)
    result = fit(
        model, optimizer, schedule, loss_function(data.task), data, config.training.epochs,
        batch_size, generator, on_epoch_end,
    )
    return TrainedRun(result, model)


def train_single(
    config: StudyConfig, given: Mapping[str, str], seed: int | None = None,
) -> tuple[dict[str, Value], TrainedRun]:
    """Train one configuration of `config`'s space: the given values, the study's fixed
    values, and defaults for the rest (`hpsearch train --set name=value`)."""
    params = config.space.complete(given)
    run = train_configuration(config, config.load_data(), params,
                              config.seed if seed is None else seed)
    return params, run
