"""Learning-rate schedules for a cohort of trials at once: each member's lr at every step.

The cohort engine trains K trials as one stacked model, each with its own hyperparameters and
its own schedule, and members join (`extend`) and leave (`select`) while others run on. This
module gives every member, at every optimizer step, the learning rate the reference engine's
torch scheduler (`hpsearch.schedulers.build_schedule`) would have set on that trial's optimizer:
for the body group and for the head group of `head_lr_mult` (column 1 of `lr`).

How: every schedule but ReduceLROnPlateau is a fixed function of the step, so each member's
whole lr sequence is computed once, at construction, as one row of a table (by the table
function its scheduler's spec names, `SchedulerSpec.batched`: a `TableFn` here for each
built-in); at run time a step is one gather at each member's own position. ReduceLROnPlateau
(after its warm-up) depends on the validation losses, so its members keep live state tensors
(best loss, bad epochs) that `after_epoch` updates with tensor ops only, without a host sync.

Exactness: the tables replicate torch's own arithmetic, operation by operation, not a closed form
of the schedule: torch's chainable schedulers (StepLR, ExponentialLR, CosineAnnealingLR, the
LinearLR warm-up, ...) update the current lr recursively, and where an lr approaches a small
floor (OneCycleLR's end, a cosine's eta_min) a closed form or a one-ulp different cosine differs
from torch's value by far more than rounding. The transcendental functions are Python's
`math.cos` and the lambda family's functions of `hpsearch.schedulers` (`lambda_factor`;
torch.cos differs from math.cos by an ulp for about one argument in a thousand). The recursions
(the warm-up, the chained factors, the cosine) run member by member in Python floats, torch's
own arithmetic (a refill brings a few members at a time); the rest is float64 tensor
arithmetic, which rounds like Python's floats. The result equals torch's lr bit for bit in the
tests.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

from hpsearch.params import Value
from hpsearch.schedulers import (
    SCHEDULERS,
    WARMUP_START_FACTOR,
    check_onecycle_rise,
    fraction_of,
    lambda_factor,
    multistep_milestones,
    warmup_epochs,
)

F64 = torch.float64
Tensor = torch.Tensor

# A scheduler's batched form (`SchedulerSpec.batched`): from m members' params, their (body,
# head) starting lrs [m, 2], their warm-up epochs [m], the epochs and the steps per epoch, the
# lrs build_schedule's scheduler sets: [m, L, 2], position k the lr after k of its steps, where
# L is epochs + 1 for a per-epoch schedule, epochs * steps_per_epoch + 1 for a per-batch one.
TableFn = Callable[[list[Mapping[str, Value]], Tensor, Tensor, int, int], Tensor]

# ReduceLROnPlateau as build_schedule makes it: mode 'min', threshold 1e-4 in 'rel' mode (a loss
# improves when it is below best * (1 - 1e-4)), cooldown 0, min_lr 0, eps 1e-8. Spelled as torch
# computes it, so the product rounds the same.
_PLATEAU_REL = 1.0 - 1e-4
_PLATEAU_EPS = 1e-8


def _cos(x: Tensor) -> Tensor:
    """math.cos of every element (float64, on the CPU): torch.cos is off by an ulp at times."""
    return torch.tensor(list(map(math.cos, x.reshape(-1).tolist())), dtype=F64).reshape(x.shape)


def _rows(values: list[list[float]]) -> Tensor:
    return torch.tensor(values, dtype=F64)


# -- warm-up -------------------------------------------------------------------------------------

def _warmup(base: Tensor, warm: Tensor, epochs: int) -> Tensor:
    """LinearLR(start_factor=WARMUP_START_FACTOR, total_iters=W) stepped every epoch: positions
    0..W, then held (LinearLR leaves the lr alone after W); W = 0: `base` throughout.

    torch's LinearLR is chainable: it multiplies the current lr by
    1 + d / (W * start + (e - 1) * d) at epoch e, which reaches `base` only up to rounding, and
    the plateau scheduler after it starts from that rounded lr, so the recursion is replicated
    (in Python floats, member by member).
    """
    start = WARMUP_START_FACTOR
    d = 1.0 - start  # torch: end_factor - start_factor
    rows = []
    for (body, head), w in zip(base.tolist(), warm.tolist(), strict=True):
        value = (body * start, head * start) if w > 0 else (body, head)
        row = [value]
        for e in range(1, w + 1):
            factor = 1.0 + d / (w * start + (e - 1) * d)
            value = (value[0] * factor, value[1] * factor)
            row.append(value)
        rows.append(row + [value] * (epochs + 1 - len(row)))
    return torch.tensor(rows, dtype=F64).reshape(len(rows), epochs + 1, 2)


# -- main schedules, per epoch ---------------------------------------------------------------------
# Each returns [m, max(T) + 1, 2]: position k is the main scheduler's lr after k steps, for main
# budgets T (the epochs after the warm-up). Positions past a member's T are never read.
# `after_warmup` marks members whose main scheduler starts at a SequentialLR milestone: there
# torch sets its lr with `_get_closed_form_lr()` (or `get_lr()`) at step 0 instead of leaving
# the optimizer's lr as a fresh scheduler does; for all but the cosine both are `base`.

MainFn = Callable[[list[Mapping[str, Value]], Tensor, list[int], Tensor], Tensor]


def _chain(base: Tensor, factors: list[list[float]]) -> Tensor:
    """lr_k = lr_(k-1) * factors[i][k] (a factor 1.0 where torch leaves the lr unchanged: x * 1.0
    is x exactly): StepLR, MultiStepLR and ExponentialLR, in torch's order of multiplication."""
    rows = []
    for (body, head), row_factors in zip(base.tolist(), factors, strict=True):
        value = (body, head)
        row = [value]
        for factor in row_factors[1:]:
            value = (value[0] * factor, value[1] * factor)
            row.append(value)
        rows.append(row)
    return torch.tensor(rows, dtype=F64).reshape(len(rows), len(factors[0]), 2)


def _main_step(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
               after_warmup: Tensor) -> Tensor:
    horizon = max(budgets)
    factors = []
    for p, t in zip(members, budgets, strict=True):
        size = fraction_of(t, float(p["step_size_frac"]))
        gamma = float(p["step_gamma"])
        factors.append([gamma if k > 0 and k % size == 0 else 1.0 for k in range(horizon + 1)])
    return _chain(base, factors)


def _main_multistep(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
                    after_warmup: Tensor) -> Tensor:
    horizon = max(budgets)
    factors = []
    for p, t in zip(members, budgets, strict=True):
        milestones = Counter(multistep_milestones(p, t))
        gamma = float(p["multistep_gamma"])
        factors.append([gamma ** milestones[k] if k in milestones else 1.0
                        for k in range(horizon + 1)])
    return _chain(base, factors)


def _main_exponential(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
                      after_warmup: Tensor) -> Tensor:
    horizon = max(budgets)
    return _chain(base, [[float(p["exponential_gamma"])] * (horizon + 1) for p in members])


def _main_lambda(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
                 after_warmup: Tensor) -> Tensor:
    # LambdaLR is a closed form in torch too: base_lr * factor(k), factor from hpsearch's own
    # family functions. Positions past a member's budget are never read; they repeat its last.
    horizon = max(budgets)
    factors = []
    for p, t in zip(members, budgets, strict=True):
        factor = lambda_factor(p, t)
        factors.append([factor(min(k, t)) for k in range(horizon + 1)])
    return base[:, None, :] * _rows(factors)[:, :, None]


@functools.lru_cache(maxsize=1024)
def _cosine_ratios(t_max: int) -> tuple[float, ...]:
    """CosineAnnealingLR's chainable step k (1..T), as torch computes it: the lr's distance to
    eta_min is multiplied by (1 + cos(pi k / T)) / (1 + cos(pi (k - 1) / T))."""
    return (1.0, *(
        (1 + math.cos(math.pi * k / t_max)) / (1 + math.cos(math.pi * (k - 1) / t_max))
        for k in range(1, t_max + 1)
    ))


def _main_cosine(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
                 after_warmup: Tensor) -> Tensor:
    horizon = max(budgets)
    rows = []
    for p, t, (body, head), fresh in zip(members, budgets, base.tolist(),
                                         (~after_warmup).tolist(), strict=True):
        # eta_min is a fraction of the trial's lr, the body's, for both groups (as
        # build_schedule).
        eta = float(p["cosine_min_lr_ratio"]) * float(p["lr"])
        # At a SequentialLR milestone torch uses the closed form at step 0, which need not
        # round back to base exactly; a fresh CosineAnnealingLR leaves the lr as it is.
        value = (body, head) if fresh else (eta + (body - eta) * (1 + 1.0) / 2,
                                            eta + (head - eta) * (1 + 1.0) / 2)
        row = [value]
        for ratio in _cosine_ratios(t)[1:]:
            value = (ratio * (value[0] - eta) + eta, ratio * (value[1] - eta) + eta)
            row.append(value)
        # Past a member's T torch would divide by 1 + cos(pi) = 0; those positions are never
        # read: hold the lr there.
        rows.append(row + [value] * (horizon - t))
    return torch.tensor(rows, dtype=F64).reshape(len(rows), horizon + 1, 2)


def _main_cosine_restarts(members: list[Mapping[str, Value]], base: Tensor, budgets: list[int],
                          after_warmup: Tensor) -> Tensor:
    horizon = max(budgets)
    cos_plus_one = []
    for p, t in zip(members, budgets, strict=True):
        # CosineAnnealingWarmRestarts.step(): T_cur counts epochs since the last restart; at
        # T_i it wraps and T_i grows by T_mult. A SequentialLR milestone restarts at T_cur 0
        # (the step torch's constructor took), so both starts agree.
        t_i = fraction_of(t, float(p["cosine_restarts_t0_frac"]))
        t_mult = int(p["cosine_restarts_t_mult"])
        t_cur = 0
        row = []
        for _ in range(horizon + 1):
            row.append(1 + math.cos(math.pi * t_cur / t_i))
            t_cur += 1
            if t_cur >= t_i:
                t_cur %= t_i
                t_i *= t_mult
        cos_plus_one.append(row)
    eta = torch.tensor(
        [float(p["cosine_restarts_min_lr_ratio"]) * float(p["lr"]) for p in members], dtype=F64
    )[:, None, None]
    return eta + (base[:, None, :] - eta) * _rows(cos_plus_one)[:, :, None] / 2


def _after_warmup(main: MainFn) -> TableFn:
    """The table function of a per-epoch schedule whose main scheduler is `main`:
    [m, epochs + 1, 2], the lr after e epochs of the schedule build_schedule makes."""
    def table(members: list[Mapping[str, Value]], base: Tensor, warm: Tensor, epochs: int,
              steps_per_epoch: int) -> Tensor:
        warmup = _warmup(base, warm, epochs)
        budgets = [epochs - int(w) for w in warm.tolist()]
        main_lrs = main(members, base, budgets, warm > 0)
        # SequentialLR: the warm-up for epochs < W, then the main scheduler from its step 0.
        e = torch.arange(epochs + 1)
        k = (e[None, :] - warm[:, None]).clamp(min=0)
        from_main = main_lrs.gather(1, k[:, :, None].expand(-1, -1, 2))
        return torch.where((e[None, :] < warm[:, None])[:, :, None], warmup, from_main)

    return table


def warmup_table(members: list[Mapping[str, Value]], base: Tensor, warm: Tensor, epochs: int,
                 steps_per_epoch: int) -> Tensor:
    """[m, epochs + 1, 2], the warm-up alone: `none`'s LinearLR (or a constant lr), and
    `plateau`'s, after which the live plateau state takes over (see
    BatchedSchedule.after_epoch)."""
    return _warmup(base, warm, epochs)


# The built-in per-epoch schedules' batched forms.
step_table = _after_warmup(_main_step)
multistep_table = _after_warmup(_main_multistep)
exponential_table = _after_warmup(_main_exponential)
lambda_table = _after_warmup(_main_lambda)
cosine_table = _after_warmup(_main_cosine)
cosine_restarts_table = _after_warmup(_main_cosine_restarts)


# -- onecycle, per batch ---------------------------------------------------------------------------

def onecycle_table(members: list[Mapping[str, Value]], base: Tensor, warm: Tensor, epochs: int,
                   steps_per_epoch: int) -> Tensor:
    """[m, total + 1, 2]: OneCycleLR's lr after s of the run's `total` optimizer steps (two
    phases, momentum not cycled), computed as OneCycleLR.get_lr computes it (a closed form in
    torch too). It has no warm-up (`warm` is 0)."""
    total = epochs * steps_per_epoch
    pct_start = torch.tensor([check_onecycle_rise(float(p["onecycle_pct_start"]), total)
                              for p in members], dtype=F64)
    div = torch.tensor([float(p["onecycle_div_factor"]) for p in members], dtype=F64)
    final_div = torch.tensor([float(p["onecycle_final_div_factor"]) for p in members], dtype=F64)
    cosine = torch.tensor([str(p["onecycle_anneal"]) == "cos" for p in members])
    steps = torch.arange(total + 1, dtype=F64)[None, :]
    rise_end = (pct_start * total - 1)[:, None]  # phase 1 ends at float(pct_start * total) - 1
    rising = steps <= rise_end
    numerator = torch.where(rising, steps - 0.0, steps - rise_end)
    denominator = torch.where(rising, rise_end - 0.0, (total - 1) - rise_end)
    pct = numerator / denominator
    max_lr = base[:, None, :]
    initial = max_lr / div[:, None, None]
    floor = initial / final_div[:, None, None]
    start = torch.where(rising[:, :, None], initial, max_lr)
    end = torch.where(rising[:, :, None], max_lr, floor)
    linear = (end - start) * pct[:, :, None] + start
    if not cosine.any():
        return linear
    cos_out = torch.ones_like(pct)
    cos_out[cosine] = _cos(math.pi * pct[cosine]) + 1
    annealed = end + (start - end) / 2.0 * cos_out[:, :, None]
    return torch.where(cosine[:, None, None], annealed, linear)


def _held(table: Tensor, length: int) -> Tensor:
    """`table` [m, L, 2] lengthened to `length` positions by repeating its last."""
    extra = length - table.shape[1]
    if extra <= 0:
        return table
    return torch.cat([table, table[:, -1:].expand(-1, extra, -1)], 1)


# -- the cohort's schedule -------------------------------------------------------------------------

class BatchedSchedule:
    """The learning rates of n trials' schedules, stepped together, each at its own position.

    `lr[i]` is member i's (body, head) lr for its next optimizer step; call `after_batch()`
    after every optimizer step and `after_epoch(val_loss)` after each epoch's validation, as
    hpsearch's `Schedule`. Each call assigns a new `lr` tensor (read it after the call). A
    member's table covers its run (epochs, steps_per_epoch); stepping a member past its run holds
    its last lr (torch would go on with the formula, or raise for onecycle).
    """

    lr: Tensor  # float64 [n, 2]: each member's (body, head) lr for its next optimizer step

    def __init__(self, members: Sequence[Mapping[str, Value]], epochs: int,
                 steps_per_epoch: int, *, device: torch.device | str = "cpu"):
        members = list(members)
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1; got {epochs}, "
                             f"{steps_per_epoch}")
        names = [str(p["scheduler"]) for p in members]
        for i, name in enumerate(names):
            if name not in SCHEDULERS or SCHEDULERS[name].batched is None:
                known = ", ".join(sorted(n for n, spec in SCHEDULERS.items() if spec.batched))
                raise ValueError(f"member {i}: scheduler {name!r} cannot be batched; "
                                 f"batched schedulers: {known}")
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.device = torch.device(device)
        n = len(members)
        body = [float(p["lr"]) for p in members]
        # build_optimizer's head group: lr * head_lr_mult; without one, torch's single group is
        # the body's, and column 1 repeats it (lr * 1.0 is lr exactly).
        head = [b * float(p.get("head_lr_mult", 1.0)) for b, p in zip(body, members, strict=True)]
        base = torch.stack([torch.tensor(body, dtype=F64), torch.tensor(head, dtype=F64)], 1)
        warm = torch.tensor([warmup_epochs(SCHEDULERS[name], p, epochs)
                             for name, p in zip(names, members, strict=True)], dtype=torch.long)
        per_batch = torch.tensor([SCHEDULERS[name].per_batch for name in names], dtype=torch.bool)
        plateau = torch.tensor([SCHEDULERS[name].on_val_loss for name in names], dtype=torch.bool)
        any_per_batch = bool(per_batch.any())
        length = (epochs * steps_per_epoch if any_per_batch else epochs) + 1
        table = torch.empty(n, length, 2, dtype=F64)
        for name in sorted(set(names)):
            rows = [i for i, other in enumerate(names) if other == name]
            index = torch.tensor(rows, dtype=torch.long)
            chosen = [members[i] for i in rows]
            part = SCHEDULERS[name].batched_form()(chosen, base[index], warm[index], epochs,
                                                   steps_per_epoch)
            table[index] = _held(part, length)
        patience = [int(p["plateau_patience"]) if on else 0
                    for p, on in zip(members, plateau.tolist(), strict=True)]
        factor = [float(p["plateau_factor"]) if on else 1.0
                  for p, on in zip(members, plateau.tolist(), strict=True)]

        to = self.device
        self._table = table.to(to)
        self._pos = torch.zeros(n, dtype=torch.long, device=to)
        self._per_batch = per_batch.to(to)
        self._batch_step = per_batch.to(device=to, dtype=torch.long)
        self._epoch_step = (~per_batch).to(device=to, dtype=torch.long)
        self._plateau = plateau.to(to)
        self._warm = warm.to(to)
        self._patience = torch.tensor(patience, dtype=torch.long, device=to)
        self._factor = torch.tensor(factor, dtype=F64, device=to)
        self._best = torch.full((n,), math.inf, dtype=F64, device=to)
        self._bad = torch.zeros(n, dtype=torch.long, device=to)
        self._rows = torch.arange(n, device=to)
        # Host-side flags skip work no member needs. select() leaves them set (finding out
        # would cost a host sync): a needless pass is a few tensor ops.
        self._any_per_batch = any_per_batch
        self._any_plateau = bool(plateau.any())
        self.lr = self._table[:, 0].clone()

    @property
    def n(self) -> int:
        return self.lr.shape[0]

    def _looked_up(self) -> Tensor:
        return self._table[self._rows, self._pos]

    def after_batch(self) -> None:
        """After every optimizer step: per-batch schedules (onecycle) move one step."""
        if not self._any_per_batch:
            return
        last = self._table.shape[1] - 1
        self._pos = (self._pos + self._batch_step).clamp_(max=last)
        self.lr = torch.where(self._per_batch[:, None], self._looked_up(), self.lr)

    def after_epoch(self, val_loss: Tensor) -> None:
        """After each epoch's validation: per-epoch schedules move one epoch; plateau members
        past their warm-up step ReduceLROnPlateau on their own `val_loss` (float64 [n])."""
        last = self._table.shape[1] - 1
        if not self._any_plateau:
            self._pos = (self._pos + self._epoch_step).clamp_(max=last)
            self.lr = self._looked_up()
            return
        # A plateau member's position counts its epochs; the warm-up's W epochs come from the
        # table, every later one is a ReduceLROnPlateau step on the current lr.
        stepping = self._plateau & (self._pos >= self._warm)
        loss = val_loss.to(device=self.device, dtype=F64)
        better = loss < self._best * _PLATEAU_REL
        self._best = torch.where(stepping & better, loss, self._best)
        bad = torch.where(better, 0, self._bad + 1)
        self._bad = torch.where(stepping, bad, self._bad)
        reduce = stepping & (self._bad > self._patience)
        self._bad = torch.where(reduce, 0, self._bad)
        old = self.lr
        new = (old * self._factor[:, None]).clamp(min=0.0)  # max(old * factor, min_lr 0)
        # torch skips a group's decay smaller than eps (per group: body and head differ).
        cut = reduce[:, None] & (old - new > _PLATEAU_EPS)
        plateau_lr = torch.where(cut, new, old)
        self._pos = (self._pos + self._epoch_step).clamp_(max=last)
        self.lr = torch.where(stepping[:, None], plateau_lr, self._looked_up())

    def select(self, index: Tensor) -> None:
        """Keep only the members at `index` (a LongTensor), in that order."""
        index = index.to(device=self.device, dtype=torch.long)
        for attr in ("_table", "_pos", "_per_batch", "_batch_step", "_epoch_step", "_plateau",
                     "_warm", "_patience", "_factor", "_best", "_bad", "lr"):
            setattr(self, attr, getattr(self, attr).index_select(0, index))
        self._rows = torch.arange(self.n, device=self.device)

    def extend(self, other: BatchedSchedule) -> None:
        """Append `other`'s members after this one's, each at its own position (usually 0)."""
        if (other.epochs, other.steps_per_epoch) != (self.epochs, self.steps_per_epoch):
            raise ValueError(
                f"cannot extend a schedule of {self.epochs} epochs x {self.steps_per_epoch} "
                f"steps with one of {other.epochs} x {other.steps_per_epoch}"
            )
        length = max(self._table.shape[1], other._table.shape[1])
        self._table = torch.cat(
            [_held(self._table, length), _held(other._table.to(self.device), length)]
        )
        for attr in ("_pos", "_per_batch", "_batch_step", "_epoch_step", "_plateau", "_warm",
                     "_patience", "_factor", "_best", "_bad", "lr"):
            setattr(self, attr, torch.cat([getattr(self, attr),
                                           getattr(other, attr).to(self.device)]))
        self._rows = torch.arange(self.n, device=self.device)
        self._any_per_batch |= other._any_per_batch
        self._any_plateau |= other._any_plateau
