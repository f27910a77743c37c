"""Many copies of one small model as one: the cohort engine's stacked model.

A stackable model is an `nn.Sequential` of `nn.Linear` layers and element-wise activations
(the built-in `mlp` and `linear`, or a user's factory that builds one). Each member's weights
are one row of a flat parameter tensor of shape (members, P), laid out in the order of
`model.parameters()`; a layer's weight is a view of its slice. One forward pass through the
stack runs every member with batched matrix products, so K members cost about what one costs
while the framework's per-call overhead dominates (it does, for the models hpsearch tunes).

Members are built by the model's own factory under their own seed, so a member starts from
exactly the weights the reference engine's model would start from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hpsearch.models import ACTIVATIONS

# Modules a stacked forward applies to (members, rows, features) tensors unchanged: they act
# element by element.
_ELEMENTWISE = (*ACTIVATIONS.values(), nn.Identity)


@dataclass(frozen=True)
class _Linear:
    weight: slice  # in a member's flat row
    bias: slice | None
    n_in: int
    n_out: int


Layer = _Linear | Callable[[torch.Tensor], torch.Tensor]


def why_not_stackable(model: nn.Module) -> str | None:
    """Why `model` cannot be stacked, or None when it can."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an nn.Sequential of Linear layers"
    for module in model:
        if isinstance(module, nn.Dropout):
            if module.p > 0:
                return "the model has dropout (random masks differ from member to member)"
        elif not isinstance(module, (nn.Linear, *_ELEMENTWISE)):
            return f"the model has a {type(module).__name__} layer (only Linear layers and " \
                   f"the activations {', '.join(ACTIVATIONS)} stack)"
    if not any(isinstance(module, nn.Linear) for module in model):
        return "the model has no Linear layer"
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    return None


class StackedModel:
    """The layout of one stackable model; runs a (members, P) parameter tensor."""

    def __init__(self, model: nn.Module):
        reason = why_not_stackable(model)
        if reason is not None:
            raise ValueError(reason)
        self.layers: list[Layer] = []
        offset = 0
        for module in model:
            if isinstance(module, nn.Linear):
                weight = slice(offset, offset + module.weight.numel())
                offset = weight.stop
                bias = None
                if module.bias is not None:
                    bias = slice(offset, offset + module.bias.numel())
                    offset = bias.stop
                self.layers.append(_Linear(weight, bias, module.in_features,
                                           module.out_features))
            elif not isinstance(module, nn.Dropout):
                self.layers.append(module)
        self.size = offset  # P: parameters per member
        if self.size != sum(p.numel() for p in model.parameters()):
            raise ValueError("the model's parameters are not all in its Linear layers")
        head = next(layer for layer in reversed(self.layers) if isinstance(layer, _Linear))
        # The head (the last layer), for a head learning rate of its own (head_lr_mult).
        self.head = torch.zeros(self.size, dtype=torch.bool)
        self.head[head.weight] = True
        if head.bias is not None:
            self.head[head.bias] = True

    @staticmethod
    def flatten(model: nn.Module) -> torch.Tensor:
        """One member's row: its parameters in `model.parameters()` order."""
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def forward(self, flat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Every member's output: `flat` is (members, P); `features` is (rows, F), the same
        rows for all members, or (members, rows, F). Returns (members, rows, outputs)."""
        members = flat.shape[0]
        hidden = features
        for layer in self.layers:
            if not isinstance(layer, _Linear):
                hidden = layer(hidden)
                continue
            # (members, in, out): nn.Linear's (out, in) weight, transposed for x @ W.T.
            weight = flat[:, layer.weight].view(members, layer.n_out, layer.n_in).transpose(1, 2)
            if hidden.dim() == 2:  # shared rows: broadcast them over the members
                hidden = torch.matmul(hidden, weight)
                if layer.bias is not None:
                    hidden = hidden + flat[:, layer.bias].unsqueeze(1)
            elif layer.bias is not None:
                hidden = torch.baddbmm(flat[:, layer.bias].unsqueeze(1), hidden, weight)
            else:
                hidden = torch.bmm(hidden, weight)
        return hidden
