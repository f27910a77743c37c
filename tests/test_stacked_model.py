"""The stacked model runs each member as its own model would, and its hand-written backward pass
gives autograd's gradient.

Every test builds MEMBERS models of one shape (each from its own seed, in float64), stacks them,
and compares with torch itself: `forward` with each member's own nn.Module, and `loss_and_grad`
with autograd's `loss.sum().backward()` through `forward`, the losses written with
torch.nn.functional. Within 1e-12: the hand-written pass uses torch's own backward kernels but
groups a few operations differently (the softmax's gradient, products over shared rows), so
not always bit for bit (the losses are).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from conftest import default_dtype
from torch import nn
from torch.nn import functional

from hpsearch.engines.stacked_model import StackedModel, why_not_stackable
from hpsearch.models import ACTIVATIONS, linear, mlp

MEMBERS, ROWS, FEATURES, OUTPUTS = 4, 9, 5, 3
TOLERANCE = 1e-12

# name -> factory(n_inputs, n_outputs): every built-in activation, and user-style models with
# what the built-in ones lack.
MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    **{f"mlp_{name}": lambda n_in, n_out, name=name: mlp(n_in, n_out, hidden=(7, 6),
                                                         activation=name)
       for name in ACTIVATIONS},
    "gelu_tanh": lambda n_in, n_out: nn.Sequential(
        nn.Linear(n_in, 7), nn.GELU(approximate="tanh"), nn.Linear(7, n_out)),
    "identity_and_inplace": lambda n_in, n_out: nn.Sequential(
        nn.Linear(n_in, 7), nn.ReLU(inplace=True), nn.Identity(), nn.Linear(7, 6),
        nn.SiLU(inplace=True), nn.Linear(6, n_out)),
    "linear": linear,
    "no_bias": lambda n_in, n_out: nn.Sequential(
        nn.Linear(n_in, 7, bias=False), nn.Tanh(), nn.Linear(7, n_out, bias=False)),
    # Layers before the first Linear one act on the features: no gradient flows into them.
    "activation_first": lambda n_in, n_out: nn.Sequential(
        nn.Sigmoid(), nn.Dropout(0.0), nn.Linear(n_in, 7), nn.ReLU(), nn.Linear(7, n_out)),
}


def members_of(kind: str) -> list[nn.Module]:
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        models.append(MODELS[kind](FEATURES, OUTPUTS).double())
    return models


def stacked(models: list[nn.Module]) -> tuple[StackedModel, torch.Tensor]:
    return StackedModel(models[0]), torch.stack([StackedModel.flatten(m) for m in models])


def batch(classify: bool, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets: the same rows for every member, or each member's own."""
    generator = torch.Generator().manual_seed(7)
    lead = (ROWS,) if shared else (MEMBERS, ROWS)
    features = torch.randn(*lead, FEATURES, generator=generator, dtype=torch.float64)
    if classify:
        return features, torch.randint(0, OUTPUTS, lead, generator=generator)
    return features, torch.randn(*lead, OUTPUTS, generator=generator, dtype=torch.float64)


def autograd_loss_and_grad(layout: StackedModel, flat: torch.Tensor, features: torch.Tensor,
                           target: torch.Tensor,
                           classify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = flat.clone().requires_grad_(True)
    output = layout.forward(leaf, features)
    if classify:
        losses = functional.cross_entropy(
            output.reshape(MEMBERS * ROWS, OUTPUTS), target.expand(MEMBERS, ROWS).reshape(-1),
            reduction="none").view(MEMBERS, ROWS).mean(1)
    else:
        losses = functional.mse_loss(output, target.expand_as(output),
                                     reduction="none").mean(dim=(1, 2))
    losses.sum().backward()
    return losses.detach(), leaf.grad


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE), \
        f"largest difference {(got - want).abs().max().item():.3g}"


@pytest.mark.parametrize("shared", [True, False], ids=["shared_rows", "own_rows"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_forward_runs_every_member_as_its_own_model(kind: str, shared: bool):
    models = members_of(kind)
    layout, flat = stacked(models)
    features, _ = batch(classify=True, shared=shared)
    output = layout.forward(flat, features)
    with torch.no_grad():
        for member, model in enumerate(models):
            rows = features if shared else features[member]
            assert_close(output[member], model(rows))


@pytest.mark.parametrize("shared", [True, False], ids=["shared_rows", "own_rows"])
@pytest.mark.parametrize("classify", [True, False], ids=["classification", "regression"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_loss_and_grad_give_autograds_losses_and_gradient(kind: str, classify: bool,
                                                          shared: bool):
    layout, flat = stacked(members_of(kind))
    features, target = batch(classify, shared)
    want_loss, want_grad = autograd_loss_and_grad(layout, flat, features, target, classify)
    loss, grad = layout.loss_and_grad(flat.requires_grad_(True), features, target, classify)
    assert not (loss.requires_grad or grad.requires_grad)  # no graph, even for such a `flat`
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)
    assert grad.abs().amax(dim=1).min() > 0  # every member's gradient reached its parameters


class _ShiftedReLU(nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) + 1.0


class _ScaledLinear(nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(input)


@pytest.mark.parametrize("layer", [_ShiftedReLU(), _ScaledLinear(4, 4), nn.LeakyReLU()])
def test_a_layer_the_stack_does_not_know_exactly_is_not_stacked(layer: nn.Module):
    """A subclass may compute something else than its base class: stacking it as its base
    would train it with the base's gradient."""
    reason = why_not_stackable(nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2)))
    assert reason == f"the model has a {type(layer).__name__} layer (only Linear layers and " \
                     "the activations relu, tanh, gelu, sigmoid, silu stack)"
    with pytest.raises(ValueError, match="only Linear layers"):
        StackedModel(nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_confident_members_gradient_is_autograds_to_the_smallest_normal_float(
        dtype: torch.dtype):
    """Log-probabilities far below the exp's normal range (there `loss_and_grad` clamps them,
    as torch's exp is slow there) still give autograd's gradient, to the smallest normal
    float."""
    models = [model.to(dtype) for model in members_of("mlp_relu")]
    layout, flat = stacked(models)
    # Every member very sure of its outputs, most of them wrong: log-probabilities of -1e4.
    flat = flat * 30
    features, target = batch(classify=True, shared=True)
    features = features.to(dtype)
    want_loss, want_grad = autograd_loss_and_grad(layout, flat, features, target, True)
    loss, grad = layout.loss_and_grad(flat, features, target, True)
    log_probs = torch.log_softmax(layout.forward(flat, features), dim=2)
    assert log_probs.min() < 2 * math.log(torch.finfo(dtype).tiny)  # deep in the clamped range
    tolerance = 1e-6 if dtype == torch.float32 else TOLERANCE
    assert torch.allclose(loss, want_loss, rtol=tolerance)
    # To rounding at the gradient's own scale (a clamp at -10 would miss by 1e-4 of it).
    scale = want_grad.abs().max().item()
    assert torch.allclose(grad, want_grad, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factory", [lambda: mlp(13, 3, hidden=(10, 10)),
                                     lambda: mlp(5, 2, hidden=(7,), activation="tanh"),
                                     lambda: linear(4, 1)], ids=["wine_mlp", "mlp", "linear"])
def test_initialised_rows_are_the_built_models_weights_bit_for_bit(
        factory: Callable[[], nn.Module], dtype: torch.dtype):
    with default_dtype(dtype):
        layout = StackedModel(factory())
        for seed in (0, 1, 12345):
            torch.manual_seed(seed)
            built = StackedModel.flatten(factory())
            row = layout.initialised(seed)
            assert row.dtype == dtype and torch.equal(row, built), seed


def test_the_shared_targets_one_hot_follows_a_new_target_and_dtype():
    """`loss_and_grad` keeps the last shared target's one-hot: another target (or dtype)
    gets its own."""
    layout, flat = stacked(members_of("mlp_relu"))
    features, target = batch(classify=True, shared=True)
    for rows_target, dtype in ((target, torch.float64), (target.flip(0), torch.float64),
                               (target.flip(0), torch.float32)):
        flat_, features_ = flat.to(dtype), features.to(dtype)
        want_loss, want_grad = autograd_loss_and_grad(layout, flat_, features_, rows_target,
                                                      True)
        loss, grad = layout.loss_and_grad(flat_, features_, rows_target, True)
        tolerance = 1e-6 if dtype == torch.float32 else TOLERANCE
        assert torch.allclose(loss, want_loss, rtol=tolerance)
        assert torch.allclose(grad, want_grad, rtol=tolerance, atol=tolerance)


def test_views_kept_for_a_flat_follow_its_updates_and_never_serve_autograd():
    """A cohort runs the same `flat`, updated in place, round after round: the views kept for
    it see each update; with autograd on, fresh views carry the graph."""
    layout, flat = stacked(members_of("mlp_relu"))
    features, target = batch(classify=True, shared=True)
    with torch.no_grad():
        layout.loss_and_grad(flat, features, target, True)  # views kept for `flat`
        flat.mul_(0.5)  # an optimizer's in-place step
        loss, grad = layout.loss_and_grad(flat, features, target, True)
    want_loss, want_grad = autograd_loss_and_grad(layout, flat.clone(), features, target, True)
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)
    # The same tensor with autograd on: the output depends on it through the graph.
    flat.requires_grad_(True)
    layout.forward(flat, features).sum().backward()
    assert flat.grad is not None and flat.grad.abs().sum() > 0
