"""The joint, conditional search space: optimizer x learning rate x weight decay x scheduler.

A trial's parameters are drawn in one fixed order (optimizer, lr, weight decay, the optimizer's
own parameters, scheduler, its parameters, warm-up, then the opt-in training parameters and the
model factory's own); a parameter exists only where its branch was taken. The same walk serves
a search (values drawn from an Optuna trial) and `hpsearch train` (values given on the command
line, the rest fixed or default).

The opt-in parameters (batch size, gradient clipping, the head's lr multiplier) are part of a
study's space only where its study file names them in [search.params], so that the spaces of
existing studies (and their stored configs) stay exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.optimizers import BUILTIN_OPTIMIZERS, OPTIMIZERS
from hpsearch.params import Param, Value
from hpsearch.schedulers import BUILTIN_SCHEDULERS, SCHEDULERS, WARMUP

if TYPE_CHECKING:
    import optuna

LR = Param(
    "lr", "float", "learning rate (the peak lr for onecycle)",
    default=lambda p: OPTIMIZERS[p["optimizer"]].default_lr,
    low=1e-5, high=1.0, log=True, bounds=(1e-12, 100.0),
)
USE_WEIGHT_DECAY = Param(
    "use_weight_decay", "categorical", "whether weight decay is on (log-scale decay can't be 0)",
    default=False, choices=(False, True),
)
WEIGHT_DECAY = Param(
    "weight_decay", "float", "weight decay (L2; decoupled for AdamW)", default=0.0,
    low=1e-6, high=1e-1, log=True, bounds=(0.0, 10.0),
)

BATCH_SIZE = Param(
    "batch_size", "int", "mini-batch size (0: full batch)", default=0,
    low=16, high=256, log=True, bounds=(0, 10_000_000),
)
USE_CLIP_GRAD_NORM = Param(
    "use_clip_grad_norm", "categorical", "whether gradients are clipped (clip_grad_norm_)",
    default=False, choices=(False, True),
)
CLIP_GRAD_NORM = Param(
    "clip_grad_norm", "float", "max total gradient norm for clip_grad_norm_ (0: no clipping)",
    default=1.0, low=0.1, high=10.0, log=True, bounds=(0.0, 1e6),
)
HEAD_LR_MULT = Param(
    "head_lr_mult", "float", "the head's (last layer's) lr as a multiple of lr", default=1.0,
    low=0.1, high=10.0, log=True, bounds=(1e-6, 1e6),
)

# Opt-in parameter groups: a group is in a study's space only where [search.params] names one
# of its parameters (or `hpsearch train --set` gives one).
OPT_IN: dict[str, tuple[str, ...]] = {
    "batch_size": (BATCH_SIZE.name,),
    "clip_grad_norm": (USE_CLIP_GRAD_NORM.name, CLIP_GRAD_NORM.name),
    "head_lr_mult": (HEAD_LR_MULT.name,),
}

# Given values from which another parameter follows (`weight_decay = 0.01` means decay is on).
_TOGGLES = {"weight_decay": "use_weight_decay", "clip_grad_norm": "use_clip_grad_norm"}


def _choice_param(name: str, registry: Mapping[str, Any], default: str, help_: str) -> Param:
    return Param(name, "categorical", help_, default=default, choices=tuple(registry))


def core_params() -> tuple[Param, ...]:
    """The space's own parameters, beside the optimizer and scheduler choices (which are
    drawn from the registries) and the parameters the registered specs declare."""
    return (LR, USE_WEIGHT_DECAY, WEIGHT_DECAY, WARMUP, BATCH_SIZE, USE_CLIP_GRAD_NORM,
            CLIP_GRAD_NORM, HEAD_LR_MULT)


def base_params() -> dict[str, Param]:
    """Every parameter hpsearch knows, by name, with its default range."""
    first = (LR, USE_WEIGHT_DECAY, WEIGHT_DECAY)
    params = [
        _choice_param("optimizer", OPTIMIZERS, "sgd", "the optimizer"), *first,
        _choice_param("scheduler", SCHEDULERS, "none", "the learning-rate schedule"),
        *(p for p in core_params() if p not in first),
    ]
    params += [p for spec in OPTIMIZERS.values() for p in spec.params]
    params += [p for spec in SCHEDULERS.values() for p in spec.params]
    return {p.name: p for p in params}


Draw = Callable[[Param, Mapping[str, Value]], Value]


@dataclass(frozen=True)
class SearchSpace:
    """The effective space of one study: every parameter by name, overrides applied.

    `opted_in` names the OPT_IN groups the study turned on; `model` holds the parameters the
    model factory declares (as declared: `params` has them with the study's overrides)."""

    params: Mapping[str, Param]
    opted_in: frozenset[str] = frozenset()
    model: tuple[Param, ...] = ()

    @classmethod
    def build(
        cls, optimizers: list[str] | None = None, schedulers: list[str] | None = None,
        overrides: Mapping[str, Any] | None = None, where: str = "",
        model_params: tuple[Param, ...] = (),
    ) -> SearchSpace:
        """Validate a study's choices and overrides; `where` prefixes error messages."""
        overrides = dict(overrides or {})
        params = base_params()
        for declared in model_params:
            if declared.name in params:
                raise ConfigError(
                    f"{where}the model factory's parameter {declared.name!r} has the name of "
                    f"a built-in parameter; rename it (e.g. model_{declared.name})"
                )
            params[declared.name] = declared
        defaults = {"optimizer": BUILTIN_OPTIMIZERS, "scheduler": BUILTIN_SCHEDULERS}
        for key, chosen in (("optimizer", optimizers), ("scheduler", schedulers)):
            if chosen is not None and not chosen:
                raise ConfigError(f"{where}{key}s must name at least one {key}")
            listed = list(defaults[key] if chosen is None else chosen)
            params[key] = params[key].overridden({"choices": listed}, where)
        for name, override in overrides.items():
            if name in ("optimizer", "scheduler"):
                raise ConfigError(f"{where}{name}: choose them with {name}s = [...]")
            if name not in params:
                raise ConfigError(f"{where}unknown parameter {name!r}; {_known(params)}")
            params[name] = params[name].overridden(override, where)
        for value_name, toggle in _TOGGLES.items():
            if params[value_name].fixed and toggle not in overrides:
                params[toggle] = params[toggle].overridden(params[value_name].fixed[0] > 0)
        if (CLIP_GRAD_NORM.name in overrides and not params[CLIP_GRAD_NORM.name].fixed
                and USE_CLIP_GRAD_NORM.name not in overrides):
            # A clipping range alone means: always clip, search the norm.
            params[USE_CLIP_GRAD_NORM.name] = params[USE_CLIP_GRAD_NORM.name].overridden(True)
        opted_in = frozenset(group for group, names in OPT_IN.items()
                             if any(name in overrides for name in names))
        return cls(params, opted_in, tuple(model_params))

    @property
    def optimizers(self) -> tuple[str, ...]:
        return _options(self.params["optimizer"])

    @property
    def schedulers(self) -> tuple[str, ...]:
        return _options(self.params["scheduler"])

    def walk(self, draw: Draw) -> dict[str, Value]:
        """Draw one configuration; `draw(param, params_so_far)` supplies each value."""
        values: dict[str, Value] = {}
        for param in self._branch(values):
            values[param.name] = draw(param, values)
        return values

    def _branch(self, values: Mapping[str, Value]) -> Iterator[Param]:
        """The parameters of the branch that `values` takes, yielded as they are needed."""
        p = self.params
        yield p["optimizer"]
        yield p["lr"]
        if OPTIMIZERS[values["optimizer"]].weight_decay:
            yield from self._toggled("use_weight_decay", "weight_decay", values)
        for declared in OPTIMIZERS[values["optimizer"]].params:
            if declared.applies(values):
                yield p[declared.name]
        yield p["scheduler"]
        spec = SCHEDULERS[values["scheduler"]]
        for declared in spec.params:
            if declared.applies(values):
                yield p[declared.name]
        if spec.allows_warmup:
            yield p[WARMUP.name]
        if "batch_size" in self.opted_in:
            yield p[BATCH_SIZE.name]
        if "clip_grad_norm" in self.opted_in:
            yield from self._toggled(USE_CLIP_GRAD_NORM.name, CLIP_GRAD_NORM.name, values)
        if "head_lr_mult" in self.opted_in:
            yield p[HEAD_LR_MULT.name]
        for declared in self.model:
            if declared.applies(values):
                yield p[declared.name]

    def _toggled(self, toggle: str, value: str, values: Mapping[str, Value]) -> Iterator[Param]:
        """A value behind an on/off switch (a log-scale range can't reach 0): a fixed value
        alone, else the switch and the value where it is on."""
        p = self.params
        if p[value].fixed:
            yield p[value]
            return
        yield p[toggle]
        if values[toggle]:
            yield p[value]

    def suggest(self, trial: optuna.Trial) -> dict[str, Value]:
        """Draw one configuration from an Optuna trial."""
        return self.walk(lambda param, _: param.suggest(trial))

    def complete(self, given: Mapping[str, Any]) -> dict[str, Value]:
        """A configuration from given values (validated), the study's fixed values and the
        defaults; every given value must belong to the branch it selects. A given opt-in
        parameter turns its group on for this configuration."""
        base = {**base_params(), **{p.name: p for p in self.model}}
        unknown = [name for name in given if name not in base]
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r}; {_known(base)}")
        checked = {name: base[name].validate(value) for name, value in given.items()}
        derived = set()
        for value_name, toggle in _TOGGLES.items():
            if value_name in checked and toggle not in checked:
                checked[toggle] = checked[value_name] > 0
                derived.add(toggle)
        opted_in = self.opted_in | {group for group, names in OPT_IN.items()
                                    if any(name in checked for name in names)}
        space = SearchSpace(self.params, opted_in, self.model)

        def draw(param: Param, so_far: Mapping[str, Value]) -> Value:
            if param.name in checked:
                return checked[param.name]
            if param.fixed:
                return param.fixed[0]
            return param.default_for(so_far)

        values = space.walk(draw)
        unused = [name for name in checked
                  if name not in values and name not in derived and name not in _TOGGLES]
        if unused:
            raise ConfigError(
                f"parameter {unused[0]!r} does not apply to optimizer {values['optimizer']!r} "
                f"with scheduler {values['scheduler']!r}"
            )
        return values

    def configurations(self) -> list[dict[str, Value]]:
        """Every distinct configuration of the space, for a grid search. Branches multiply
        only the parameters they take (no duplicates from parameters a branch lacks)."""
        found: list[dict[str, Value]] = []

        def extend(chosen: dict[str, Value]) -> None:
            values: dict[str, Value] = {}
            for param in self._branch(values):
                if param.name not in chosen:
                    for value in param.grid_values():
                        extend({**chosen, param.name: value})
                    return
                values[param.name] = chosen[param.name]
            found.append(values)

        extend({})
        return found

    def relevant(self) -> list[Param]:
        """The parameters this study's optimizers and schedulers can take, in walk order."""
        names: list[str] = ["optimizer", "lr"]
        if any(OPTIMIZERS[name].weight_decay for name in self.optimizers):
            names += ["use_weight_decay", "weight_decay"]
        for name in self.optimizers:
            names += [p.name for p in OPTIMIZERS[name].params]
        names.append("scheduler")
        for name in self.schedulers:
            names += [p.name for p in SCHEDULERS[name].params]
        if any(SCHEDULERS[name].allows_warmup for name in self.schedulers):
            names.append(WARMUP.name)
        for group, group_names in OPT_IN.items():
            if group in self.opted_in:
                names += list(group_names)
        names += [p.name for p in self.model]
        return [self.params[name] for name in dict.fromkeys(names)]


def _options(param: Param) -> tuple[str, ...]:
    return (str(param.fixed[0]),) if param.fixed else tuple(str(c) for c in param.choices)


def _known(params: Mapping[str, Param]) -> str:
    return "known: " + ", ".join(params)
