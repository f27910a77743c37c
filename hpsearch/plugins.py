"""Your own optimizers and schedulers, and the user code a study file may name.

Register from Python (`register_optimizer(OptimizerSpec(...))`, `register_scheduler(...)`) in a
module that a study file lists in `[plugins] modules = ["mypkg.hp"]`, or publish the spec as a
package entry point in the group `hpsearch.optimizers` / `hpsearch.schedulers` (entry point
name = the spec's name). Every study file is parsed after the entry points were loaded (once per
process) and its plugin modules imported, so a stored study that names a registered optimizer
resumes, re-trains and runs in worker processes like one that names a built-in.

Registered names never clash with the built-ins, and a registered optimizer joins a study's
search only where the study file names it in `[search] optimizers = [...]`: installing a plugin
does not change the space of any existing study. Study files stay data: they only name modules
and functions; the code is the user's own, trusted, imported like any Python import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from hpsearch.errors import ConfigError
from hpsearch.optimizers import BUILTIN_OPTIMIZERS, OPTIMIZERS, OptimizerSpec
from hpsearch.params import Param
from hpsearch.schedulers import BUILTIN_SCHEDULERS, SCHEDULERS, SchedulerSpec
from hpsearch.space import core_params

log = logging.getLogger(__name__)

OPTIMIZER_GROUP = "hpsearch.optimizers"
SCHEDULER_GROUP = "hpsearch.schedulers"

# Lowercase, so the names read the same in the dashboard, in CSV columns and on the command line.
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_entry_points_loaded = False

Spec = TypeVar("Spec", OptimizerSpec, SchedulerSpec)


def register_optimizer(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add `spec` to the optimizers a study may name. Registering the same spec again is a
    no-op; another spec under a registered name needs `replace=True` (a notebook re-run)."""
    if not isinstance(spec, OptimizerSpec):
        raise ConfigError(f"register_optimizer takes an OptimizerSpec; got {spec!r}")
    if not isinstance(spec.default_lr, int | float) or not spec.default_lr > 0:
        raise ConfigError(f"optimizer {spec.name!r}: default_lr must be > 0; "
                          f"got {spec.default_lr!r}")
    return _register(spec, "optimizer", OPTIMIZERS, BUILTIN_OPTIMIZERS, replace)


def register_scheduler(spec: SchedulerSpec, *, replace: bool = False) -> SchedulerSpec:
    """Add `spec` to the schedulers a study may name (see `register_optimizer`)."""
    if not isinstance(spec, SchedulerSpec):
        raise ConfigError(f"register_scheduler takes a SchedulerSpec; got {spec!r}")
    if spec.build is not None and not callable(spec.build):
        raise ConfigError(f"scheduler {spec.name!r}: build must be callable or None; "
                          f"got {spec.build!r}")
    return _register(spec, "scheduler", SCHEDULERS, BUILTIN_SCHEDULERS, replace)


def _register(spec: Spec, kind: str, registry: dict[str, Spec], builtin: Sequence[str],
              replace: bool) -> Spec:
    name = spec.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{kind} name must be lowercase letters, digits and _ (starting with "
                          f"a letter); got {name!r}")
    if name in builtin:
        raise ConfigError(f"{kind} {name!r} is built in; register yours under another name")
    previous = registry.get(name)
    if previous is spec:
        return spec
    if previous is not None and not replace:
        raise ConfigError(f"{kind} {name!r} is already registered; pass replace=True to "
                          "register another spec under that name")
    _check_params(spec, kind)
    registry[name] = spec
    try:
        _check_no_clash()
    except ConfigError:
        if previous is None:
            del registry[name]
        else:
            registry[name] = previous
        raise
    return spec


def _check_params(spec: OptimizerSpec | SchedulerSpec, kind: str) -> None:
    for param in spec.params:
        if not isinstance(param, Param):
            raise ConfigError(f"{kind} {spec.name!r}: params must be Param objects; "
                              f"got {param!r}")
        check_param(param, f"{kind} {spec.name!r}: ")


def check_param(param: Param, where: str) -> None:
    """A declared parameter must be able to take its own default."""
    if not callable(param.default):
        param.validate(param.default, f"{where}the default of ")


def _check_no_clash() -> None:
    """Two declarations of one parameter name must be the same Param (as built-ins share
    `momentum`): the space holds one parameter per name."""
    seen: dict[str, tuple[Param, str]] = {}
    declared = [(p, "hpsearch") for p in core_params()]
    declared += [(p, f"optimizer {s.name!r}") for s in OPTIMIZERS.values() for p in s.params]
    declared += [(p, f"scheduler {s.name!r}") for s in SCHEDULERS.values() for p in s.params]
    for param, owner in declared:
        if param.name in ("optimizer", "scheduler"):
            raise ConfigError(f"{owner}: a parameter may not be named {param.name!r}")
        if param.name in seen and seen[param.name][0] != param:
            raise ConfigError(
                f"{owner}: parameter {param.name!r} is already declared differently by "
                f"{seen[param.name][1]}; reuse that Param object or choose another name"
            )
        seen.setdefault(param.name, (param, owner))


def load_plugins(modules: Iterable[str] = (), where: str = "") -> None:
    """Load the entry points (once per process), then import `modules` (their import
    registers what they define); `where` prefixes error messages."""
    load_entry_points()
    for name in modules:
        import_user_module(name, f"{where}plugin module {name!r}")


def load_entry_points() -> None:
    """Register every spec published in the hpsearch entry-point groups, once per process. A
    broken entry point is logged and skipped: it must not break studies that don't use it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group, register in ((OPTIMIZER_GROUP, register_optimizer),
                            (SCHEDULER_GROUP, register_scheduler)):
        for entry_point in importlib.metadata.entry_points(group=group):
            try:
                spec = entry_point.load()
                if getattr(spec, "name", None) != entry_point.name:
                    raise ConfigError(f"it loads {spec!r}, whose name is not "
                                      f"{entry_point.name!r}")
                register(spec)
            except Exception as exc:  # a plugin's bug is its own: report it, go on
                log.warning("entry point %r in group %s (%s) is skipped: %s",
                            entry_point.name, group, entry_point.value, _one_line(exc))


def import_user_module(name: str, what: str) -> ModuleType:
    """Import the user's module `name` as `python` would from the current folder."""
    if not _MODULE.fullmatch(name):
        raise ConfigError(f"{what} must be a dotted module name; got {name!r}")
    # A console script's sys.path lacks the current folder; a user's `models.py` beside the
    # study is where people expect it. Appended, so it never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise ConfigError(f"{what} cannot be imported: no module named {exc.name!r} "
                              f"(from {os.getcwd()} or the installed packages)") from exc
        raise ConfigError(f"{what} failed while importing: {_one_line(exc)}") from exc
    except Exception as exc:  # the user's code: say where it failed, in one line
        raise ConfigError(f"{what} failed while importing: {_one_line(exc)}") from exc


def resolve_object(reference: str, what: str) -> Any:
    """The object named `package.module:attribute` (the attribute may be dotted)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute or not _MODULE.fullmatch(attribute):
        raise ConfigError(f"{what} must be 'package.module:function'; got {reference!r}")
    found: Any = import_user_module(module_name, what)
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{what}: {module_name} has no attribute {attribute!r}")
        found = getattr(found, part)
    return found


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
