"""OPTIMIZERS: name -> how to build the torch optimizer, the parameters it adds to the space, and
its batched form (the cohort engine's, which steps many trials of it at once).

The learning rate and weight decay are common to all optimizers and live in `space.py`
(`weight_decay_of` is what a run makes of them);
`momentum`, `beta1` and `beta2` are shared by name between the optimizers that have them, so
the dashboard and the reports can compare them across optimizers. Your own optimizers join the
registry through `hpsearch.register_optimizer` (see `hpsearch.plugins`).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.params import Param, Value

if TYPE_CHECKING:
    import torch

    from hpsearch.engines.batched_optimizers import BatchedOptimizer

MOMENTUM = Param(
    "momentum", "float", "momentum factor (SGD, RMSprop)", default=0.0,
    low=0.0, high=0.99, bounds=(0.0, 1.0),
)
BETA1 = Param(
    "beta1", "float", "first-moment decay of the Adam family", default=0.9,
    low=0.8, high=0.99, bounds=(0.0, 0.9999),
)
BETA2 = Param(
    "beta2", "float", "second-moment decay of the Adam family", default=0.999,
    low=0.9, high=0.9999, log=True, bounds=(1e-6, 0.999999),
)
AMSGRAD = Param(
    "amsgrad", "categorical", "use the AMSGrad variant (Adam, AdamW)", default=False,
    choices=(False, True),
)


class _ClassOrName:
    """A field holding a class, given as the class or as its import name "module:Class"; a name
    is imported when the field is first read. The built-ins name torch's optimizers, so that
    the registry (which `hpsearch space` and the reports read) does not import torch."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, spec: Any, owner: type | None = None) -> Any:
        if spec is None:  # the dataclass asking for a default: there is none
            raise AttributeError(self.slot)
        value = getattr(spec, self.slot)
        if isinstance(value, str):
            value = pkgutil.resolve_name(value)
            object.__setattr__(spec, self.slot, value)
        return value

    def __set__(self, spec: Any, value: type | str) -> None:
        object.__setattr__(spec, self.slot, value)


@dataclass(frozen=True)
class OptimizerSpec:
    """A torch optimizer as hpsearch searches it.

    `torch_class` is called as `torch_class(param_groups, lr=..., weight_decay=..., **options)`
    (without `weight_decay` when `weight_decay` is False: the optimizer has none, and the
    search then draws no weight decay for it). It may be given as its import name,
    "module:Class", imported when first used.

    `batched` names the optimizer's batched form as "module:Class": a subclass of
    `hpsearch.engines.batched_optimizers.BatchedOptimizer` that steps many members with
    `torch_class`'s arithmetic and the options `options` gives. It is imported where the cohort
    engine asks for it (`batched_form`), not with the registry, which the engines import. None:
    the cohort engine cannot train a study that searches this optimizer (the reference engine
    can).
    """

    name: str
    torch_class: type[torch.optim.Optimizer] | str = _ClassOrName()  # read: always the class
    default_lr: float
    help: str = ""
    params: tuple[Param, ...] = ()
    # Turns the trial's parameters into the optimizer's keyword arguments (lr and weight decay
    # are passed by `build`).
    options: Callable[[Mapping[str, Value]], dict[str, Any]] = lambda params: {}
    weight_decay: bool = True
    batched: str | None = None

    def batched_form(self) -> type[BatchedOptimizer] | None:
        """The class `batched` names, or None."""
        return None if self.batched is None else pkgutil.resolve_name(self.batched)

    def build(
        self, param_groups: Iterable[Any], lr: float, weight_decay: float,
        params: Mapping[str, Value],
    ) -> torch.optim.Optimizer:
        decay = {"weight_decay": weight_decay} if self.weight_decay else {}
        return self.torch_class(param_groups, lr=lr, **decay, **self.options(params))


def weight_decay_of(params: Mapping[str, Value]) -> float:
    """The weight decay a trial's run uses: its `weight_decay` where `use_weight_decay` is on (or
    absent, as where the space has no toggle), else none."""
    return float(params.get("weight_decay", 0.0)) if params.get("use_weight_decay", True) \
        else 0.0


def _betas(params: Mapping[str, Value]) -> dict[str, Any]:
    return {"betas": (params["beta1"], params["beta2"])}


# The built-ins' batched forms, one per family (Adam's steps Adam, AdamW, NAdam, RAdam, Adamax).
_BATCHED_SGD = "hpsearch.engines.batched_optimizers.sgd:BatchedSGD"
_BATCHED_ADAM = "hpsearch.engines.batched_optimizers.adam:BatchedAdam"
_BATCHED_RMSPROP = "hpsearch.engines.batched_optimizers.rmsprop:BatchedRMSprop"
_BATCHED_ADAGRAD = "hpsearch.engines.batched_optimizers.adagrad:BatchedAdagrad"
_BATCHED_ADADELTA = "hpsearch.engines.batched_optimizers.adadelta:BatchedAdadelta"

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "sgd", "torch.optim:SGD", 0.01, "stochastic gradient descent, with momentum/Nesterov",
            params=(
                MOMENTUM,
                Param(
                    "sgd_nesterov", "categorical", "Nesterov momentum (only with momentum > 0)",
                    default=False, choices=(False, True),
                    when=lambda p: p["momentum"] > 0,
                ),
            ),
            options=lambda p: {
                "momentum": p["momentum"], "nesterov": bool(p.get("sgd_nesterov", False)),
            },
            batched=_BATCHED_SGD,
        ),
        OptimizerSpec(
            "adam", "torch.optim:Adam", 1e-3, "Adam (L2 weight decay)",
            params=(BETA1, BETA2, AMSGRAD),
            options=lambda p: {**_betas(p), "amsgrad": p["amsgrad"]},
            batched=_BATCHED_ADAM,
        ),
        OptimizerSpec(
            "adamw", "torch.optim:AdamW", 1e-3, "AdamW (decoupled weight decay)",
            params=(BETA1, BETA2, AMSGRAD),
            options=lambda p: {**_betas(p), "amsgrad": p["amsgrad"]},
            batched=_BATCHED_ADAM,
        ),
        OptimizerSpec(
            "nadam", "torch.optim:NAdam", 2e-3, "Adam with Nesterov momentum",
            params=(BETA1, BETA2), options=_betas, batched=_BATCHED_ADAM,
        ),
        OptimizerSpec(
            "radam", "torch.optim:RAdam", 1e-3, "rectified Adam (built-in variance warm-up)",
            params=(BETA1, BETA2), options=_betas, batched=_BATCHED_ADAM,
        ),
        OptimizerSpec(
            "adamax", "torch.optim:Adamax", 2e-3, "Adam with the infinity norm",
            params=(BETA1, BETA2), options=_betas, batched=_BATCHED_ADAM,
        ),
        OptimizerSpec(
            "rmsprop", "torch.optim:RMSprop", 1e-2, "RMSprop, with momentum and centered variant",
            params=(
                Param(
                    "rmsprop_alpha", "float", "smoothing constant of the squared gradients",
                    default=0.99, low=0.8, high=0.999, bounds=(0.0, 1.0),
                ),
                MOMENTUM,
                Param(
                    "rmsprop_centered", "categorical", "normalise by the gradient's variance",
                    default=False, choices=(False, True),
                ),
            ),
            options=lambda p: {
                "alpha": p["rmsprop_alpha"], "momentum": p["momentum"],
                "centered": p["rmsprop_centered"],
            },
            batched=_BATCHED_RMSPROP,
        ),
        OptimizerSpec(
            "adagrad", "torch.optim:Adagrad", 1e-2, "Adagrad (per-parameter accumulated scale)",
            batched=_BATCHED_ADAGRAD,
        ),
        OptimizerSpec(
            "adadelta", "torch.optim:Adadelta", 1.0, "Adadelta (windowed Adagrad; lr near 1)",
            params=(
                Param(
                    "adadelta_rho", "float", "decay of the running averages", default=0.9,
                    low=0.8, high=0.99, bounds=(0.0, 1.0),
                ),
            ),
            options=lambda p: {"rho": p["adadelta_rho"]},
            batched=_BATCHED_ADADELTA,
        ),
    ]
}

# The optimizers every study searches unless it names its own list; registered ones are searched
# only where a study names them, so installing a plugin never changes an existing study's space.
BUILTIN_OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZERS)
