"""What every batched optimizer shares: its members, their options, state, step counts and
per-member hyperparameter tensors; each family's module adds its step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from hpsearch.optimizers import OPTIMIZERS, weight_decay_of
from hpsearch.params import Value


class BatchedOptimizer:
    """n members of one optimizer type, or of one family (`BatchedAdam`: Adam, AdamW, NAdam,
    RAdam, Adamax), all state stacked along dim 0.

    `members[i]` is member i's trial params (the dict hpsearch's space produces, which names its
    optimizer; its lr is not read: each step brings every member's current lr); each member's
    optimizer has this class as its batched form (`OptimizerSpec.batched`). `shapes[j]` is the
    per-member shape of parameter tensor j. `step` updates `params[j]` (shape
    [n, *shapes[j]]) in place. `horizon`: about how many steps its members will take (a family
    that tabulates its step coefficients does so that many steps ahead).

    A family sets `name` (the one name its members are grouped under), `eps` (torch's default:
    hpsearch passes none) and `buffers`, and implements `_options`, `_configure` and `_step`.
    """

    name: ClassVar[str]
    eps: ClassVar[float] = 0.0
    # The state buffers it keeps per parameter tensor, and when it needs them (all are
    # zero-initialised, as torch initialises them, which is what lets `extend` pad with zeros).
    buffers: ClassVar[tuple[tuple[str, Callable[[Any], bool]], ...]] = ()

    def __init__(
        self, members: Sequence[Mapping[str, Value]],
        shapes: Sequence[torch.Size | Sequence[int]], *, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu", horizon: int = 64,
    ) -> None:
        self._kinds = [str(member["optimizer"]) for member in members]
        for i, kind in enumerate(self._kinds):
            spec = OPTIMIZERS.get(kind)
            if spec is None or spec.batched_form() is not type(self):
                raise ValueError(f"member {i} uses optimizer {kind!r}, not {self.name!r}: a "
                                 "batched optimizer holds one optimizer type (or one family)")
        self.shapes = tuple(torch.Size(shape) for shape in shapes)
        self.dtype = dtype
        self.device = torch.device(device)
        # Per-step coefficients are computed in float64, as torch computes them in Python
        # floats, then rounded once to `dtype` (MPS has no float64).
        self._coef = torch.float32 if self.device.type == "mps" else torch.float64
        self._options = [self.member_options(member, f"member {i}: ")
                         for i, member in enumerate(members)]
        # The clock counts this optimizer's steps; `_joined[i]` is the clock at which member i
        # had taken none (members join at different times): member i has taken
        # `clock - joined[i]` steps.
        self._clock = 0
        self._joined = [0] * len(self._options)
        self._state: dict[str, list[torch.Tensor]] = {}
        self._refresh()

    @classmethod
    def member_options(cls, params: Mapping[str, Value], where: str = "") -> dict[str, Any]:
        """The options torch's optimizer gets from one trial's params (lr aside: it comes with
        every step), as `build_optimizer` passes them (the spec's `options` and
        `weight_decay_of`), in this family's terms; absent keys take the declared parameters'
        defaults, which are torch's. Invalid values raise the ValueError torch's constructor
        would raise."""
        kind = str(params["optimizer"])
        spec = OPTIMIZERS[kind]
        completed = {**{param.name: param.default_for(params) for param in spec.params
                        if param.name not in params}, **params}
        decay = weight_decay_of(params) if spec.weight_decay else 0.0
        options = {"weight_decay": decay, **cls._options(spec.options(completed), params)}
        _check(kind, options, where)
        return options

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        """This family's options from the keyword arguments torch gets (`torch_options`), and
        from `params` those hpsearch does not pass."""
        raise NotImplementedError

    @property
    def n(self) -> int:
        """The number of members."""
        return len(self._options)

    @property
    def options(self) -> list[dict[str, Any]]:
        """Each member's options (a copy)."""
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
        self._select_own(index)
        for key, buffers in self._state.items():
            self._state[key] = [buffer.index_select(0, index) for buffer in buffers]
        self._refresh()

    def extend(self, other: BatchedOptimizer) -> None:
        """Append `other`'s members (and their state and step counts) after this one's."""
        if type(other) is not type(self):
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
        self._extend_own(other)
        self._refresh()

    def _select_own(self, index: torch.Tensor) -> None:
        """Keep the family's own per-member state at `index` (on the device), if it has any."""

    def _extend_own(self, other: BatchedOptimizer) -> None:
        """Append `other`'s share of the family's own per-member state, if it has any (the
        members, their options and step counts are appended already)."""

    def _zeros(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros((n, *shape), dtype=self.dtype, device=self.device)
                for shape in self.shapes]

    def _column(self, key: str) -> torch.Tensor:
        """Every member's option `key`, in the coefficient dtype: [n]."""
        return torch.tensor([o[key] for o in self._options], dtype=self._coef,
                            device=self.device)

    def _mask(self, key: str) -> torch.Tensor:
        """Which members have option `key` on: [n]."""
        return torch.tensor([bool(o.get(key)) for o in self._options], dtype=torch.bool,
                            device=self.device)

    def _flag(self, key: str) -> bool:
        """Whether any member has option `key` on (or nonzero)."""
        return any(o.get(key) for o in self._options)

    def _coupled_decays(self) -> list[float]:
        """Each member's L2 weight decay, added to its gradient (torch's coupled form)."""
        return [o["weight_decay"] for o in self._options]

    def _refresh(self) -> None:
        """Rebuild what follows from the members' options: per-member hyperparameter tensors,
        the host-side flags that pick the code paths, the state buffers they need, and the
        hyperparameters' views shaped to broadcast against each parameter tensor's rank."""
        n = self.n
        coupled_decay = self._coupled_decays()
        self._any_wd = any(coupled_decay)
        # Hyperparameters in the coefficient dtype (float64), for per-step coefficients.
        hp: dict[str, torch.Tensor] = {
            "weight_decay": torch.tensor(coupled_decay, dtype=self._coef, device=self.device)}
        # Constant coefficients, rounded once to the parameters' dtype (as torch rounds a
        # Python-float scalar argument).
        const: dict[str, torch.Tensor] = {"weight_decay": hp["weight_decay"]}
        masks: dict[str, torch.Tensor] = {}
        self._configure(hp, const, masks)
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

        needed = [key for key, needs in self.buffers if needs(self)]
        self._state = {key: self._state.get(key) or self._zeros(n) for key in needed}

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        """Set the family's host-side flags from the members' options, and add its per-member
        hyperparameters to `hp` (float64, for per-step coefficients), `const` (rounded once to
        the parameters' dtype) and `masks`."""

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
        self._step(params, grads, lrs)
        self._clock += 1

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              lrs: Sequence[torch.Tensor]) -> None:
        """The family's step (see `step`), the clock not yet advanced."""
        raise NotImplementedError

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
