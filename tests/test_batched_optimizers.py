"""The batched optimizers step every member exactly as torch.optim steps it alone.

Each test runs a mixed cohort (members differing in every hyperparameter) next to one real torch
optimizer per member, built as `hpsearch.training.build_optimizer` builds it, with the same
gradients and per-step lrs, and compares every member's parameters after every step: within
1e-12 in float64 (the batched forms regroup a few operations, so not bit for bit), and within
FLOAT32_TOLERANCE in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from conftest import default_dtype

from hpsearch.engines.batched_optimizers import BatchedOptimizer
from hpsearch.engines.batched_optimizers.adam import BatchedAdam
from hpsearch.optimizers import BUILTIN_OPTIMIZERS, OPTIMIZERS, weight_decay_of

SHAPES = [torch.Size([3, 4]), torch.Size([3]), torch.Size([2, 3])]
FLOAT64_TOLERANCE = 1e-12
# float32: the batched form rounds a few operations differently from torch (RAdam, RMSprop with
# momentum or centering, NAdam): about one ulp, under 1e-7 after 30 steps; the rest is bit for bit.
FLOAT32_TOLERANCE = 1e-6


def _wd(value: float | None) -> dict[str, Any]:
    if value is None:
        return {"use_weight_decay": False}
    return {"use_weight_decay": True, "weight_decay": value}


# Five members per optimizer, all different; the first two use no optional feature (no momentum,
# nesterov, amsgrad, centering), so that `extend` with the others brings those in mid-run.
COHORTS: dict[str, list[dict[str, Any]]] = {
    "sgd": [
        {"lr": 0.1, "momentum": 0.0, **_wd(None)},
        {"lr": 0.05, "momentum": 0.0, **_wd(1e-2)},
        {"lr": 0.02, "momentum": 0.9, "sgd_nesterov": True, **_wd(1e-3)},
        {"lr": 0.03, "momentum": 0.5, "sgd_nesterov": False, **_wd(None)},
        {"lr": 0.01, "momentum": 0.8, "sgd_nesterov": False, "sgd_dampening": 0.3, **_wd(0.1)},
    ],
    "adam": [
        {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "amsgrad": False, **_wd(None)},
        {"lr": 3e-2, "beta1": 0.8, "beta2": 0.95, "amsgrad": False, **_wd(1e-2)},
        {"lr": 5e-3, "beta1": 0.95, "beta2": 0.9, "amsgrad": True, **_wd(1e-3)},
        {"lr": 2e-2, "beta1": 0.85, "beta2": 0.99, "amsgrad": True, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.0, "beta2": 0.999, "amsgrad": False, **_wd(0.0)},
    ],
    "nadam": [
        {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.95, **_wd(1e-2)},
        {"lr": 5e-3, "beta1": 0.95, "beta2": 0.9, **_wd(1e-3)},
        {"lr": 2e-2, "beta1": 0.85, "beta2": 0.99, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.99, "beta2": 0.9999, **_wd(0.1)},
    ],
    # beta2 0.9 rectifies from step 5, 0.999 from step 6, 0.5 never: both branches, per member.
    "radam": [
        {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, **_wd(None)},
        {"lr": 3e-2, "beta1": 0.8, "beta2": 0.5, **_wd(1e-2)},
        {"lr": 5e-3, "beta1": 0.95, "beta2": 0.9, **_wd(1e-3)},
        {"lr": 2e-2, "beta1": 0.85, "beta2": 0.99, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.9, "beta2": 0.8, **_wd(0.1)},
    ],
    "adamax": [
        {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.95, **_wd(1e-2)},
        {"lr": 5e-3, "beta1": 0.95, "beta2": 0.9, **_wd(1e-3)},
        {"lr": 2e-2, "beta1": 0.85, "beta2": 0.99, **_wd(None)},
        {"lr": 1e-2, "beta1": 0.5, "beta2": 0.9999, **_wd(0.1)},
    ],
    "rmsprop": [
        {"lr": 1e-2, "rmsprop_alpha": 0.99, "momentum": 0.0, "rmsprop_centered": False,
         **_wd(None)},
        {"lr": 5e-3, "rmsprop_alpha": 0.9, "momentum": 0.0, "rmsprop_centered": False,
         **_wd(1e-2)},
        {"lr": 2e-3, "rmsprop_alpha": 0.95, "momentum": 0.9, "rmsprop_centered": True,
         **_wd(1e-3)},
        {"lr": 1e-3, "rmsprop_alpha": 0.8, "momentum": 0.5, "rmsprop_centered": False,
         **_wd(None)},
        {"lr": 3e-3, "rmsprop_alpha": 0.999, "momentum": 0.0, "rmsprop_centered": True,
         **_wd(0.1)},
    ],
    "adagrad": [
        {"lr": 1e-2, **_wd(None)},
        {"lr": 5e-2, **_wd(1e-2)},
        {"lr": 2e-2, **_wd(1e-3), "adagrad_lr_decay": 0.05},
        {"lr": 1e-1, **_wd(None)},
        {"lr": 3e-2, **_wd(0.1), "adagrad_lr_decay": 0.5},
    ],
    "adadelta": [
        {"lr": 1.0, "adadelta_rho": 0.9, **_wd(None)},
        {"lr": 0.5, "adadelta_rho": 0.95, **_wd(1e-2)},
        {"lr": 2.0, "adadelta_rho": 0.8, **_wd(1e-3)},
        {"lr": 1.5, "adadelta_rho": 0.99, **_wd(None)},
        {"lr": 0.8, "adadelta_rho": 0.85, **_wd(0.1)},
    ],
}
COHORTS["adamw"] = [{**member, **_wd(member.get("weight_decay", 0.05) or 0.05)}
                    if i % 2 else member for i, member in enumerate(COHORTS["adam"])]
COHORTS = {name: [{"optimizer": name, **member} for member in members]
           for name, members in COHORTS.items()}
NAMES = sorted(BUILTIN_OPTIMIZERS)


def batched(name: str, members: Sequence[Mapping[str, Any]],
            shapes: Sequence[torch.Size] = SHAPES, **options: Any) -> BatchedOptimizer:
    """The batched form of optimizer `name` over `members`, as the cohort engine makes it."""
    return OPTIMIZERS[name].batched_form()(members, shapes, **options)


def _torch_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The member's params completed with the space's defaults, as the space would give them."""
    spec = OPTIMIZERS[params["optimizer"]]
    return {**{p.name: p.default_for(params) for p in spec.params if p.applies(params)},
            **params}


class TorchMember:
    """One member trained by torch.optim itself, as build_optimizer builds its optimizer."""

    def __init__(self, params: Mapping[str, Any], tensors: Sequence[torch.Tensor]):
        self.tensors = [t.detach().clone() for t in tensors]
        options = _torch_options(params)
        self.optimizer = OPTIMIZERS[options["optimizer"]].build(
            self.tensors, float(options["lr"]), weight_decay_of(options), options)
        # Options hpsearch does not pass (yet); the batched form reads them from the member.
        group = self.optimizer.param_groups[0]
        if "sgd_dampening" in options:
            group["dampening"] = options["sgd_dampening"]
        if "adagrad_lr_decay" in options:
            group["lr_decay"] = options["adagrad_lr_decay"]

    def step(self, grads: Sequence[torch.Tensor], lr: float) -> None:
        self.optimizer.param_groups[0]["lr"] = lr
        for tensor, grad in zip(self.tensors, grads, strict=True):
            tensor.grad = grad.clone()
        self.optimizer.step()


class Run:
    """A batched cohort and its torch twins, stepped together with seeded gradients and lrs."""

    def __init__(self, name: str, members: list[dict[str, Any]], dtype: torch.dtype,
                 seed: int = 0):
        self.name = name
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(seed)
        self.members = list(members)
        self.params = [torch.randn((len(members), *s), generator=self.generator, dtype=dtype)
                       for s in SHAPES]
        self.batched = batched(name, members, dtype=dtype)
        self.twins = [TorchMember(m, [p[i] for p in self.params])
                      for i, m in enumerate(members)]
        self.t = 0

    def lrs(self) -> torch.Tensor:
        """Each member's lr this step: its base lr times a factor that moves every step, and
        differently per member, as a scheduler would move it."""
        base = torch.tensor([float(m["lr"]) for m in self.members], dtype=torch.float64)
        phase = torch.arange(len(self.members), dtype=torch.float64)
        return base * (0.55 + 0.45 * torch.cos(0.3 * self.t + phase))

    def step(self, steps: int = 1) -> None:
        for _ in range(steps):
            n = len(self.members)
            grads = [torch.randn((n, *s), generator=self.generator, dtype=self.dtype)
                     * (1 + torch.arange(n, dtype=self.dtype).view(n, *(1,) * len(s)))
                     for s in SHAPES]
            lr = self.lrs()
            # Every accepted lr form: [n], full [n, *shape] and [n, 1] (padded to [n, 1, 1]).
            lrs = [lr, lr.view(n, 1).expand(n, 3).to(self.dtype), lr.view(n, 1)]
            before = [g.clone() for g in grads]
            self.batched.step(self.params, grads, lrs)
            assert all(torch.equal(g, b) for g, b in zip(grads, before, strict=True)), \
                "step changed the gradients"
            for i, twin in enumerate(self.twins):
                twin.step([g[i] for g in grads], float(lr[i]))
            self.t += 1
            self.check()

    def check(self) -> None:
        tolerance = FLOAT64_TOLERANCE if self.dtype == torch.float64 else FLOAT32_TOLERANCE
        assert self.batched.n == len(self.twins)
        for i, twin in enumerate(self.twins):
            for j, tensor in enumerate(twin.tensors):
                torch.testing.assert_close(
                    self.params[j][i], tensor, rtol=tolerance, atol=tolerance,
                    msg=lambda m, i=i, j=j: f"{self.name} member {i} ({self.members[i]}), "
                                            f"tensor {j}, step {self.t}: {m}")

    def select(self, positions: list[int]) -> None:
        self.batched.select(torch.tensor(positions))
        self.params = [p[positions].clone() for p in self.params]
        self.members = [self.members[i] for i in positions]
        self.twins = [self.twins[i] for i in positions]

    def extend(self, members: list[dict[str, Any]]) -> None:
        fresh = [torch.randn((len(members), *s), generator=self.generator, dtype=self.dtype)
                 for s in SHAPES]
        self.batched.extend(batched(self.name, members, dtype=self.dtype))
        self.twins += [TorchMember(m, [p[i] for p in fresh]) for i, m in enumerate(members)]
        self.params = [torch.cat([p, f]) for p, f in zip(self.params, fresh, strict=True)]
        self.members += members


def test_every_builtin_optimizer_is_batched() -> None:
    assert set(COHORTS) == set(NAMES)
    for name in NAMES:
        assert issubclass(OPTIMIZERS[name].batched_form(), BatchedOptimizer)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_cohort_matches_torch_member_by_member(name: str) -> None:
    Run(name, COHORTS[name], torch.float64).step(30)


@pytest.mark.parametrize("name", NAMES)
def test_select_drops_and_reorders_members_mid_run(name: str) -> None:
    run = Run(name, COHORTS[name], torch.float64, seed=1)
    run.step(12)
    run.select([4, 2, 0])
    run.step(10)
    # Down to members without the optional features: their buffers go, the rest goes on.
    run.select([2])
    run.step(8)


@pytest.mark.parametrize("name", NAMES)
def test_extend_adds_fresh_members_mid_run(name: str) -> None:
    run = Run(name, COHORTS[name][:2], torch.float64, seed=2)
    run.step(10)
    # The newcomers bring momentum, nesterov, amsgrad, centering, dampening: new state buffers
    # for everyone, and step counts (bias corrections, RAdam's rectification) of their own.
    run.extend(COHORTS[name][2:])
    run.step(12)
    run.select([3, 0, 4])
    run.extend(COHORTS[name][1:2])
    run.step(8)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_within_a_small_tolerance_of_torch(name: str) -> None:
    Run(name, COHORTS[name], torch.float32, seed=3).step(30)


# Adam's family (Adamax too), interleaved: one batched optimizer steps them all (`BatchedAdam`).
ADAM_FAMILY = [member for members in zip(COHORTS["adam"], COHORTS["adamw"], COHORTS["nadam"],
                                         COHORTS["radam"], COHORTS["adamax"], strict=True)
               for member in members]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adams_family_in_one_batched_optimizer_matches_torch_member_by_member(
        dtype: torch.dtype) -> None:
    assert {OPTIMIZERS[name].batched_form()
            for name in ("adam", "adamw", "nadam", "radam", "adamax")} == {BatchedAdam}
    run = Run("adam", ADAM_FAMILY[:7], dtype, seed=6)
    # Step coefficients tabulated for 4 steps: the table grows as members go beyond.
    run.batched = batched("adam", ADAM_FAMILY[:7], dtype=dtype, horizon=4)
    assert run.batched.name == "adam"
    run.step(10)
    # Newcomers of every type, at step 0 while the others are at step 10, then with NAdam or
    # RAdam gone, or AdamW's decoupled decay alone.
    run.extend(ADAM_FAMILY[7:])
    run.step(12)
    run.select([i for i, m in enumerate(run.members) if m["optimizer"] != "nadam"])
    run.step(5)
    run.select([i for i, m in enumerate(run.members) if m["optimizer"] in ("adamw", "adamax")])
    run.step(5)
    run.select([i for i, m in enumerate(run.members) if m["optimizer"] == "adamw"])
    run.step(5)
    run.extend(ADAM_FAMILY[:5])
    run.step(40)


def test_nadam_follows_torchs_scalar_dtype_under_a_float64_default() -> None:
    # torch keeps NAdam's mu_product in float64 only under a float64 default dtype.
    with default_dtype(torch.float64):
        Run("nadam", COHORTS["nadam"], torch.float64, seed=4).step(30)


@pytest.mark.parametrize("name", NAMES)
def test_absent_keys_take_torchs_defaults(name: str) -> None:
    """A member that names only its optimizer and lr trains as torch's default optimizer
    (weight decay 0, as build_optimizer passes it)."""
    generator = torch.Generator().manual_seed(5)
    params = [torch.randn((1, *s), generator=generator, dtype=torch.float64) for s in SHAPES]
    tensors = [p[0].clone() for p in params]
    reference = OPTIMIZERS[name].torch_class(tensors, lr=0.01, weight_decay=0.0)
    stepped = batched(name, [{"optimizer": name, "lr": 0.01}], dtype=torch.float64)
    for _ in range(10):
        grads = [torch.randn((1, *s), generator=generator, dtype=torch.float64)
                 for s in SHAPES]
        stepped.step(params, grads, [torch.tensor([0.01], dtype=torch.float64)] * len(SHAPES))
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = grad[0].clone()
        reference.step()
        for param, tensor in zip(params, tensors, strict=True):
            torch.testing.assert_close(param[0], tensor, rtol=1e-12, atol=1e-12)


def test_one_flat_tensor_per_member() -> None:
    """The engine's usual call: one [n, P] tensor and lrs of shape [n, 1]."""
    members = COHORTS["adam"]
    generator = torch.Generator().manual_seed(6)
    flat = torch.randn(len(members), 50, generator=generator, dtype=torch.float64)
    twins = [TorchMember(m, [flat[i]]) for i, m in enumerate(members)]
    stepped = batched("adam", members, [torch.Size([50])], dtype=torch.float64)
    lr = torch.tensor([float(m["lr"]) for m in members], dtype=torch.float64)
    for _ in range(10):
        grad = torch.randn(len(members), 50, generator=generator, dtype=torch.float64)
        stepped.step([flat], [grad], [lr.view(-1, 1)])
        for i, twin in enumerate(twins):
            twin.step([grad[i]], float(lr[i]))
            torch.testing.assert_close(flat[i], twin.tensors[0], rtol=1e-12, atol=1e-12)


def test_unknown_or_mixed_optimizers_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="member 0 uses optimizer 'lbfgs', not 'adam'"):
        batched("adam", [{"optimizer": "lbfgs"}])
    with pytest.raises(ValueError, match="member 1 uses optimizer 'sgd', not 'adam'"):
        batched("adam", [COHORTS["adam"][0], COHORTS["sgd"][0]])
    with pytest.raises(ValueError, match="member 0 uses optimizer 'rmsprop', not 'adam'"):
        batched("adam", COHORTS["rmsprop"][:1])  # not of Adam's family
    adam = batched("adam", COHORTS["adam"])
    with pytest.raises(ValueError, match="extend"):
        adam.extend(batched("rmsprop", COHORTS["rmsprop"]))
    with pytest.raises(ValueError, match="same shapes"):
        adam.extend(batched("adam", COHORTS["adam"], SHAPES[:2]))


def test_invalid_member_options_fail_as_torch_fails() -> None:
    with pytest.raises(ValueError, match="member 0: sgd: invalid nesterov"):
        batched("sgd", [{"optimizer": "sgd", "momentum": 0.0, "sgd_nesterov": True}])
    with pytest.raises(ValueError, match="beta2"):
        batched("adam", [{"optimizer": "adam", "beta2": 1.0}])


def test_wrong_shapes_are_refused() -> None:
    sgd = batched("sgd", COHORTS["sgd"], dtype=torch.float64)
    params = [torch.zeros((4, *s), dtype=torch.float64) for s in SHAPES]
    with pytest.raises(ValueError, match="shape"):
        sgd.step(params, params, [torch.ones(4, dtype=torch.float64)] * 3)


def test_select_refuses_positions_out_of_range() -> None:
    adam = batched("adam", COHORTS["adam"])
    with pytest.raises(IndexError, match="out of range"):
        adam.select(torch.tensor([0, 5]))
    with pytest.raises(IndexError, match="out of range"):
        adam.select(torch.tensor([-1]))
    adam.select(torch.tensor([], dtype=torch.long))
    assert adam.n == 0


def test_adams_family_tabulates_a_bounded_window_of_steps() -> None:
    """A member may take hundreds of thousands of steps (small batches, many epochs): the
    table holds a window of them at a time, whatever the horizon."""
    n = len(ADAM_FAMILY)
    adam = batched("adam", ADAM_FAMILY, horizon=10**6)
    params = [torch.zeros((n, *shape)) for shape in SHAPES]
    adam.step(params, [torch.ones_like(p) for p in params], [torch.full((n,), 0.1)] * 3)
    assert adam._table.shape == (n, 256, 8)


@pytest.mark.parametrize("horizon", [4, 64])
def test_extending_with_members_that_stepped_elsewhere_keeps_their_step_counts(
        horizon: int) -> None:
    """`extend` takes another optimizer's members with their steps so far (NAdam's product
    included), in the middle of this one's window or at its end."""
    first = Run("adam", ADAM_FAMILY[:5], torch.float64, seed=7)
    first.batched = batched("adam", ADAM_FAMILY[:5], dtype=torch.float64, horizon=horizon)
    second = Run("adam", ADAM_FAMILY[5:], torch.float64, seed=8)
    first.step(3)
    second.step(6)
    first.batched.extend(second.batched)
    first.twins += second.twins
    first.params = [torch.cat([a, b]) for a, b in zip(first.params, second.params, strict=True)]
    first.members += second.members
    first.step(12)
