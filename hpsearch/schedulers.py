"""SCHEDULERS: name -> how to build the torch LR scheduler, its parameters, when it steps, and its
batched form (the cohort engine's, which gives many trials their lrs at once).

Parameters are relative to the epoch budget where that is natural (a step size is a fraction of
the epochs, a minimum learning rate a fraction of `lr`), so a study can change its epochs
without re-tuning its ranges. Every scheduler but `onecycle` (which has its own) may follow a
linear warm-up of `warmup_frac` of the epochs. Your own schedulers join the registry through
`hpsearch.register_scheduler` (see `hpsearch.plugins`).
"""

from __future__ import annotations

import functools
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.params import Param, Value

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler

    from hpsearch.engines.batched_schedulers import TableFn

# The warm-up starts at this fraction of `lr`. Not searched: the warm-up's length matters more.
WARMUP_START_FACTOR = 0.1

WARMUP = Param(
    "warmup_frac", "float", "linear warm-up length as a fraction of the epochs (0: none)",
    default=0.0, low=0.0, high=0.2, bounds=(0.0, 0.5),
)


def check_onecycle_rise(pct_start: float, total_steps: int) -> float:
    """`pct_start`, unless OneCycleLR cannot run with it: when its rise ends one step in
    (pct_start * total_steps == 1), torch's get_lr divides zero by zero."""
    if pct_start * total_steps == 1:
        raise ConfigError(
            f"onecycle_pct_start {pct_start:g} over {total_steps} steps makes OneCycleLR rise "
            "for a single step, where torch divides by zero; use another onecycle_pct_start")
    return pct_start


@dataclass(frozen=True)
class Budget:
    """What a schedule may know about the run it shapes."""

    epochs: int  # epochs after the warm-up
    steps_per_epoch: int
    lr: float


BuildFn = Callable[["torch.optim.Optimizer", Mapping[str, Value], Budget], Any]


@dataclass(frozen=True)
class SchedulerSpec:
    """A learning-rate schedule as hpsearch searches it.

    `build(optimizer, params, budget)` returns a torch LR scheduler (anything with `step()`, or
    `step(val_loss)` when `on_val_loss`); the optimizer's groups hold their starting lrs.

    `batched` names the schedule's batched form as "module:function": a
    `hpsearch.engines.batched_schedulers.TableFn`, every lr that `build` (after
    `build_schedule`'s warm-up) sets for many members at once. It is imported where the cohort
    engine asks for it (`batched_form`), not with the registry, which the engines import. None:
    the cohort engine cannot train a study that searches this schedule (the reference engine
    can).
    """

    name: str
    help: str
    build: BuildFn | None  # None: a constant learning rate
    params: tuple[Param, ...] = ()
    per_batch: bool = False  # steps after every optimizer step instead of every epoch
    on_val_loss: bool = False  # steps on the validation loss (ReduceLROnPlateau)
    allows_warmup: bool = True
    batched: str | None = None

    def batched_form(self) -> TableFn | None:
        """The function `batched` names, or None."""
        return None if self.batched is None else pkgutil.resolve_name(self.batched)


def torch_schedulers() -> ModuleType:
    """torch's `lr_scheduler` module, imported when a schedule is built rather than with the
    registry, which `hpsearch space` and the reports read without torch."""
    from torch.optim import lr_scheduler

    return lr_scheduler


class Schedule:
    """Steps one trial's learning-rate scheduler at the right moments of the training loop."""

    def __init__(self, scheduler: Any, per_batch: bool = False, on_val_loss: bool = False):
        self.scheduler = scheduler
        self.per_batch = per_batch
        self.on_val_loss = on_val_loss

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        if self.on_val_loss:
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()


class _WarmupThenPlateau:
    """Linear warm-up, then ReduceLROnPlateau (which SequentialLR cannot chain: it needs a
    metric). The plateau scheduler reads the optimizer's current lr, so the two compose."""

    def __init__(self, warmup: lr_scheduler.LinearLR, plateau: lr_scheduler.ReduceLROnPlateau,
                 warmup_epochs: int):
        self.warmup = warmup
        self.plateau = plateau
        self.warmup_epochs = warmup_epochs
        self.epochs_done = 0

    def step(self, val_loss: float) -> None:
        if self.epochs_done < self.warmup_epochs:
            self.warmup.step()
        else:
            self.plateau.step(val_loss)
        self.epochs_done += 1


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, params: Mapping[str, Value],
    epochs: int, steps_per_epoch: int,
) -> Schedule:
    """The schedule `name` with the trial's parameters, for a run of `epochs` epochs."""
    spec = SCHEDULERS[name]
    lr = float(params["lr"])
    warmup = warmup_epochs(spec, params, epochs)
    budget = Budget(epochs - warmup, steps_per_epoch, lr)
    # The main schedule is built first: a torch scheduler sets the lr when it is created, and
    # the warm-up, created last, must own the starting lr.
    main = spec.build(optimizer, params, budget) if spec.build else None
    if warmup == 0:
        return Schedule(main, spec.per_batch, spec.on_val_loss)
    lr_scheduler = torch_schedulers()
    linear = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
    if main is None:
        return Schedule(linear)
    if spec.on_val_loss:
        return Schedule(_WarmupThenPlateau(linear, main, warmup), on_val_loss=True)
    return Schedule(lr_scheduler.SequentialLR(optimizer, [linear, main], [warmup]))


def warmup_epochs(spec: SchedulerSpec, params: Mapping[str, Value], epochs: int) -> int:
    """The warm-up's length in a run of `epochs` epochs: round(warmup_frac * epochs), less than
    the epochs, none for a scheduler that allows none (onecycle)."""
    if not spec.allows_warmup:
        return 0
    return min(round(float(params.get(WARMUP.name, 0.0)) * epochs), epochs - 1)


def fraction_of(budget_epochs: int, fraction: float) -> int:
    """`fraction` of the epochs, rounded, at least one."""
    return max(1, round(fraction * budget_epochs))


def multistep_milestones(params: Mapping[str, Value], epochs: int) -> list[int]:
    """The `multistep` schedule's milestones in a run of `epochs` epochs (after the warm-up):
    the second only where it falls after the first and before the end."""
    first = fraction_of(epochs, float(params["multistep_first_frac"]))
    second = round((float(params["multistep_first_frac"]) + float(params["multistep_gap_frac"]))
                   * epochs)
    return [first] + ([second] if first < second < epochs else [])


# Named, safe LambdaLR families: a study file picks one by name and never carries code.
def _lambda_exponential(epoch: int, base: float) -> float:
    return base**epoch


def _lambda_inverse_time(epoch: int, decay: float) -> float:
    return 1.0 / (1.0 + decay * epoch)


def _lambda_polynomial(epoch: int, power: float, horizon: int) -> float:
    return max(0.0, 1.0 - epoch / horizon) ** power


def lambda_factor(params: Mapping[str, Value], epochs: int) -> Callable[[int], float]:
    """The `lambda` schedule's lr factor at each epoch of a run of `epochs` epochs (after the
    warm-up), from its family's formula."""
    family = params["lambda_family"]
    if family == "exponential":
        return functools.partial(_lambda_exponential, base=float(params["lambda_base"]))
    if family == "inverse_time":
        return functools.partial(_lambda_inverse_time, decay=float(params["lambda_decay"]))
    return functools.partial(
        _lambda_polynomial, power=float(params["lambda_power"]), horizon=epochs
    )


def _lambda(optimizer: torch.optim.Optimizer, p: Mapping[str, Value], b: Budget) -> Any:
    return torch_schedulers().LambdaLR(optimizer, lr_lambda=lambda_factor(p, b.epochs))


def _min_lr_ratio(name: str) -> Param:
    return Param(
        f"{name}_min_lr_ratio", "float", "lowest lr as a fraction of lr", default=0.0,
        low=0.0, high=0.1, bounds=(0.0, 1.0),
    )


def _batched(table: str) -> str:
    """A built-in's batched form: a table function of `hpsearch.engines.batched_schedulers`."""
    return f"hpsearch.engines.batched_schedulers:{table}"


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in [
        SchedulerSpec("none", "constant learning rate", None, batched=_batched("warmup_table")),
        SchedulerSpec(
            "step", "StepLR: multiply lr by step_gamma every step_size_frac of the epochs",
            lambda o, p, b: torch_schedulers().StepLR(
                o, step_size=fraction_of(b.epochs, float(p["step_size_frac"])),
                gamma=float(p["step_gamma"]),
            ),
            params=(
                Param("step_size_frac", "float", "epochs between decays, as a fraction",
                      default=0.1, low=0.05, high=0.5, bounds=(0.0, 1.0)),
                Param("step_gamma", "float", "decay factor", default=0.1,
                      low=0.05, high=0.9, log=True, bounds=(1e-6, 1.0)),
            ),
            batched=_batched("step_table"),
        ),
        SchedulerSpec(
            "multistep", "MultiStepLR: decay at two milestones (fractions of the epochs)",
            lambda o, p, b: torch_schedulers().MultiStepLR(
                o, milestones=multistep_milestones(p, b.epochs),
                gamma=float(p["multistep_gamma"]),
            ),
            params=(
                Param("multistep_first_frac", "float", "first milestone, as a fraction",
                      default=0.3, low=0.2, high=0.6, bounds=(0.0, 1.0)),
                Param("multistep_gap_frac", "float", "second milestone after the first",
                      default=0.5, low=0.1, high=0.4, bounds=(0.0, 1.0)),
                Param("multistep_gamma", "float", "decay factor at each milestone",
                      default=0.1, low=0.05, high=0.5, log=True, bounds=(1e-6, 1.0)),
            ),
            batched=_batched("multistep_table"),
        ),
        SchedulerSpec(
            "exponential", "ExponentialLR: multiply lr by exponential_gamma every epoch",
            lambda o, p, b: torch_schedulers().ExponentialLR(
                o, gamma=float(p["exponential_gamma"])),
            params=(
                Param("exponential_gamma", "float", "per-epoch decay factor", default=0.95,
                      low=0.85, high=0.999, bounds=(1e-6, 1.0)),
            ),
            batched=_batched("exponential_table"),
        ),
        SchedulerSpec(
            "cosine", "CosineAnnealingLR over the epochs, down to cosine_min_lr_ratio * lr",
            lambda o, p, b: torch_schedulers().CosineAnnealingLR(
                o, T_max=b.epochs, eta_min=float(p["cosine_min_lr_ratio"]) * b.lr
            ),
            params=(_min_lr_ratio("cosine"),),
            batched=_batched("cosine_table"),
        ),
        SchedulerSpec(
            "plateau", "ReduceLROnPlateau on the validation loss",
            lambda o, p, b: torch_schedulers().ReduceLROnPlateau(
                o, mode="min", factor=float(p["plateau_factor"]),
                patience=int(p["plateau_patience"]),
            ),
            params=(
                Param("plateau_factor", "float", "decay factor when the loss stalls",
                      default=0.1, low=0.05, high=0.5, log=True, bounds=(1e-6, 0.999)),
                Param("plateau_patience", "int", "epochs without improvement before a decay",
                      default=10, low=2, high=20, bounds=(0, 10_000)),
            ),
            on_val_loss=True,
            batched=_batched("warmup_table"),
        ),
        SchedulerSpec(
            "lambda", "LambdaLR from a named family: exponential, inverse_time, polynomial",
            _lambda,
            params=(
                Param("lambda_family", "categorical", "the lr factor's formula",
                      default="exponential",
                      choices=("exponential", "inverse_time", "polynomial")),
                Param("lambda_base", "float", "exponential: factor = base ** epoch",
                      default=0.95, low=0.85, high=0.999, bounds=(1e-6, 1.0),
                      when=lambda p: p["lambda_family"] == "exponential"),
                Param("lambda_decay", "float", "inverse_time: factor = 1 / (1 + decay * epoch)",
                      default=0.1, low=1e-3, high=1.0, log=True, bounds=(0.0, 1e3),
                      when=lambda p: p["lambda_family"] == "inverse_time"),
                Param("lambda_power", "float",
                      "polynomial: factor = (1 - epoch / epochs) ** power",
                      default=1.0, low=0.5, high=3.0, bounds=(0.0, 100.0),
                      when=lambda p: p["lambda_family"] == "polynomial"),
            ),
            batched=_batched("lambda_table"),
        ),
        SchedulerSpec(
            "onecycle", "OneCycleLR per batch, peaking at lr (momentum is not cycled)",
            lambda o, p, b: torch_schedulers().OneCycleLR(
                # Each parameter group peaks at its own lr (the head's may be a multiple).
                o, max_lr=[group["lr"] for group in o.param_groups],
                total_steps=b.epochs * b.steps_per_epoch,
                pct_start=check_onecycle_rise(float(p["onecycle_pct_start"]),
                                              b.epochs * b.steps_per_epoch),
                div_factor=float(p["onecycle_div_factor"]),
                final_div_factor=float(p["onecycle_final_div_factor"]),
                anneal_strategy=str(p["onecycle_anneal"]),
                # Cycling momentum would overwrite the searched momentum/beta1.
                cycle_momentum=False,
            ),
            params=(
                Param("onecycle_pct_start", "float", "fraction of the steps spent rising",
                      default=0.3, low=0.1, high=0.5, bounds=(0.01, 0.99)),
                Param("onecycle_div_factor", "float", "initial lr = lr / div_factor",
                      default=25.0, low=5.0, high=100.0, log=True, bounds=(1.0, 1e6)),
                Param("onecycle_final_div_factor", "float",
                      "final lr = initial lr / final_div_factor",
                      default=1e4, low=10.0, high=1e4, log=True, bounds=(1.0, 1e9)),
                Param("onecycle_anneal", "categorical", "shape of the annealing",
                      default="cos", choices=("cos", "linear")),
            ),
            per_batch=True,
            allows_warmup=False,
            batched=_batched("onecycle_table"),
        ),
        SchedulerSpec(
            "cosine_restarts",
            "CosineAnnealingWarmRestarts: cosine cycles, the first of t0_frac of the epochs",
            lambda o, p, b: torch_schedulers().CosineAnnealingWarmRestarts(
                o, T_0=fraction_of(b.epochs, float(p["cosine_restarts_t0_frac"])),
                T_mult=int(p["cosine_restarts_t_mult"]),
                eta_min=float(p["cosine_restarts_min_lr_ratio"]) * b.lr,
            ),
            params=(
                Param("cosine_restarts_t0_frac", "float", "first cycle, as a fraction",
                      default=0.1, low=0.05, high=0.5, bounds=(0.0, 1.0)),
                Param("cosine_restarts_t_mult", "int", "each cycle is t_mult times longer",
                      default=1, low=1, high=3, bounds=(1, 10)),
                _min_lr_ratio("cosine_restarts"),
            ),
            batched=_batched("cosine_restarts_table"),
        ),
    ]
}

# The schedulers every study searches unless it names its own list (see BUILTIN_OPTIMIZERS).
BUILTIN_SCHEDULERS: tuple[str, ...] = tuple(SCHEDULERS)
