"""The one training loop every trial and `hpsearch train` share. It knows nothing about Optuna:
the reference engine steps it an epoch at a time (`EpochRunner.next_epoch`); `hpsearch train`
runs it to the end, watching it through `on_epoch_end`, which may ask it to stop.

Per epoch: train (scheduler steps per batch where the schedule says so; gradients clipped
where the trial says so), validate, step the scheduler (on the validation loss for
ReduceLROnPlateau), report. A non-finite loss ends the run as "diverged".

A run trains on one device (`cpu`, `cuda`, `mps`, or `auto`: the accelerator if there is one);
the data moves there once (per objective, so once per search process) and the model once per
run; the batch order is drawn on the CPU, so a seed gives the same batches on every device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hpsearch.config import StudyConfig
from hpsearch.data import CLASSIFICATION, Dataset, Preprocessing, Split
from hpsearch.errors import ConfigError
from hpsearch.models import build_model, head_and_body
from hpsearch.optimizers import OPTIMIZERS, weight_decay_of
from hpsearch.params import Value
from hpsearch.records import COMPLETED, DIVERGED
from hpsearch.schedulers import Schedule, build_schedule
from hpsearch.space import CLIP_GRAD_NORM, HEAD_LR_MULT, USE_CLIP_GRAD_NORM

if TYPE_CHECKING:
    import pandas as pd

STOPPED = "stopped"  # on_epoch_end asked the run to stop

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA if there is a GPU, else Apple's MPS, else the CPU; a named accelerator
    that this machine lacks is an error, not a silent fallback."""
    if isinstance(name, torch.device):
        name = name.type
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda" and not cuda:
        raise ConfigError(f"device 'cuda' is not available here (torch {torch.__version__} "
                          "sees no CUDA GPU); use cpu or auto")
    if name == "mps" and not mps:
        raise ConfigError("device 'mps' is not available here (Apple silicon only); use cpu "
                          "or auto")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


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


def batches(
    split: Split, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's (features, target) batches: the whole split, or a seeded shuffle."""
    n = len(split)
    if batch_size <= 0 or batch_size >= n:
        yield split.features, split.target
        return
    # Drawn on the CPU (the same order on every device), moved once per epoch.
    order = torch.randperm(n, generator=generator).to(split.features.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.features[idx], split.target[idx]


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, loss_fn: nn.Module,
    split: Split, batch_size: int, generator: torch.Generator, clip_grad_norm: float = 0.0,
) -> torch.Tensor:
    """One pass over the training split; returns the mean batch loss as a tensor (no sync).
    `clip_grad_norm > 0` clips the gradients' total norm before each step (seed 001 §4.6)."""
    model.train()
    total = torch.zeros((), device=split.features.device)
    count = 0
    for features, target in batches(split, batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(features), target)
        loss.backward()
        if clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
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
    # In float64: a confident float32 cross-entropy rounds to exactly 0, and trials that all
    # score 0 can no longer be ranked against each other.
    wide = _float64(output)
    target = split.target.to(wide.device)
    loss = loss_fn(wide, target if classify else target.double())
    if not classify:
        return loss, None
    return loss, (output.argmax(dim=1) == split.target).float().mean()


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float64, which MPS lacks: there it is computed on the CPU."""
    return tensor.cpu().double() if tensor.device.type == "mps" else tensor.double()


@dataclass
class EpochRunner:
    """One run's training, an epoch per `next_epoch()`: `run()` trains it to the end (what
    `hpsearch train` does); an engine steps it epoch by epoch instead (so that it can report,
    prune or interleave runs in between)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loss_fn: nn.Module
    data: Dataset
    epochs: int
    batch_size: int
    generator: torch.Generator
    clip_grad_norm: float = 0.0
    result: FitResult = field(default_factory=FitResult)

    @property
    def classify(self) -> bool:
        return self.data.task == CLASSIFICATION

    @property
    def done(self) -> bool:
        return self.result.end_reason != COMPLETED or len(self.result.history) >= self.epochs

    def run(self, on_epoch_end: EpochCallback | None = None) -> FitResult:
        """Train the remaining epochs; `on_epoch_end(stats)` may stop the run early."""
        while not self.done:
            stats = self.next_epoch()
            if stats is not None and on_epoch_end is not None and on_epoch_end(stats):
                self.result.end_reason = STOPPED
        return self.result

    def next_epoch(self) -> EpochStats | None:
        """Train and validate one more epoch; its stats, or None if the run diverged (then
        `result` says how)."""
        epoch = len(self.result.history) + 1
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(
            self.model, self.optimizer, self.schedule, self.loss_fn, self.data.train,
            self.batch_size, self.generator, self.clip_grad_norm,
        )
        val_loss, val_accuracy = evaluate(self.model, self.data.valid, self.loss_fn,
                                          self.classify)
        # One host sync per epoch for everything the epoch reports.
        values = torch.stack(
            [_float64(train_loss), val_loss,
             _float64(val_accuracy) if self.classify else val_loss]
        ).tolist()
        diverged = divergence(values[0], values[1], epoch, lr)
        if diverged:
            self.result.end_reason = DIVERGED
            self.result.detail = diverged
            return None
        stats = EpochStats(epoch, lr, values[0], values[1], values[2] if self.classify else None)
        self.result.history.append(stats)
        self.schedule.after_epoch(stats.val_loss)
        return stats


def divergence(train_loss: float, val_loss: float, epoch: int, lr: float) -> str:
    """Why an epoch with these losses diverged ("" if both are finite)."""
    if math.isfinite(train_loss) and math.isfinite(val_loss):
        return ""
    which, value = ("training", train_loss) if not math.isfinite(train_loss) else \
        ("validation", val_loss)
    return f"{which} loss became {value} at epoch {epoch} (lr {lr:.3g})"


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == CLASSIFICATION else nn.MSELoss()


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return 1 if batch_size <= 0 or batch_size >= n_rows else math.ceil(n_rows / batch_size)


@dataclass
class TrainedRun:
    """A finished run with what built it: its history and model, and everything needed to
    use the model on new rows (`predict`) or to keep it in a model file (`save`;
    `hpsearch.model_file` says what the file holds)."""

    result: FitResult
    model: nn.Module
    config: StudyConfig
    params: dict[str, Value]
    seed: int
    preprocessing: Preprocessing  # fit on the rows it trained on
    train_rows: int
    refit: bool = False  # trained on the training and validation rows together
    trial: int | None = None  # the stored trial it trained again
    fold: int | None = None  # that trial's fold it trained on (None: one validation split)

    def predict(self, rows: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
        """Predictions for `rows` (a DataFrame, or a CSV/TSV/Parquet file): see
        `model_file.predict`."""
        from hpsearch.model_file import predict

        return predict(self, rows)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file `path` (`model_file.save_model`); returns its path."""
        from hpsearch.model_file import save_model

        return save_model(self, path)


def model_for(config: StudyConfig, shape: Dataset | Preprocessing,
              params: Mapping[str, Value]) -> nn.Module:
    """The study's model for one configuration (on the CPU), for data of `shape`'s numbers
    of features and outputs: fixed options from the study file, and the trial's values of
    the parameters a user's factory searches."""
    searched = {p.name: params[p.name] for p in config.space.model if p.name in params}
    return build_model(config.model.kind, shape.n_features, shape.n_outputs,
                       config.model.options, searched)


def build_optimizer(
    model: nn.Module, params: Mapping[str, Value], model_kind: str = "model"
) -> torch.optim.Optimizer:
    """The trial's optimizer over the model's parameters: one group, or with `head_lr_mult`
    two (the body at lr first, so the recorded lr curve is lr's; the head at lr x mult)."""
    lr = float(params["lr"])
    weight_decay = weight_decay_of(params)
    groups: Any = model.parameters()
    if HEAD_LR_MULT.name in params:
        head, body = head_and_body(model, model_kind)
        groups = [{"params": body},
                  {"params": head, "lr": lr * float(params[HEAD_LR_MULT.name])}]
    return OPTIMIZERS[str(params["optimizer"])].build(groups, lr, weight_decay, params)


def clip_norm(params: Mapping[str, Value]) -> float:
    """The trial's gradient-clipping norm (0: no clipping)."""
    if not params.get(USE_CLIP_GRAD_NORM.name, True):
        return 0.0
    return float(params.get(CLIP_GRAD_NORM.name, 0.0))


def start_run(
    config: StudyConfig, data: Dataset, params: Mapping[str, Value], seed: int,
    device: torch.device, generator: torch.Generator | None = None, epochs: int | None = None,
) -> EpochRunner:
    """Build the model, optimizer and schedule of one configuration on `device` (where `data`
    is), ready to train. `seed` fixes the initial weights and, unless `generator` is given,
    seeds the batch order. `epochs`: stop after these (default: the study's epochs, which
    are always the schedule's budget)."""
    torch.manual_seed(seed)
    model = model_for(config, data, params).to(device)
    optimizer = build_optimizer(model, params, config.model.kind)
    batch_size = int(params.get("batch_size", config.training.batch_size))
    schedule = build_schedule(
        str(params["scheduler"]), optimizer, params, config.training.epochs,
        steps_per_epoch(len(data.train), batch_size),
    )
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    return EpochRunner(model, optimizer, schedule, loss_function(data.task), data,
                       epochs or config.training.epochs, batch_size, generator,
                       clip_norm(params))


def train_configuration(
    config: StudyConfig, data: Dataset, params: Mapping[str, Value], seed: int,
    on_epoch_end: EpochCallback | None = None, device: str | torch.device = "cpu",
    epochs: int | None = None,
) -> TrainedRun:
    """Build the model, optimizer and schedule for one configuration and train it on `device`
    (for `epochs`, default the study's).

    `seed` fixes the initial weights and the batch order, so the same (params, seed) trains
    the same run again (bit for bit on the same machine and device).
    """
    device = resolve_device(device)
    runner = start_run(config, data.to(device), params, seed, device, epochs=epochs)
    return TrainedRun(runner.run(on_epoch_end), runner.model, config, dict(params), seed,
                      data.preprocessing, len(data.train))


def check_model(config: StudyConfig, data: Dataset) -> None:
    """Build the model of the space's default configuration and run two rows through it, so
    that a factory that fails, returns no nn.Module, has no head for `head_lr_mult` or gives
    outputs of the wrong shape is one clear error before any trial runs."""
    params = config.space.complete({})
    kind = config.model.kind
    model = model_for(config, data, params)
    if HEAD_LR_MULT.name in params:
        head_and_body(model, kind)
    rows = data.train.features[:2].cpu()
    try:
        with torch.no_grad():
            output = model.eval()(rows)
    except RuntimeError as exc:
        raise ConfigError(f"model {kind!r} fails on a batch of {len(rows)} rows of "
                          f"{data.n_features} features: {' '.join(str(exc).split())}") from exc
    expected = (len(rows), data.n_outputs)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"model {kind!r} must map ({len(rows)}, {data.n_features}) inputs to "
                          f"{expected} outputs ({data.task} of {data.name}); got {got}")


def train_single(
    config: StudyConfig, given: Mapping[str, Any], seed: int | None = None,
    device: str | torch.device = "cpu", refit: bool = False,
) -> tuple[dict[str, Value], TrainedRun]:
    """Train one configuration of `config`'s space: the given values, the study's fixed
    values, and defaults for the rest (`hpsearch train --set name=value`). `refit`: on the
    training and validation rows together (a final model)."""
    params = config.space.complete(given)
    # One run on the study's one validation split, whatever its evaluation's folds.
    run = train_configuration(config, config.load_data(folds=1, refit=refit), params,
                              config.seed if seed is None else seed, device=device)
    return params, replace(run, refit=refit)
