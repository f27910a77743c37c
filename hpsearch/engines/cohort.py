"""The cohort engine's training loop: many trials trained at once as one stacked model.

A `Cohort` trains a changing set of members (trials), each with its own parameters and seed,
epoch by epoch, exactly as the reference loop (`training.EpochRunner`) would train each one
alone: the same initial weights (each member's model is built by the study's factory under
its seed), the same batch order (each member's own generator), the same optimizer and schedule
arithmetic (`batched_optimizers`, `batched_schedulers`, tested against torch.optim member by
member).
Like `training`, it knows nothing about Optuna: the search driver (`cohort_search`) adds
members, runs epochs, and removes the members it ends.

Members are grouped by batch size (members of a group take the same number of steps per epoch);
within a group, by optimizer type (Adam, AdamW, NAdam, RAdam and Adamax as one family), each
type's members contiguous so that its batched optimizer steps a view of the stacked parameters.
A removed member stops costing compute at once (the stack is compacted); members added later
start at their own epoch 1 while others go on.

A training step takes its gradients from the stacked model's hand-written backward pass
(`StackedModel.loss_and_grad`), not from autograd, whose bookkeeping per step is a large part of
a step for models this small; clipping, the head's lr and the batched optimizers' steps then
work on that one (members, P) gradient.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from hpsearch.config import StudyConfig
from hpsearch.data import CLASSIFICATION, Dataset, Split
from hpsearch.engines.base import EpochOutcome, Member
from hpsearch.engines.batched_optimizers import BatchedOptimizer
from hpsearch.engines.batched_schedulers import BatchedSchedule
from hpsearch.engines.stacked_model import StackedModel, member_losses, why_not_stackable
from hpsearch.models import MODELS, is_factory_path, linear, mlp
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.schedulers import SCHEDULERS
from hpsearch.space import HEAD_LR_MULT
from hpsearch.training import (
    EpochStats,
    clip_norm,
    divergence,
    model_for,
    resolve_device,
    steps_per_epoch,
)


def why_not_cohort(config: StudyConfig, data: Dataset) -> str | None:
    """Why the cohort engine cannot train `config`'s trials, or None when it can."""
    kind = config.model.kind
    if is_factory_path(kind) and config.space.model:
        return f"model factory {kind!r} searches its own parameters, so members' models " \
               "differ in shape"
    optimizers = sorted(name for name in config.space.optimizers
                        if OPTIMIZERS[name].batched is None)
    if optimizers:
        return f"optimizer {optimizers[0]!r} has no batched form (only the built-in ones do)"
    schedulers = sorted(name for name in config.space.schedulers
                        if SCHEDULERS[name].batched is None)
    if schedulers:
        return f"scheduler {schedulers[0]!r} has no batched form (only the built-in ones do)"
    reason = why_not_stackable(model_for(config, data, config.space.complete({})))
    return None if reason is None else f"{reason}; the cohort engine stacks nn.Sequential " \
                                       "models of Linear layers and activations"


class Cohort:
    """Every member of the study in training, in groups by batch size.

    Its tensors are made and updated in `torch.inference_mode` (training needs no autograd:
    see `StackedModel.loss_and_grad`), where each op skips autograd's and the version
    counters' bookkeeping: a cohort's round is a few hundred small ops, so that bookkeeping
    is a real share of its time. They are inference tensors: read them anywhere, update
    them only in inference mode.
    """

    name = "cohort"

    def __init__(self, config: StudyConfig, data: Dataset, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config = config
        self.device = resolve_device(device)
        self.dtype = dtype
        self.data = moved = data.to(self.device)
        self.folds = [_cast(moved.fold(index), dtype) for index in range(moved.n_folds)]
        # (fold, batch size) -> its members: a group shares its data and its steps per epoch.
        self.groups: dict[tuple[int, int], _Group] = {}

    def __len__(self) -> int:
        return sum(len(group.members) for group in self.groups.values())

    @property
    def members(self) -> list[Member]:
        return [member for group in self.groups.values() for member in group.members]

    def add(self, members: Sequence[Member]) -> None:
        by_group: dict[tuple[int, int], list[Member]] = {}
        for member in members:
            size = int(member.params.get("batch_size", self.config.training.batch_size))
            by_group.setdefault((member.fold, size), []).append(member)
        for key, joining in by_group.items():
            if key not in self.groups:
                fold, size = key
                self.groups[key] = _Group(self.config, self.folds[fold], size, self.device,
                                          self.dtype)
            self.groups[key].add(joining)

    @torch.inference_mode()
    def remove(self, members: Sequence[Member]) -> None:
        leaving = {id(member) for member in members}
        for key, group in list(self.groups.items()):
            group.keep([m for m in group.members if id(m) not in leaving])
            if not group.members:
                del self.groups[key]

    @torch.inference_mode()
    def measure(self, members: Sequence[Member]) -> list[tuple[float, float | None]]:
        """Each member's loss and accuracy (None for regression) on the held-out test split,
        as it is now."""
        wanted = set(members)
        found: dict[Member, tuple[float, float | None]] = {}
        for group in self.groups.values():
            if wanted.isdisjoint(group.members):
                continue
            loss, accuracy = group._evaluate(group.data.test)
            rows = torch.stack([loss, loss if accuracy is None else accuracy.double()]).tolist()
            for member, member_loss, member_accuracy in zip(group.members, *rows, strict=True):
                if member in wanted:
                    found[member] = (member_loss, None if accuracy is None else member_accuracy)
        return [found[member] for member in members]

    @torch.inference_mode()
    def run_epoch(self) -> list[EpochOutcome]:
        """Train every member for one more epoch (its next one)."""
        with _subnormals_flushed(self.device):
            return [outcome for group in self.groups.values() for outcome in group.run_epoch()]


@contextlib.contextmanager
def _subnormals_flushed(device: torch.device) -> Iterator[None]:
    """The CPU's arithmetic with subnormal floats flushed to zero (x86's FTZ/DAZ, AArch64's
    FZ), on this thread, then as it was.

    Why: a confident member's softmax gives its other classes probabilities like exp(-90),
    subnormal in float32, and the CPU's matrix products and exp take far longer on subnormal
    operands, so a step's forward and backward pass, and the whole search, are quicker flushed
    (docs/benchmarks.md). What it changes: values below 1.2e-38 (float32; 2.2e-308 in
    float64) become 0, a gradient's share too small to move any parameter a float32 can hold.
    The reference engine, torch as a user runs it, does not flush (flushing would not speed it
    up: its time is per-op overhead). With more torch threads than the default one
    (`--threads`), torch's own worker threads keep their mode, so the parts of large ops they
    run are not flushed.
    """
    if device.type != "cpu" or _flushing() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _flushing() -> bool:
    """Whether this thread flushes subnormal floats already (torch has no getter)."""
    return _SUBNORMAL.mul(1.0).item() == 0.0


# A float64 subnormal, 2**-1060, from its bits (arithmetic would flush it, were flushing on):
# nonzero times one unless flushed.
_SUBNORMAL = torch.frombuffer(bytearray((1 << 14).to_bytes(8, sys.byteorder)),
                              dtype=torch.float64)


def _batched_by(member: Member) -> type[BatchedOptimizer]:
    """The batched optimizer that steps `member`: its optimizer's batched form (its family's)."""
    return OPTIMIZERS[str(member.params["optimizer"])].batched_form()


def _gathered(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`tensor[rows]` for a (members, batch) index: each member's rows. One `index_select`
    of the flattened index: indexing with the 2-d index is much slower, and every step of
    every batch gathers its members' rows."""
    return tensor.index_select(0, rows.reshape(-1)).view(*rows.shape, *tensor.shape[1:])


def _cast(data: Dataset, dtype: torch.dtype) -> Dataset:
    def cast(split: Split) -> Split:
        target = split.target if data.task == CLASSIFICATION else split.target.to(dtype)
        return Split(split.features.to(dtype), target)

    if data.train.features.dtype == dtype:
        return data
    return replace(data, train=cast(data.train), valid=cast(data.valid), test=cast(data.test))


class _Group:
    """Members of one batch size: one stacked model, a batched optimizer per optimizer type
    or family (its members contiguous), one batched schedule."""

    def __init__(self, config: StudyConfig, data: Dataset, batch_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.config = config
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.classify = data.task == CLASSIFICATION
        self.epochs = config.training.epochs
        self.steps = steps_per_epoch(len(data.train), batch_size)
        self.members: list[Member] = []
        self.layout: StackedModel | None = None
        # The built-in models keep nn.Linear's initialisation (`StackedModel.initialised`);
        # a user's factory, or a model registered in their place, may not.
        kind = config.model.kind
        self.builtin = not is_factory_path(kind) and MODELS.get(kind) in (mlp, linear)
        self.flat = torch.empty(0, device=device, dtype=dtype)
        self.optimizers: dict[str, BatchedOptimizer] = {}
        self.ranges: dict[str, slice] = {}
        self.rows: dict[str, torch.Tensor] = {}
        self.schedule: BatchedSchedule | None = None
        self.head_mask: torch.Tensor | None = None  # (1, P): the head's slots, if any member
        self.max_norm = torch.empty(0, device=device, dtype=dtype)  # inf: no clipping

    # -- membership ---------------------------------------------------------------------------
    def add(self, joining: Sequence[Member]) -> None:
        rows = []
        for member in joining:
            if self.layout is not None and self.builtin:
                # The built-in models' initial weights, drawn without building each model.
                rows.append(self.layout.initialised(member.seed))
                continue
            # As the reference engine's torch.manual_seed does for the CPU, where models are
            # built: the seed fixes the initial weights. (Not torch.manual_seed itself:
            # seeding every device too costs more than building the model.)
            torch.default_generator.manual_seed(member.seed)
            model = model_for(self.config, self.data, member.params)
            if self.layout is None:
                self.layout = StackedModel(model)
                self.head_mask = self.layout.head.to(self.device).unsqueeze(0)
            rows.append(StackedModel.flatten(model))
        # The models are built outside inference mode (a user's factory may need autograd);
        # everything the cohort keeps is made inside it (see `Cohort`).
        with torch.inference_mode():
            self._join(joining, rows)

    def _join(self, joining: Sequence[Member], rows: list[torch.Tensor]) -> None:
        new_flat = torch.stack(rows).to(self.device, self.dtype)
        shapes = [torch.Size([self.layout.size])]
        by_form: dict[type[BatchedOptimizer], list[Member]] = {}
        for member in joining:
            by_form.setdefault(_batched_by(member), []).append(member)
        for form, typed in by_form.items():
            fresh = form([m.params for m in typed], shapes, dtype=self.dtype, device=self.device,
                         horizon=self.epochs * self.steps)
            if form.name in self.optimizers:
                self.optimizers[form.name].extend(fresh)
            else:
                self.optimizers[form.name] = fresh
        schedule = BatchedSchedule([m.params for m in joining], self.epochs, self.steps,
                                   device=self.device)
        if self.schedule is None:
            self.schedule = schedule
        else:
            self.schedule.extend(schedule)
        norms = torch.tensor([clip_norm(m.params) or math.inf for m in joining],
                             device=self.device, dtype=self.dtype)
        members = self.members + list(joining)
        flat = torch.cat([self.flat, new_flat]) if self.members else new_flat
        max_norm = torch.cat([self.max_norm, norms])
        # Each batched optimizer's members contiguous, old ones before new ones (the order in
        # which it holds them).
        names = sorted(self.optimizers)
        order = sorted(range(len(members)),
                       key=lambda i: names.index(_batched_by(members[i]).name))
        index = torch.tensor(order, device=self.device)
        self.members = [members[i] for i in order]
        self.flat = flat.index_select(0, index)
        self.max_norm = max_norm.index_select(0, index)
        self.schedule.select(index)
        self._update_ranges()

    def keep(self, kept: Sequence[Member]) -> None:
        """Keep only `kept` (a subsequence of the members, in order)."""
        if len(kept) == len(self.members):
            return
        staying = {id(member) for member in kept}
        positions = [i for i, m in enumerate(self.members) if id(m) in staying]
        if not positions:
            self.members = []
            return
        index = torch.tensor(positions, device=self.device)
        for name, span in self.ranges.items():
            local = [i - span.start for i in positions if span.start <= i < span.stop]
            if local:
                self.optimizers[name].select(torch.tensor(local, device=self.device))
            else:
                del self.optimizers[name]
        self.members = [self.members[i] for i in positions]
        self.flat = self.flat.index_select(0, index)
        self.max_norm = self.max_norm.index_select(0, index)
        self.schedule.select(index)
        self._update_ranges()

    def _update_ranges(self) -> None:
        self.ranges = {}
        start = 0
        for name in sorted(self.optimizers):
            stop = start + self.optimizers[name].n
            self.ranges[name] = slice(start, stop)
            start = stop
        # Each batched optimizer's members' rows, as views of `flat` (replaced only with new
        # members or fewer, then here again).
        self.rows = {name: self.flat[span] for name, span in self.ranges.items()}
        self.clipping = bool(torch.isfinite(self.max_norm).any())
        self.head_lr = any(HEAD_LR_MULT.name in m.params for m in self.members)

    # -- training -----------------------------------------------------------------------------
    def run_epoch(self) -> list[EpochOutcome]:
        if not self.members:
            return []
        lr_at_start = self.schedule.lr[:, 0].clone()
        train_loss = self._train_epoch()
        val_loss, accuracy = self._evaluate()
        # One host sync for everything the epoch reports.
        rows = torch.stack([train_loss.double(), val_loss,
                            accuracy.double() if accuracy is not None else val_loss,
                            lr_at_start.to(val_loss.device)]).tolist()
        self.schedule.after_epoch(val_loss.to(self.schedule.lr.device))
        outcomes = []
        for member, train, valid, acc, lr in zip(self.members, *rows, strict=True):
            epoch = len(member.history) + 1
            diverged = divergence(train, valid, epoch, lr)
            if diverged:
                outcomes.append(EpochOutcome(member, None, diverged))
                continue
            stats = EpochStats(epoch, lr, train, valid, acc if self.classify else None)
            member.history.append(stats)
            outcomes.append(EpochOutcome(member, stats))
        return outcomes

    def _batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        split = self.data.train
        rows = len(split)
        if self.steps == 1:
            return [(split.features, split.target)]
        # Each member's own shuffle, drawn on the CPU as the reference loop draws it.
        order = torch.stack([torch.randperm(rows, generator=m.generator)
                             for m in self.members]).to(self.device)
        return [(_gathered(split.features, order[:, start:start + self.batch_size]),
                 _gathered(split.target, order[:, start:start + self.batch_size]))
                for start in range(0, rows, self.batch_size)]

    def _train_epoch(self) -> torch.Tensor:
        total: torch.Tensor | None = None  # the steps' losses, summed as they come
        for features, target in self._batches():
            loss, grad = self.layout.loss_and_grad(self.flat, features, target, self.classify)
            if self.clipping:
                # clip_grad_norm_ member by member (its 1e-6 keeps a zero norm finite).
                coef = (self.max_norm / (grad.norm(dim=1) + 1e-6)).clamp(max=1.0)
                grad.mul_(coef.unsqueeze(1))
            # float64, as torch's Python-float lrs are; (members, 1), or (members, P) where
            # the head has an lr of its own.
            lr = self.schedule.lr
            lr = torch.where(self.head_mask, lr[:, 1:2], lr[:, 0:1]) if self.head_lr \
                else lr[:, 0:1]
            for name, span in self.ranges.items():
                self.optimizers[name].step([self.rows[name]], [grad[span]], [lr[span]])
            self.schedule.after_batch()
            total = loss if total is None else total.add_(loss)
        return total if self.steps == 1 else total / self.steps

    @torch.no_grad()
    def _evaluate(self, split: Split | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every member's loss (and accuracy) on `split` (default: the validation split)."""
        split = self.data.valid if split is None else split
        output = self.layout.forward(self.flat, split.features)
        # In float64, as the reference loop evaluates (see training.evaluate).
        loss = member_losses(output.double(), split.target if self.classify
                             else split.target.double(), self.classify)
        if not self.classify:
            return loss, None
        # Rows first for argmax: over the classes of the stacked model's feature-major
        # outputs (a strided dimension) argmax is far slower than the copy and argmax.
        return loss, (output.contiguous().argmax(dim=2) == split.target).float().mean(1)

