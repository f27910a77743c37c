"""One hyperparameter declared as data: its kind, range, default and valid bounds.

Registries (optimizers, schedulers) declare their parameters with `Param`; a study file narrows a
range, restricts choices, lists values or fixes a value (`Param.overridden`); one validator checks
every value against one message template ("must be X, got Y").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna

Value = float | int | str | bool

@dataclass(frozen=True)
class Param:
    """A searchable hyperparameter.

    `low`/`high`/`log` is the default search range; `bounds` are the values that make sense at
    all (a study file may fix or narrow a parameter anywhere inside them). `when` makes the
    parameter conditional on the values drawn before it (e.g. nesterov only with momentum > 0).
    `fixed` holds the one value a study file fixed, as a 1-tuple (empty: searched).
    """

    name: str
    kind: str
    help: str
    default: Value | Callable[[Mapping[str, Value]], Value]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Value, ...] = ()
    bounds: tuple[float, float] | None = None
    when: Callable[[Mapping[str, Value]], bool] | None = None
    fixed: tuple[Value, ...] = ()

    def applies(self, params: Mapping[str, Value]) -> bool:
        return self.when is None or self.when(params)

    def default_for(self, params: Mapping[str, Value]) -> Value:
        return self.default(params) if callable(self.default) else self.default

    # -- validation -------------------------------------------------------------------------
    def validate(self, value: Any, where: str = "") -> Value:
        """Return `value` coerced to this parameter's type, or raise one clear ConfigError."""
        label = f"{where}{self.name}"
        if self.kind == "categorical":
            for choice in self.choices:
                if _same_choice(choice, value):
                    return choice
            known = ", ".join(str(c) for c in self.choices)
            raise ConfigError(f"{label} must be one of {known}; got {value!r}")
        number = _as_number(value, integer=self.kind == "int")
        if number is None:
            expected = "an integer" if self.kind == "int" else "a number"
            raise ConfigError(f"{label} must be {expected}; got {value!r}")
        if self.bounds is not None:
            lo, hi = self.bounds
            if not lo <= number <= hi:
                raise ConfigError(f"{label} must be in [{lo:g}, {hi:g}]; got {number:g}")
        return number

    # -- study-file overrides ---------------------------------------------------------------
    def overridden(self, override: Any, where: str = "") -> Param:
        """This parameter with a study file's override applied.

        A plain value fixes it; a table narrows it: `{low, high}` (and `log`), `{choices}` for a
        categorical, `{values}` to search a list of numbers (needed by the grid sampler).
        """
        label = f"{where}{self.name}"
        if not isinstance(override, Mapping):
            return replace(self, fixed=(self.validate(override, where),))
        unknown = set(override) - {"low", "high", "log", "choices", "values"}
        if unknown:
            raise ConfigError(
                f"{label}: unknown key {sorted(unknown)[0]!r}; "
                "a parameter takes a value, or a table with low/high/log, choices or values"
            )
        if "values" in override or "choices" in override:
            key = "values" if "values" in override else "choices"
            raw = override[key]
            if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
                raise ConfigError(f"{label}.{key} must be a non-empty list; got {raw!r}")
            values = tuple(dict.fromkeys(self.validate(v, where) for v in raw))
            if len(values) == 1:
                return replace(self, fixed=values)
            return replace(self, kind="categorical", choices=values, low=None, high=None)
        if self.kind == "categorical":
            raise ConfigError(f"{label} is categorical: give choices = [...], or one value")
        low = self.validate(override.get("low", self.low), where)
        high = self.validate(override.get("high", self.high), where)
        log = bool(override.get("log", self.log))
        if low > high:
            raise ConfigError(f"{label}: range is inverted (low {low:g} > high {high:g})")
        if low == high:
            raise ConfigError(
                f"{label}: range is empty (low == high == {low:g}); to fix it write "
                f"{self.name} = {low:g}"
            )
        if log and low <= 0:
            raise ConfigError(f"{label}: a log range needs low > 0; got {low:g}")
        return replace(self, low=low, high=high, log=log)

    # -- sampling ---------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> Value:
        """Draw this parameter from an Optuna trial; a fixed value is recorded as a param too,
        so every trial shows its whole configuration in the dashboard and in exports."""
        if self.fixed:
            value = self.fixed[0]
            if self.kind == "float":
                return trial.suggest_float(self.name, float(value), float(value))
            if self.kind == "int":
                return trial.suggest_int(self.name, int(value), int(value))
            return trial.suggest_categorical(self.name, [value])
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid_values(self) -> list[Value]:
        """The finite list of values a grid search takes for this parameter."""
        if self.fixed:
            return [self.fixed[0]]
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log and self.high - self.low <= 20:
            return list(range(int(self.low), int(self.high) + 1))
        raise ConfigError(
            f"the grid sampler needs a finite set of values for {self.name}: fix it "
            f"({self.name} = ...) or list them ({self.name} = {{ values = [...] }})"
        )

    def describe(self) -> str:
        """The parameter's current search domain, in words (for `hpsearch space`)."""
        if self.fixed:
            return f"fixed {self.fixed[0]!r}"
        if self.kind == "categorical":
            return "one of " + ", ".join(str(c) for c in self.choices)
        scale = "log" if self.log else "linear"
        return f"{self.kind} [{self.low:g}, {self.high:g}] {scale}"


def _same_choice(choice: Value, value: Any) -> bool:
    if isinstance(choice, bool) or isinstance(value, bool):
        return isinstance(choice, bool) and _as_bool(value) is choice
    if isinstance(choice, str):
        return str(value) == choice
    number = _as_number(value, integer=False)
    return number is not None and number == choice


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    return None


def _as_number(value: Any, integer: bool) -> float | int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    if integer:
        return int(number) if number.is_integer() else None
    return number


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a `name=value` command-line assignment."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--set expects name=value; got {text!r}")
    return name.strip(), value.strip()

