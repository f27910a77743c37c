"""The joint, conditional search space: optimizer x learning rate x weight decay x scheduler.

A trial's parameters are drawn in one fixed order (optimizer, lr, weight decay, the optimizer's
own parameters, scheduler, its parameters, warm-up); a parameter exists only where its branch
was taken. The same walk serves a search (values drawn from an Optuna trial) and `hpsearch
train` (values given on the command line, the rest fixed or default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpsearch.errors import ConfigError
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.params import Param, Value
from hpsearch.schedulers import SCHEDULERS, WARMUP

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


def _choice_param(name: str, registry: Mapping[str, Any], default: str, help_: str) -> Param:
    return Param(name, "categorical", help_, default=default, choices=tuple(registry))


def base_params() -> dict[str, Param]:
    """Every parameter hpsearch knows, by name, with its default range."""
    params = [
        _choice_param("optimizer", OPTIMIZERS, "sgd", "the optimizer"),
        LR, USE_WEIGHT_DECAY, WEIGHT_DECAY,
        _choice_param("scheduler", SCHEDULERS, "none", "the learning-rate schedule"),
        WARMUP,
    ]
    params += [p for spec in OPTIMIZERS.values() for p in spec.params]
    params += [p for spec in SCHEDULERS.values() for p in spec.params]
    return {p.name: p for p in params}


Draw = Callable[[Param, Mapping[str, Value]], Value]


@dataclass(frozen=True)
class SearchSpace:
    """The effective space of one study: every parameter by name, overrides applied."""

    params: Mapping[str, Param]

    @classmethod
    def build(
        cls, optimizers: list[str] | None = None, schedulers: list[str] | None = None,
        overrides: Mapping[str, Any] | None = None, where: str = "",
    ) -> SearchSpace:
        """Validate a study's choices and overrides; `where` prefixes error messages."""
        params = base_params()
        for key, chosen in (("optimizer", optimizers), ("scheduler", schedulers)):
            if chosen is None:
                continue
            if not chosen:
                raise ConfigError(f"{where}{key}s must name at least one {key}")
            params[key] = params[key].overridden({"choices": list(chosen)}, where)
        for name, override in (overrides or {}).items():
            if name in ("optimizer", "scheduler"):
                raise ConfigError(f"{where}{name}: choose them with {name}s = [...]")
            if name not in params:
                raise ConfigError(f"{where}unknown parameter {name!r}; {_known(params)}")
            params[name] = params[name].overridden(override, where)
        if params[WEIGHT_DECAY.name].fixed:
            params[USE_WEIGHT_DECAY.name] = params[USE_WEIGHT_DECAY.name].overridden(
                params[WEIGHT_DECAY.name].fixed[0] > 0
            )
        return cls(params)

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
        if p["weight_decay"].fixed:
            yield p["weight_decay"]
        else:
            yield p["use_weight_decay"]
            if values["use_weight_decay"]:
                yield p["weight_decay"]
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

    def suggest(self, trial: optuna.Trial) -> dict[str, Value]:
        """Draw one configuration from an Optuna trial."""
        return self.walk(lambda param, _: param.suggest(trial))

    def complete(self, given: Mapping[str, Any]) -> dict[str, Value]:
        """A configuration from given values (validated), the study's fixed values and the
        defaults; every given value must belong to the branch it selects."""
        base = base_params()
        unknown = [name for name in given if name not in base]
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r}; {_known(base)}")
        checked = {name: base[name].validate(value) for name, value in given.items()}
        if "weight_decay" in checked and "use_weight_decay" not in checked:
            checked["use_weight_decay"] = checked["weight_decay"] > 0

        def draw(param: Param, so_far: Mapping[str, Value]) -> Value:
            if param.name in checked:
                return checked[param.name]
            if param.fixed:
                return param.fixed[0]
            return param.default_for(so_far)

        values = self.walk(draw)
        unused = [name for name in checked if name not in values and name != "weight_decay"]
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
        names: list[str] = ["optimizer", "lr", "use_weight_decay", "weight_decay"]
        for name in self.optimizers:
            names += [p.name for p in OPTIMIZERS[name].params]
        names.append("scheduler")
        for name in self.schedulers:
            names += [p.name for p in SCHEDULERS[name].params]
        if any(SCHEDULERS[name].allows_warmup for name in self.schedulers):
            names.append(WARMUP.name)
        return [self.params[name] for name in dict.fromkeys(names)]


def _options(param: Param) -> tuple[str, ...]:
    return (str(param.fixed[0]),) if param.fixed else tuple(str(c) for c in param.choices)


def _known(params: Mapping[str, Param]) -> str:
    return "known: " + ", ".join(params)
