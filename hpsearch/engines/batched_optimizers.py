"""Batched forms of the built-in optimizers: n members of one optimizer type, stepped at once.

The cohort engine trains K trials as one stacked model: every parameter tensor has a leading
member dimension `n`, and each member has its own hyperparameters. `BatchedOptimizer` steps all
members of one optimizer type together (Adam, AdamW, NAdam, RAdam and Adamax as one family,
whose members differ only in coefficients), with a handful of whole-tensor operations instead of n
separate `torch.optim` steps, which is what makes a cohort of tiny models fast (their training
time is Python and dispatch overhead, not arithmetic).

Each member follows `torch.optim`'s single-tensor algorithm for its optimizer with the options
`hpsearch.training.build_optimizer` gives it (same formulas, eps placement, bias corrections,
state initialisation; torch's defaults for what hpsearch does not pass), so that a member trains
as its trial would train alone. It is equal to `torch.optim` up to rounding, not bit for bit: a
few operations are regrouped so that per-member coefficients can be tensors (torch passes them
as scalars), which moves results by an ulp or so per step (tests/test_batched_optimizers.py
checks 1e-12 in float64).

Per-member hyperparameters live on the device as tensors of shape [n]; per-member options that
are booleans in torch (nesterov, amsgrad, centered) become masks or zero coefficients, so a step
has no Python loop over members and no host sync. Coefficients that depend only on a member's
step (Adam's family's bias corrections, RAdam's rectification, NAdam's momentum schedule) are
tabulated for a window of steps at a time. Which code paths a step needs (any weight
decay? any momentum? ...) is known on the host from the members' options, so a cohort without,
say, amsgrad pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hpsearch.optimizers import OPTIMIZERS
from hpsearch.params import Value

BATCHED_OPTIMIZERS: frozenset[str] = frozenset(
    {"sgd", "adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad", "adadelta"}
)

# Optimizers stepped together as one family: Adam, AdamW, NAdam, RAdam and Adamax keep the same
# first moment, and the same second moment but for Adamax's infinity norm, and differ only in
# per-member coefficients (see `_step_adam`). One batched step for the four Adam types took a
# cohort round's optimizer ops from ~145 to ~77 (wine), each op costing about as much for 30
# members as for 3; Adamax joining saved ~11 more.
_FAMILY = {"adamw": "adam", "nadam": "adam", "radam": "adam", "adamax": "adam"}


def family(name: str) -> str:
    """The batched optimizer that steps members of optimizer `name` (itself, or its family)."""
    return _FAMILY.get(name, name)


# torch's eps defaults (hpsearch passes none).
_EPS: dict[str, float] = {
    "adam": 1e-8, "adamw": 1e-8, "nadam": 1e-8, "radam": 1e-8, "adamax": 1e-8,
    "rmsprop": 1e-8, "adagrad": 1e-10, "adadelta": 1e-6,
}
_NADAM_MOMENTUM_DECAY = 4e-3  # torch.optim.NAdam's default momentum_decay
# The most steps Adam's family tabulates at once: a table costs members x steps x 64 bytes, and
# a member may take hundreds of thousands of steps (small batches, many epochs).
_WINDOW = 256

# Member options hpsearch does not search (yet), with torch's defaults.
SGD_DAMPENING = "sgd_dampening"
ADAGRAD_LR_DECAY = "adagrad_lr_decay"

# The state buffers each optimizer keeps per parameter tensor, and when it needs them (all are
# zero-initialised, as torch initialises them, which is what lets `extend` pad with zeros).
_BUFFERS: dict[str, tuple[tuple[str, Callable[[BatchedOptimizer], bool]], ...]] = {
    "sgd": (("momentum_buffer", lambda o: o._any_momentum),),
    "adam": (("exp_avg", lambda o: True), ("exp_avg_sq", lambda o: True),
             ("max_exp_avg_sq", lambda o: o._any_amsgrad), ("exp_inf", lambda o: o._any_adamax)),
    "rmsprop": (("square_avg", lambda o: True), ("grad_avg", lambda o: o._any_centered),
                ("momentum_buffer", lambda o: o._any_momentum)),
    "adagrad": (("sum", lambda o: True),),
    "adadelta": (("square_avg", lambda o: True), ("acc_delta", lambda o: True)),
}


def member_options(name: str, params: Mapping[str, Value], where: str = "") -> dict[str, Any]:
    """The options torch's `name` optimizer gets from one trial's params (lr aside: it comes
    with every step), as `build_optimizer` would pass them; absent keys take the declared
    parameters' defaults, which are torch's. Invalid values raise the ValueError torch's
    constructor would raise."""
    declared = {param.name: param for param in OPTIMIZERS[name].params}

    def get(key: str, default: Value | None = None) -> Any:
        if key in params:
            return params[key]
        if key in declared:
            return declared[key].default_for(params)
        return default

    decay = float(params.get("weight_decay", 0.0)) if params.get("use_weight_decay", True) \
        else 0.0
    options: dict[str, Any] = {"weight_decay": decay}
    if name == "sgd":
        options.update(momentum=float(get("momentum")),
                       dampening=float(get(SGD_DAMPENING, 0.0)),
                       nesterov=bool(get("sgd_nesterov", False)))
    elif name in ("adam", "adamw", "nadam", "radam", "adamax"):
        options.update(beta1=float(get("beta1")), beta2=float(get("beta2")))
        if name in ("adam", "adamw"):
            options["amsgrad"] = bool(get("amsgrad"))
    elif name == "rmsprop":
        options.update(alpha=float(get("rmsprop_alpha")), momentum=float(get("momentum")),
                       centered=bool(get("rmsprop_centered")))
    elif name == "adagrad":
        options["lr_decay"] = float(get(ADAGRAD_LR_DECAY, 0.0))
    elif name == "adadelta":
        options["rho"] = float(get("adadelta_rho"))
    _check(name, options, where)
    return options


def _check(name: str, o: Mapping[str, Any], where: str) -> None:
    """torch's constructor checks, so that a member torch would refuse fails here too."""
    def fail(what: str) -> None:
        raise ValueError(f"{where}{name}: invalid {what}")

    if not o["weight_decay"] >= 0.0:
        fail(f"weight_decay value: {o['weight_decay']}")
    if "momentum" in o and not o["momentum"] >= 0.0:
        fail(f"momentum value: {o['momentum']}")
    if o.get("nesterov") and (o["momentum"] <= 0 or o["dampening"] != 0):
        fail("nesterov: Nesterov momentum requires a momentum and zero dampening")
    for beta in ("beta1", "beta2"):
        if beta in o and not 0.0 <= o[beta] < 1.0:
            fail(f"{beta}: {o[beta]}")
    if "alpha" in o and not o["alpha"] >= 0.0:
        fail(f"alpha value: {o['alpha']}")
    if "rho" in o and not 0.0 <= o["rho"] <= 1.0:
        fail(f"rho value: {o['rho']}")
    if "lr_decay" in o and not o["lr_decay"] >= 0.0:
        fail(f"lr_decay value: {o['lr_decay']}")


class BatchedOptimizer:
    """n members of ONE optimizer type, or of one family (Adam, AdamW, NAdam, RAdam, Adamax:
    `family`);
    all state stacked along dim 0.

    `members[i]` is member i's trial params (the dict hpsearch's space produces; its lr is not
    read: each step brings every member's current lr). `shapes[j]` is the per-member shape of
    parameter tensor j. `step` updates `params[j]` (shape [n, *shapes[j]]) in place.
    `horizon`: about how many steps its members will take (Adam's family tabulates their step
    coefficients that many steps ahead, at most `_WINDOW`, and again when they get there).
    """

    def __init__(
        self, name: str, members: Sequence[Mapping[str, Value]],
        shapes: Sequence[torch.Size | Sequence[int]], *, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu", horizon: int = 64,
    ) -> None:
        if name not in BATCHED_OPTIMIZERS:
            known = ", ".join(sorted(BATCHED_OPTIMIZERS))
            raise ValueError(f"optimizer {name!r} has no batched form (only {known})")
        self.name = family(name)
        self._kinds = [str(member.get("optimizer", name)) for member in members]
        for i, kind in enumerate(self._kinds):
            if family(kind) != self.name:
                raise ValueError(f"member {i} uses optimizer {kind!r}, not {name!r}: a "
                                 "BatchedOptimizer holds one optimizer type (or Adam's family)")
        self.shapes = tuple(torch.Size(shape) for shape in shapes)
        self.dtype = dtype
        self.device = torch.device(device)
        # Per-step coefficients are computed in float64, as torch computes them in Python
        # floats, then rounded once to `dtype` (MPS has no float64).
        self._coef = torch.float32 if self.device.type == "mps" else torch.float64
        self._eps = _EPS.get(self.name, 0.0)
        self._options = [member_options(kind, member, f"member {i}: ")
                         for i, (kind, member) in enumerate(zip(self._kinds, members,
                                                                strict=True))]
        n = len(self._options)
        # The clock counts this optimizer's steps; `_joined[i]` is the clock at which member i
        # had taken none (members join at different times): member i has taken
        # `clock - joined[i]` steps.
        self._clock = 0
        self._joined = [0] * n
        # Adam's family: every member's step coefficients for a window of this optimizer's
        # steps, tabulated at once (`_tabulate`) and read a column a step: a step's
        # coefficients took some 30 small tensor ops per type, a round's largest share of
        # optimizer ops.
        self._window = max(1, min(horizon, _WINDOW))
        # (n, window, 8), column k for clock start + k; None until the first step.
        self._table: torch.Tensor | None = None
        self._window_start = 0
        # NAdam's running product of momentum coefficients after each column's step, in the
        # dtype torch keeps it in (float32 unless the default dtype is float64), and before
        # the window's first.
        self._scalar = torch.float64 if torch.get_default_dtype() == torch.float64 and \
            self._coef == torch.float64 else torch.float32
        self._products: torch.Tensor | None = None
        self._products_before = torch.ones(n, dtype=self._scalar, device=self.device)
        self._state: dict[str, list[torch.Tensor]] = {}
        self._step_impl: Callable[..., None] = getattr(self, f"_step_{self.name}")
        self._refresh()

    @property
    def n(self) -> int:
        """The number of members."""
        return len(self._options)

    @property
    def options(self) -> list[dict[str, Any]]:
        """Each member's options as torch gets them (a copy)."""
        return [dict(options) for options in self._options]

    def state(self, key: str) -> list[torch.Tensor]:
        """State buffer `key` (e.g. "exp_avg") of every parameter tensor: [n, *shapes[j]]."""
        return self._state[key]

    # -- membership --------------------------------------------------------------------------
    def select(self, index: torch.Tensor | Sequence[int]) -> None:
        """Keep only the members at positions `index`, in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"select takes a 1-D index of member positions; got shape "
                             f"{tuple(index.shape)}")
        # One host sync, outside `step`: the host-side options follow the members.
        positions = index.tolist()
        if any(not 0 <= i < self.n for i in positions):
            raise IndexError(f"member index out of range for {self.n} members: {positions}")
        self._options = [self._options[i] for i in positions]
        self._kinds = [self._kinds[i] for i in positions]
        self._joined = [self._joined[i] for i in positions]
        index = index.to(self.device)
        self._products_before = self._products_before.index_select(0, index)
        if self._table is not None:
            self._table = self._table.index_select(0, index)
            self._products = self._products.index_select(0, index)
        for key, buffers in self._state.items():
            self._state[key] = [buffer.index_select(0, index) for buffer in buffers]
        self._refresh()

    def extend(self, other: BatchedOptimizer) -> None:
        """Append `other`'s members (and their state and step counts) after this one's."""
        if not isinstance(other, BatchedOptimizer) or other.name != self.name:
            raise ValueError(f"can only extend a {self.name!r} BatchedOptimizer with another "
                             f"of its type or family; got {getattr(other, 'name', other)!r}")
        if other.shapes != self.shapes or other.dtype != self.dtype or \
                other.device != self.device:
            raise ValueError("can only extend with a BatchedOptimizer of the same shapes, dtype "
                             f"and device: {self.shapes}/{self.dtype}/{self.device} vs "
                             f"{other.shapes}/{other.dtype}/{other.device}")
        for key in set(self._state) | set(other._state):
            # A buffer one side lacks is zero there: torch's initial state, and what the masked
            # formulas expect for members that do not use it.
            mine = self._state.get(key) or self._zeros(self.n)
            theirs = other._state.get(key) or other._zeros(other.n)
            self._state[key] = [torch.cat([a, b]) for a, b in zip(mine, theirs, strict=True)]
        # Their members took as many steps before joining as they took on their own clock.
        self._joined += [self._clock - (other._clock - joined) for joined in other._joined]
        self._options = self._options + other._options
        self._kinds = self._kinds + other._kinds
        before = other._products_now().to(self._scalar)
        if self._table is not None:
            # The newcomers' coefficients for the rest of this window (its earlier columns,
            # before they joined, are never read).
            table, products = self._rows(other._kinds, other._options,
                                         self._joined[-other.n:] if other.n else [], before,
                                         self._clock - self._window_start)
            self._table = torch.cat([self._table, table])
            self._products = torch.cat([self._products, products])
        self._products_before = torch.cat([self._products_before, before])
        self._refresh()

    def _zeros(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros((n, *shape), dtype=self.dtype, device=self.device)
                for shape in self.shapes]

    def _refresh(self) -> None:
        """Rebuild what follows from the members' options: per-member hyperparameter tensors,
        the host-side flags that pick the code paths, the state buffers they need, and the
        hyperparameters' views shaped to broadcast against each parameter tensor's rank."""
        opts = self._options
        n = len(opts)

        def column(key: str) -> torch.Tensor:
            return torch.tensor([o[key] for o in opts], dtype=self._coef, device=self.device)

        def mask(key: str) -> torch.Tensor:
            return torch.tensor([bool(o.get(key)) for o in opts], dtype=torch.bool,
                                device=self.device)

        def flag(key: str) -> bool:
            return any(o.get(key) for o in opts)

        # Adam's family: AdamW's decay is decoupled (a factor on the parameters), the others'
        # coupled (added to the gradient); each member has one, the other is zero.
        decoupled = [kind == "adamw" for kind in self._kinds]
        coupled_decay = [0.0 if d else o["weight_decay"] for o, d in zip(opts, decoupled,
                                                                        strict=True)]
        self._any_wd = any(coupled_decay)
        self._any_decoupled = any(o["weight_decay"] for o, d in zip(opts, decoupled,
                                                                    strict=True) if d)
        self._any_nadam = "nadam" in self._kinds
        self._any_radam = "radam" in self._kinds
        self._any_adamax = "adamax" in self._kinds
        self._any_momentum = flag("momentum")
        self._any_nesterov = flag("nesterov")
        self._any_amsgrad = flag("amsgrad")
        self._all_amsgrad = self._any_amsgrad and all(o.get("amsgrad") for o in opts)
        self._any_centered = flag("centered")
        # Dampening matters only where there is momentum (torch ignores it otherwise).
        self._dampened = any(o.get("dampening") and o["momentum"] for o in opts)
        self._any_lr_decay = flag("lr_decay")

        # Hyperparameters in the coefficient dtype (float64), for per-step coefficients.
        hp: dict[str, torch.Tensor] = {
            "weight_decay": torch.tensor(coupled_decay, dtype=self._coef, device=self.device)}
        # Constant coefficients, rounded once to the parameters' dtype (as torch rounds a
        # Python-float scalar argument).
        const: dict[str, torch.Tensor] = {"weight_decay": hp["weight_decay"]}
        masks: dict[str, torch.Tensor] = {}
        name = self.name
        if name == "sgd":
            hp["momentum"] = const["momentum"] = column("momentum")
            hp["dampening"] = column("dampening")
            masks["nesterov"] = mask("nesterov")
        elif name == "adam":
            hp["beta1"], hp["beta2"] = column("beta1"), column("beta2")
            const["one_minus_beta1"] = 1 - hp["beta1"]
            const["beta2"] = hp["beta2"]
            const["one_minus_beta2"] = 1 - hp["beta2"]
            if self._any_amsgrad:
                const["amsgrad"] = mask("amsgrad").to(self._coef)
            if self._any_decoupled:
                hp["decoupled_weight_decay"] = torch.tensor(
                    [o["weight_decay"] if d else 0.0 for o, d in zip(opts, decoupled,
                                                                     strict=True)],
                    dtype=self._coef, device=self.device)
            for kind in ("nadam", "adamax"):
                if kind in self._kinds:
                    masks[kind] = torch.tensor([k == kind for k in self._kinds],
                                               dtype=torch.bool, device=self.device)
        elif name == "rmsprop":
            alpha = column("alpha")
            const["alpha"] = alpha
            const["one_minus_alpha"] = 1 - alpha
            # Non-centered members' gradient average stays 0 (weight 0), so that
            # square_avg - grad_avg² is their square_avg exactly and needs no mask.
            const["centered_weight"] = torch.where(mask("centered"), 1 - alpha, 0.0)
            const["momentum"] = column("momentum")
        elif name == "adagrad":
            hp["lr_decay"] = column("lr_decay")
        elif name == "adadelta":
            rho = column("rho")
            const["rho"] = rho
            const["one_minus_rho"] = 1 - rho
        self._hp = hp
        self._const = {key: value.to(self.dtype) for key, value in const.items()}
        self._masks = masks

        # Views per rank (the cached reshapes every step reuses).
        ranks = {len(shape) + 1 for shape in self.shapes}
        self._bshape = {rank: (n, *(1,) * (rank - 1)) for rank in ranks}
        self._views: dict[int, dict[str, torch.Tensor]] = {
            rank: {key: value.view(self._bshape[rank])
                   for key, value in {**self._const, **self._masks}.items()}
            for rank in ranks
        }
        self._full = [torch.Size((n, *shape)) for shape in self.shapes]

        needed = [key for key, needs in _BUFFERS[name] if needs(self)]
        self._state = {key: self._state.get(key) or self._zeros(n) for key in needed}

    # -- stepping ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             lrs: Sequence[torch.Tensor]) -> None:
        """One optimizer step for every member: `params[j]` ([n, *shapes[j]]) in place, from
        `grads[j]` (same shape, left unchanged) and `lrs[j]` (each member's lr for tensor j:
        [n], or shaped to broadcast against params[j], e.g. [n, 1, ...] or [n, *shapes[j]])."""
        if not len(params) == len(grads) == len(lrs) == len(self.shapes):
            raise ValueError(f"step takes {len(self.shapes)} params, grads and lrs; got "
                             f"{len(params)}, {len(grads)} and {len(lrs)}")
        for param, grad, full in zip(params, grads, self._full, strict=True):
            if param.shape != full or grad.shape != full:
                raise ValueError(f"expected params and grads of shape {tuple(full)}; got "
                                 f"{tuple(param.shape)} and {tuple(grad.shape)}")
        self._step_impl(params, grads, lrs)
        self._clock += 1

    def _step_numbers(self) -> torch.Tensor:
        """Each member's number of the step being taken (1 at its first): [n]."""
        return torch.tensor([self._clock + 1 - joined for joined in self._joined],
                            dtype=self._coef, device=self.device)

    def _lr(self, lr: torch.Tensor, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """The lrs in `dtype`, shaped to broadcast against a rank-`rank` parameter tensor."""
        lr = lr.to(device=self.device, dtype=dtype)
        if lr.dim() == 1:
            return lr.view(self._bshape[rank])
        if lr.dim() < rank:
            return lr.reshape(*lr.shape, *(1,) * (rank - lr.dim()))
        return lr

    def _per_step(self, rank: int, *coefficients: torch.Tensor) -> list[torch.Tensor]:
        """Per-member coefficients ([n], float64) rounded to the params' dtype, shaped to
        broadcast."""
        shape = self._bshape[rank]
        return [c.to(self.dtype).view(shape) for c in coefficients]

    def _decayed(self, param: torch.Tensor, grad: torch.Tensor,
                 view: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """grad + weight_decay * param (L2 decay, torch's coupled form), a new tensor."""
        if self._any_wd:
            return torch.addcmul(grad, param, view["weight_decay"])
        return grad

    def _step_sgd(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                  lrs: Sequence[torch.Tensor]) -> None:
        hp = self._hp
        if self._dampened:
            # torch's first step copies the gradient into the buffer (no dampening); members
            # without momentum keep buffer = gradient every step.
            first = self._step_numbers() == 1
            keep = torch.where(first, 0.0, hp["momentum"])
            take = torch.where(first | (hp["momentum"] == 0), 1.0, 1 - hp["dampening"])
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            grad = self._decayed(param, grad, view)
            if self._any_momentum:
                # The buffer starts at 0, so momentum * 0 + grad is torch's first-step copy;
                # members without momentum get buffer = grad.
                buf = self._state["momentum_buffer"][j]
                if self._dampened:
                    keep_j, take_j = self._per_step(rank, keep, take)
                    buf.mul_(keep_j).addcmul_(grad, take_j)
                else:
                    buf.mul_(view["momentum"]).add_(grad)
                if self._any_nesterov:
                    grad = torch.where(view["nesterov"],
                                       torch.addcmul(grad, buf, view["momentum"]), buf)
                else:
                    grad = buf
            param.addcmul_(grad, self._lr(lrs[j], rank, self.dtype), value=-1)

    def _step_adam(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                   lrs: Sequence[torch.Tensor]) -> None:
        """Adam, AdamW, NAdam, RAdam and Adamax members in one step: the same moments
        (exp_avg, exp_avg_sq, AMSGrad's max; Adamax's exp_inf where there are Adamax members),
        then each member's update in one form,

            param += (exp_avg * A + grad * B) / (sqrt(second) / D + eps) + exp_avg * E,

        where Adam's A is -lr / bias_correction1 and D sqrt(bias_correction2) (B = E = 0);
        NAdam's A and B are its momentum-decayed coefficients of exp_avg and the gradient (D as
        Adam's: torch's sqrt(exp_avg_sq / bias_correction2), regrouped); RAdam's D is 1, and
        where its variance is tractable A = -lr / bias_correction1 * rect * sqrt(bc2), E = 0,
        elsewhere A = 0, E = -lr / bias_correction1 (torch: exp_avg / bc1 * lr, no
        denominator); Adamax's A is Adam's and its denominator exp_inf. A zero coefficient
        leaves a member's update exactly its type's."""
        hp = self._hp
        column = self._clock - self._window_start
        if self._table is None or column == self._window:  # a (next) window's coefficients
            self._products_before = self._products_now()
            self._tabulate()
            column = 0
        # Each member's coefficients at its own step: (n, 8).
        (bias_correction1, divisor, rectified, plain, one_minus_mu, one_minus_mu_product,
         mu_next, one_minus_mu_product_next) = self._table[:, column].unbind(1)
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            shape = self._bshape[rank]
            lr = self._lr(lrs[j], rank, self._coef)
            if self._any_decoupled:  # AdamW: param *= 1 - lr * weight_decay
                decay = hp["decoupled_weight_decay"].view(shape)
                param.mul_((1 - lr * decay).to(self.dtype))
            grad = self._decayed(param, grad, view)
            exp_avg = self._state["exp_avg"][j]
            exp_avg_sq = self._state["exp_avg_sq"][j]
            exp_avg.lerp_(grad, view["one_minus_beta1"])
            exp_avg_sq.mul_(view["beta2"]).addcmul_(grad, grad * view["one_minus_beta2"])
            second = exp_avg_sq
            if self._any_amsgrad:
                second = self._state["max_exp_avg_sq"][j]
                if not self._all_amsgrad:
                    # Zero the max of members without amsgrad: max(0, v) is their v.
                    second.mul_(view["amsgrad"])
                torch.maximum(second, exp_avg_sq, out=second)
            denom = second.sqrt().div_(divisor.view(shape).to(self.dtype)).add_(self._eps)
            if self._any_adamax:  # exp_inf = max(beta2 * exp_inf, |grad| + eps), its denominator
                exp_inf = self._state["exp_inf"][j]
                torch.maximum(exp_inf.mul_(view["beta2"]), grad.abs().add_(self._eps),
                              out=exp_inf)
                denom = torch.where(view["adamax"], exp_inf, denom)
            step_size = lr / bias_correction1.view(shape)
            avg_coef = (step_size * rectified.view(shape)).neg_()
            if self._any_nadam:
                nadam_avg = (-lr * mu_next.view(shape)) / one_minus_mu_product_next.view(shape)
                avg_coef = torch.where(view["nadam"], nadam_avg, avg_coef)
                grad_coef = (-lr * one_minus_mu.view(shape)) / one_minus_mu_product.view(shape)
                update = torch.addcmul(exp_avg * avg_coef.to(self.dtype), grad,
                                       grad_coef.to(self.dtype))
            else:
                update = exp_avg * avg_coef.to(self.dtype)
            param.addcdiv_(update, denom)
            if self._any_radam:
                param.addcmul_(exp_avg, (step_size * plain.view(shape)).neg_().to(self.dtype))

    def _tabulate(self) -> None:
        """Adam's family's step coefficients of every member for the window of `_window` steps
        from now: `_table`, column k the coefficients of the window's k-th step (a member's
        own step `clock - joined + 1`), and NAdam's products after each (`_rows`)."""
        self._window_start = self._clock
        self._table, self._products = self._rows(self._kinds, self._options, self._joined,
                                                 self._products_before)

    def _rows(self, kinds: Sequence[str], options: Sequence[Mapping[str, Any]],
              joined: Sequence[int], before: torch.Tensor,
              first_column: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The coefficients of members of `kinds` with `options`, who had taken no step at
        clock `joined`, for this window's steps from `first_column` on (members joining
        mid-window), whose NAdam product is `before` then: (members, window, 8), and the
        products after each step.

        The same float64 formulas torch evaluates in Python floats at each step (the bias
        corrections, RAdam's rectification, NAdam's momentum schedule), for all steps at once;
        NAdam's running product is multiplied step by step in the dtype torch keeps it in
        (its rounding shows in the updates). Columns before `first_column` hold what the
        formulas give there, never read.
        """
        n, width = len(kinds), self._window
        coef, device = self._coef, self.device

        def column(values: list[Any], dtype: torch.dtype = coef) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device).view(n, 1)

        first = column([self._window_start - start + 1 for start in joined])
        t = first + torch.arange(width, dtype=coef, device=device)  # each member's steps
        beta1 = column([o["beta1"] for o in options])
        beta2 = column([o["beta2"] for o in options])
        is_nadam = column([kind == "nadam" for kind in kinds], torch.bool)
        is_radam = column([kind == "radam" for kind in kinds], torch.bool)
        table = torch.zeros(n, width, 8, dtype=coef, device=device)
        bias_correction1 = 1 - beta1 ** t
        beta2_t = beta2 ** t
        bias_correction2 = 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2_t / bias_correction2
        rectify = rho_t > 5.0
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        radam_k = torch.where(rectify, rect * bias_correction2 ** 0.5, 0.0)
        table[..., 0] = torch.where(is_nadam, 1.0, bias_correction1)
        table[..., 1] = torch.where(is_radam, 1.0, bias_correction2.sqrt())
        table[..., 2] = torch.where(is_radam, radam_k, torch.where(is_nadam, 0.0, 1.0))
        table[..., 3] = (is_radam & ~rectify).to(coef)
        table[..., 5] = table[..., 7] = 1.0
        products = before.view(n, 1).expand(n, width)
        if "nadam" in kinds:
            mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * _NADAM_MOMENTUM_DECAY))
            mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * _NADAM_MOMENTUM_DECAY))
            # The product before, then times each step's mu, one after another (times 1 in
            # the columns before `first_column`).
            taken_here = torch.arange(width, device=device) >= first_column
            factors = torch.cat([before.view(n, 1),
                                 torch.where(taken_here, mu, 1.0).to(self._scalar)], 1)
            products = torch.from_numpy(np.multiply.accumulate(factors.cpu().numpy(), axis=1)
                                        [:, 1:].copy()).to(device)
            as_coef = products.to(coef)
            table[..., 4] = torch.where(is_nadam, 1.0 - mu, 0.0)
            table[..., 5] = torch.where(is_nadam, 1.0 - as_coef, 1.0)
            table[..., 6] = torch.where(is_nadam, mu_next, 0.0)
            table[..., 7] = torch.where(is_nadam, 1.0 - as_coef * mu_next, 1.0)
        return table, products

    def _products_now(self) -> torch.Tensor:
        """Each member's NAdam product after the steps it has taken."""
        if self._table is None:  # no window yet: tabulated at the next step
            return self._products_before
        column = self._clock - self._window_start
        return self._products_before if column == 0 else self._products[:, column - 1]

    def _step_rmsprop(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      lrs: Sequence[torch.Tensor]) -> None:
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            lr = self._lr(lrs[j], rank, self.dtype)
            grad = self._decayed(param, grad, view)
            square_avg = self._state["square_avg"][j]
            square_avg.mul_(view["alpha"]).addcmul_(grad, grad * view["one_minus_alpha"])
            if self._any_centered:
                grad_avg = self._state["grad_avg"][j]
                grad_avg.lerp_(grad, view["centered_weight"])
                avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1).sqrt_()
            else:
                avg = square_avg.sqrt()
            avg.add_(self._eps)
            if self._any_momentum:
                # Members without momentum: buffer = grad / avg, the plain update.
                buf = self._state["momentum_buffer"][j]
                buf.mul_(view["momentum"]).addcdiv_(grad, avg)
                param.addcmul_(buf, lr, value=-1)
            else:
                param.addcdiv_(grad * lr.neg(), avg)

    def _step_adagrad(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      lrs: Sequence[torch.Tensor]) -> None:
        decay = None
        if self._any_lr_decay:
            decay = 1 + (self._step_numbers() - 1) * self._hp["lr_decay"]
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            grad = self._decayed(param, grad, view)
            if decay is None:
                clr = self._lr(lrs[j], rank, self.dtype).neg()
            else:
                lr = self._lr(lrs[j], rank, self._coef)
                clr = (lr / decay.view(self._bshape[rank])).neg_().to(self.dtype)
            state_sum = self._state["sum"][j]
            state_sum.addcmul_(grad, grad)
            std = state_sum.sqrt().add_(self._eps)
            param.addcdiv_(grad * clr, std)

    def _step_adadelta(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                       lrs: Sequence[torch.Tensor]) -> None:
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            grad = self._decayed(param, grad, view)
            square_avg = self._state["square_avg"][j]
            acc_delta = self._state["acc_delta"][j]
            square_avg.mul_(view["rho"]).addcmul_(grad, grad * view["one_minus_rho"])
            std = square_avg.add(self._eps).sqrt_()
            delta = acc_delta.add(self._eps).sqrt_().div_(std).mul_(grad)
            acc_delta.mul_(view["rho"]).addcmul_(delta, delta * view["one_minus_rho"])
            param.addcmul_(delta, self._lr(lrs[j], rank, self.dtype), value=-1)
