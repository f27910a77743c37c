"""MODELS: name -> factory(n_inputs, n_outputs, **options) -> nn.Module; and your own factory.

A study file names your factory as `factory = "package.module:function"` in [model]: it is
imported (your trusted code; the study file itself only names it) and called as
`function(n_inputs, n_outputs, **options, **searched)`, where `options` are the [model] table's
other keys and `searched` the trial's values of the parameters the factory declares with
`@searches(Param(...), ...)`. Those parameters join the study's space like the built-in ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from hpsearch.errors import ConfigError
from hpsearch.params import Param, Value
from hpsearch.plugins import check_param, resolve_object

if TYPE_CHECKING:
    from torch import nn

# torch is imported where a model is built, not with the registry: a study file is read (for
# `hpsearch space`, the reports, the dashboard) without torch.


@functools.cache
def activations() -> dict[str, type[nn.Module]]:
    """`ACTIVATIONS`: an activation's name -> its torch.nn module class."""
    from torch import nn

    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
            "silu": nn.SiLU}


def __getattr__(name: str) -> Any:
    if name == "ACTIVATIONS":  # built on first use, with torch
        return activations()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mlp(
    n_inputs: int, n_outputs: int, hidden: Sequence[int] = (10, 10), activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multi-layer perceptron; seed 004's wine model is mlp(13, 3, hidden=[10, 10])."""
    from torch import nn

    if activation not in activations():
        raise ConfigError(
            f"model.activation {activation!r} is unknown; known: {', '.join(activations())}"
        )
    if any(int(width) < 1 for width in hidden):
        raise ConfigError(f"model.hidden must list positive layer widths; got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1); got {dropout}")
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [nn.Linear(width, int(size)), activations()[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def linear(n_inputs: int, n_outputs: int) -> nn.Sequential:
    """One linear layer: seed 003's linear regression."""
    from torch import nn

    return nn.Sequential(nn.Linear(n_inputs, n_outputs))


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "linear": linear}


# The attribute `searches` sets on a factory: the parameters it wants drawn for each trial.
SEARCHED_ATTR = "hpsearch_params"

Factory = TypeVar("Factory", bound=Callable[..., "nn.Module"])


def searches(*params: Param) -> Callable[[Factory], Factory]:
    """Declare a model factory's own searched parameters; each trial's values are passed to it
    as keyword arguments of the same names::

        @searches(Param("width", "int", "hidden width", default=32, low=8, high=128, log=True))
        def net(n_inputs: int, n_outputs: int, width: int = 32) -> nn.Module: ...
    """

    def mark(factory: Factory) -> Factory:
        setattr(factory, SEARCHED_ATTR, tuple(params))
        return factory

    return mark


def is_factory_path(kind: str) -> bool:
    """`package.module:function` names a user's factory; a plain word a registered model."""
    return ":" in kind


def model_factory(kind: str, where: str = "") -> Callable[..., nn.Module]:
    """The factory of a registered model or of a `package.module:function` path."""
    if not is_factory_path(kind):
        if kind not in MODELS:
            raise ConfigError(f"model.kind {kind!r} is unknown; known: {', '.join(MODELS)}")
        return MODELS[kind]
    factory = resolve_object(kind, f"{where}model factory {kind!r}")
    if not callable(factory):
        raise ConfigError(f"{where}model factory {kind!r} must be callable; got {factory!r}")
    return factory


def searched_params(kind: str, options: Mapping[str, Any], where: str = "") -> tuple[Param, ...]:
    """The parameters a user's factory declares, checked against its signature and the fixed
    options (a parameter is either fixed in [model] or searched, not both)."""
    if not is_factory_path(kind):
        return ()
    factory = model_factory(kind, where)
    declared = tuple(getattr(factory, SEARCHED_ATTR, ()))
    label = f"{where}model factory {kind!r}"
    for param in declared:
        if not isinstance(param, Param):
            raise ConfigError(f"{label}: @searches takes Param objects; got {param!r}")
        check_param(param, f"{label}: ")
        if param.name in options:
            raise ConfigError(
                f"{label}: {param.name!r} is searched; fix it in [search.params] "
                f"({param.name} = ...) instead of [model]"
            )
    try:
        inspect.signature(factory).bind(
            1, 1, **options, **{p.name: p.default for p in declared})
    except TypeError as exc:
        raise ConfigError(f"{label} cannot be called with n_inputs, n_outputs and "
                          f"{sorted([*options, *(p.name for p in declared)]) or 'no options'}"
                          f": {exc}") from None
    except ValueError:  # no signature to check (a builtin): the call will tell
        pass
    return declared


def build_model(
    kind: str, n_inputs: int, n_outputs: int, options: Mapping[str, Any] | None = None,
    searched: Mapping[str, Value] | None = None,
) -> nn.Module:
    """The model: a registered one (`mlp`, `linear`) or a user's factory, with the fixed
    options and the trial's values of the factory's searched parameters."""
    from torch import nn

    factory = model_factory(kind)
    options = dict(options or {})
    if not is_factory_path(kind):
        try:
            return factory(n_inputs, n_outputs, **options)
        except TypeError as exc:
            raise ConfigError(f"model {kind!r}: bad options {options}: {exc}") from None
    # A user's factory was checked against its signature when the study was loaded, so a
    # TypeError from here on is the factory's own and keeps its traceback.
    model = factory(n_inputs, n_outputs, **options, **dict(searched or {}))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {kind!r} must return a torch.nn.Module; got "
                          f"{type(model).__name__}")
    return model


def head_and_body(model: nn.Module, kind: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The model's head (last layer) and the rest, for a head learning rate of its own.

    The head is the module in the model's `head` attribute, else, for an nn.Sequential (the
    built-in mlp), its last layer that has parameters."""
    from torch import nn

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) and isinstance(model, nn.Sequential):
        head = next((layer for layer in reversed(model)
                     if next(layer.parameters(), None) is not None), None)
    if not isinstance(head, nn.Module):
        raise ConfigError(
            f"head_lr_mult needs to know the model's head: model {kind!r} has no `head` "
            "attribute (an nn.Module) and is not an nn.Sequential"
        )
    head_params = [p for p in head.parameters() if p.requires_grad]
    in_head = {id(p) for p in head_params}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
    if not head_params or not body:
        raise ConfigError(f"head_lr_mult needs a model with a head and a body to train; model "
                          f"{kind!r} has {len(head_params)} head and {len(body)} body "
                          "parameter tensors")
    return head_params, body
