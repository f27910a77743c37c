"""Many copies of one small model as one: the cohort engine's stacked model.

A stackable model is an `nn.Sequential` of `nn.Linear` layers and element-wise activations
(the built-in `mlp` and `linear`, or a user's factory that builds one). Each member's weights
are one row of a flat parameter tensor of shape (members, P), laid out in the order of
`model.parameters()`; a layer's weight is a view of its slice. One forward pass through the
stack runs every member with one call per layer: a batched matrix product, or, where all
members take the same rows, one product with every member's weights stacked: a step makes as
many calls for K members as for one. Layers' values are feature-major, (members, features,
rows), so that each member's (out, in) weight multiplies them as stored and the loss's
softmax runs over the classes without a transposed copy.

Training does not go through autograd: `loss_and_grad` runs the forward pass, keeps each
layer's input, and runs the backward pass written out by hand. For models this small, autograd's
bookkeeping is a large part of a step (a graph node per op, and for each layer's slice of
`flat`, a zeroed (members, P) buffer its gradient is accumulated into); by hand, the backward
pass is about as many batched ops as the forward, and the gradient comes out as one
(members, P) tensor. The activations' derivatives are torch's own backward kernels, so the
gradient is the one `loss.sum().backward()` would give, to rounding
(tests/test_stacked_model.py). Only layers whose derivative is written here stack; a subclass
of one of them does not, as it may compute something else.

Members are built by the model's own factory under their own seed, so a member starts from
exactly the weights the reference engine's model would start from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional, init

from hpsearch.models import ACTIVATIONS

_aten = torch.ops.aten


@functools.cache
def _lowest_log_prob(dtype: torch.dtype) -> float:
    """The lowest log-probability whose exp is a normal float of `dtype` (-87 in float32)."""
    return float(math.ceil(math.log(torch.finfo(dtype).tiny)))


@dataclass(frozen=True)
class _Linear:
    weight: slice  # in a member's flat row
    bias: slice | None
    n_in: int
    n_out: int

    def views(self, flat: torch.Tensor) -> _LinearViews:
        """Every member's weight and bias: views of `flat`, (members, P)."""
        weight = flat[:, self.weight].view(flat.shape[0], self.n_out, self.n_in)
        return _LinearViews(weight, None if self.bias is None else
                            flat[:, self.bias].unsqueeze(2))


class _LinearViews(NamedTuple):
    """A Linear layer's parameters for every member, as views of the members' flat rows."""

    weight: torch.Tensor  # (members, out, in)
    bias: torch.Tensor | None  # (members, out, 1)

    def apply(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every member's output feature-major, (members, out, rows), from its inputs
        feature-major, (members, in, rows), or from the same rows for all, (rows, in).

        (Feature-major: a step's products, softmax and gradient are quicker in this layout
        than rows first, with subnormal floats flushed: see `cohort`.)"""
        if inputs.dim() == 2:
            # One product with all members' weights stacked: much quicker than a batched
            # product, which is one small product per member. (Stacking copies them:
            # a member's weights are not next to the next member's in `flat`.)
            members, n_out, n_in = self.weight.shape
            weights = self.weight.reshape(members * n_out, n_in)
            if self.bias is None:
                stacked = torch.mm(weights, inputs.T)
            else:
                stacked = torch.addmm(self.bias.reshape(-1, 1), weights, inputs.T)
            return stacked.view(members, n_out, len(inputs))
        output = torch.bmm(self.weight, inputs)
        # The bias added after the product, not by baddbmm: the same sums, and baddbmm's
        # broadcast bias cost more than the product itself.
        return output if self.bias is None else output.add_(self.bias)


@dataclass(frozen=True)
class _Activation:
    """An element-wise activation with its derivative."""

    function: Callable[[torch.Tensor], torch.Tensor]
    # (gradient w.r.t. the output, input, output) -> gradient w.r.t. the input
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


Layer = _Linear | _Activation


def _activation(module: nn.Module) -> _Activation | None:
    """`module` with its derivative, or None where the derivative is not written out here.

    By exact type, as a subclass may compute something else. Every option that changes an
    activation's values is read (GELU's `approximate`); `inplace` (ReLU, SiLU) changes none,
    and the stack never applies an activation in place.
    """
    kind = type(module)
    if kind is nn.ReLU:
        return _Activation(torch.relu, lambda grad, _, output:
                           _aten.threshold_backward(grad, output, 0))
    if kind is nn.Tanh:
        return _Activation(torch.tanh, lambda grad, _, output: _aten.tanh_backward(grad, output))
    if kind is nn.Sigmoid:
        return _Activation(torch.sigmoid, lambda grad, _, output:
                           _aten.sigmoid_backward(grad, output))
    if kind is nn.GELU:
        approximate = module.approximate
        return _Activation(partial(functional.gelu, approximate=approximate),
                           lambda grad, input, _:
                           _aten.gelu_backward(grad, input, approximate=approximate))
    if kind is nn.SiLU:
        return _Activation(functional.silu, lambda grad, input, _:
                           _aten.silu_backward(grad, input))
    return None


def _passes_through(module: nn.Module) -> bool:
    return type(module) is nn.Identity or (type(module) is nn.Dropout and module.p == 0)


def why_not_stackable(model: nn.Module) -> str | None:
    """Why `model` cannot be stacked, or None when it can."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an nn.Sequential of Linear layers"
    for module in model:
        if isinstance(module, nn.Dropout) and module.p > 0:
            return "the model has dropout (random masks differ from member to member)"
        if not (type(module) is nn.Linear or _passes_through(module)
                or _activation(module) is not None):
            stacking = [name for name, kind in ACTIVATIONS.items()
                        if _activation(kind()) is not None]
            return f"the model has a {type(module).__name__} layer (only Linear layers and " \
                   f"the activations {', '.join(stacking)} stack)"
    if not any(isinstance(module, nn.Linear) for module in model):
        return "the model has no Linear layer"
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    return None


def member_losses(output: torch.Tensor, target: torch.Tensor, classify: bool) -> torch.Tensor:
    """Each member's mean loss over its rows, (members,), as training minimises it; `output`
    is (members, rows, outputs). Classification: cross-entropy, `target` the class of each
    row, (rows,) for every member or (members, rows). Regression: squared error, the mean over
    rows and outputs; `target` (rows, outputs) or (members, rows, outputs)."""
    return _losses_and_terms(output.transpose(1, 2), target, classify)[0]


def _losses_and_terms(output: torch.Tensor, target: torch.Tensor,
                      classify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`member_losses` of feature-major outputs, (members, outputs, rows), and what their
    gradient is made of, feature-major: the log-probabilities (classification) or the
    residuals (regression)."""
    if classify:
        # Over the classes of (members, classes, rows): log_softmax over a short last
        # dimension (a few classes) is much slower. The stacked model's outputs are in this
        # layout already; others are copied into it.
        log_probs = torch.log_softmax(output.contiguous(), dim=1)
        # 0 - mean, not -mean: a perfect fit's loss is 0.0, as torch's cross_entropy gives
        # it, not -0.0 (which a leaderboard would print as "-0").
        mean_log_prob = log_probs.gather(1, _class_index(target, output)).mean(dim=(1, 2))
        return 0.0 - mean_log_prob, log_probs
    residuals = output - target.transpose(-1, -2)
    return residuals.square().mean(dim=(1, 2)), residuals


def _class_index(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Each row's class as an index into feature-major `output`'s classes: (members, 1,
    rows)."""
    return target.unsqueeze(-2).expand(output.shape[0], 1, output.shape[2])


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
            elif not _passes_through(module):
                self.layers.append(_activation(module))
        self.size = offset  # P: parameters per member
        if self.size != sum(p.numel() for p in model.parameters()):
            raise ValueError("the model's parameters are not all in its Linear layers")
        # Layers before the first Linear one act on the features alone: no gradient reaches
        # them.
        self.first_linear = next(i for i, layer in enumerate(self.layers)
                                 if isinstance(layer, _Linear))
        head = next(layer for layer in reversed(self.layers) if isinstance(layer, _Linear))
        # The head (the last layer), for a head learning rate of its own (head_lr_mult).
        self.head = torch.zeros(self.size, dtype=torch.bool)
        self.head[head.weight] = True
        if head.bias is not None:
            self.head[head.bias] = True
        # The last shared target's one-hot classes, feature-major (1, classes, rows), and the
        # target it is of (a full-batch study's target is the same tensor every step).
        self._one_hot: tuple[torch.Tensor, torch.Tensor] | None = None
        # The Linear layers' views of the last `flat` run without autograd, and that `flat`: a
        # cohort runs the same tensor (updated in place) round after round, and making every
        # layer's views again each round is overhead that a model this small notices.
        self._views: tuple[torch.Tensor, list[_LinearViews | None]] | None = None

    @staticmethod
    def flatten(model: nn.Module) -> torch.Tensor:
        """One member's row: its parameters in `model.parameters()` order."""
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def initialised(self, seed: int) -> torch.Tensor:
        """A member's row as `nn.Linear`'s own initialisation makes it after
        `torch.manual_seed(seed)`, in the default dtype: the same draws from a generator in the
        same state, through torch's init functions, without building the model (which costs
        far more than the draws). Only for models whose layers keep that initialisation (the
        built-in ones); a user's factory may set its own."""
        generator = torch.Generator().manual_seed(seed)
        row = torch.empty(self.size)
        for layer in self.layers:
            if isinstance(layer, _Linear):
                init.kaiming_uniform_(row[layer.weight].view(layer.n_out, layer.n_in),
                                      a=math.sqrt(5), generator=generator)
                if layer.bias is not None:  # nn.Linear.reset_parameters, as torch spells it
                    bound = 1 / math.sqrt(layer.n_in) if layer.n_in > 0 else 0
                    init.uniform_(row[layer.bias], -bound, bound, generator=generator)
        return row

    def forward(self, flat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Every member's output: `flat` is (members, P); `features` is (rows, F), the same
        rows for all members, or (members, rows, F). Returns (members, rows, outputs), a view
        of the feature-major (members, outputs, rows) result."""
        return self._layer_values(self._views_of(flat), features)[-1].transpose(1, 2)

    @torch.no_grad()
    def loss_and_grad(self, flat: torch.Tensor, features: torch.Tensor, target: torch.Tensor,
                      classify: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's loss (`member_losses` of its `forward` output), (members,), and the
        gradient of their sum w.r.t. `flat`, (members, P): what autograd's
        `loss.sum().backward()` leaves in `flat.grad`, without autograd."""
        views = self._views_of(flat)
        values = self._layer_values(views, features)
        output = values[-1]
        losses, grad = _losses_and_terms(output, target, classify)
        rows = output.shape[2]
        if classify:  # of -mean(log softmax(output)[class]): (softmax - one-hot) / rows
            # Clamped: torch's exp is far slower on a tensor where some log-probability's exp
            # is subnormal or 0 (below -87.3 in float32), and a confident member has many.
            # A probability moves by less than the smallest normal float (1.2e-38 in float32).
            grad.clamp_(min=_lowest_log_prob(grad.dtype)).exp_()
            if target.dim() == 1:
                # The same classes for every member: subtracting their one-hot is quicker
                # than the scatter, and gives the same values (x - 0 is x).
                grad.sub_(self._one_hot_of(target, grad))
            else:
                grad.scatter_(1, _class_index(target, output), -1.0, reduce="add")
            grad.div_(rows)
        else:  # of mean(residuals ** 2): 2 residuals / (rows * outputs)
            grad.mul_(2.0 / (rows * output.shape[1]))
        pieces: list[torch.Tensor] = []  # each layer's part of the gradient, the last first
        for position in range(len(self.layers) - 1, self.first_linear - 1, -1):
            layer, layer_input = self.layers[position], values[position]
            if isinstance(layer, _Activation):
                grad = layer.backward(grad, layer_input, values[position + 1])
                continue
            if layer.bias is not None:
                pieces.append(grad.sum(dim=2))
            # (members, out, rows) by the inputs' (rows, in): each member's (out, in) weight.
            weight_grad = torch.matmul(grad, layer_input) if layer_input.dim() == 2 else \
                torch.bmm(grad, layer_input.transpose(1, 2))
            pieces.append(weight_grad.reshape(len(flat), -1))
            if position > self.first_linear:
                grad = torch.bmm(views[position].weight.transpose(1, 2), grad)
        return losses, torch.cat(pieces[::-1], dim=1)

    def _one_hot_of(self, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`target`'s classes one-hot, (1, classes, rows) in `like`'s dtype and device."""
        if self._one_hot is None or self._one_hot[0] is not target or \
                self._one_hot[1].dtype != like.dtype:
            one_hot = torch.zeros(1, like.shape[1], len(target), dtype=like.dtype,
                                  device=like.device)
            one_hot.scatter_(1, target.view(1, 1, -1), 1.0)
            self._one_hot = target, one_hot
        return self._one_hot[1]

    def _views_of(self, flat: torch.Tensor) -> list[_LinearViews | None]:
        """Each layer's views of `flat` (None for an activation); kept for the next call
        with the same `flat` while autograd is off (views made with it on would record
        autograd's graph, and those made without it not)."""
        if torch.is_grad_enabled():
            return [layer.views(flat) if isinstance(layer, _Linear) else None
                    for layer in self.layers]
        if self._views is None or self._views[0] is not flat:
            self._views = flat, [layer.views(flat) if isinstance(layer, _Linear) else None
                                 for layer in self.layers]
        return self._views[1]

    def _layer_values(self, views: list[_LinearViews | None],
                      features: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's input, then the last layer's output, feature-major (members, features,
        rows), from the layers' `views` of the members' parameters; the same rows for all
        members stay (rows, features) until the first Linear layer."""
        values = [features if features.dim() == 2 else features.transpose(1, 2)]
        for layer, layer_views in zip(self.layers, views, strict=True):
            if isinstance(layer, _Activation):
                values.append(layer.function(values[-1]))
            else:
                values.append(layer_views.apply(values[-1]))
        return values
