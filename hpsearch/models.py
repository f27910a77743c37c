"""MODELS: name -> factory(n_inputs, n_outputs, **options) -> nn.Module."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from hpsearch.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
}


def mlp(
    n_inputs: int, n_outputs: int, hidden: Sequence[int] = (10, 10), activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multi-layer perceptron; seed 004's wine model is mlp(13, 3, hidden=[10, 10])."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"model.activation {activation!r} is unknown; known: {', '.join(ACTIVATIONS)}"
        )
    if any(int(width) < 1 for width in hidden):
        raise ConfigError(f"model.hidden must list positive layer widths; got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1); got {dropout}")
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [nn.Linear(width, int(size)), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def linear(n_inputs: int, n_outputs: int) -> nn.Sequential:
    """One linear layer: seed 003's linear regression."""
    return nn.Sequential(nn.Linear(n_inputs, n_outputs))


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "linear": linear}


def build_model(
    kind: str, n_inputs: int, n_outputs: int, options: Mapping[str, Any] | None = None
) -> nn.Module:
    if kind not in MODELS:
        raise ConfigError(f"model.kind {kind!r} is unknown; known: {', '.join(MODELS)}")
    try:
        return MODELS[kind](n_inputs, n_outputs, **dict(options or {}))
    except TypeError as exc:
        raise ConfigError(f"model {kind!r}: bad options {dict(options or {})}: {exc}") from None
