"""SGD's batched form: momentum, Nesterov and dampening per member."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer
from hpsearch.params import Value

# A member option hpsearch does not search (yet), with torch's default.
SGD_DAMPENING = "sgd_dampening"


class BatchedSGD(BatchedOptimizer):
    """torch.optim.SGD's single-tensor algorithm for every member (see the package)."""

    name = "sgd"
    buffers = (("momentum_buffer", lambda o: o._any_momentum),)

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        return {"momentum": float(torch_options["momentum"]),
                "dampening": float(params.get(SGD_DAMPENING, 0.0)),
                "nesterov": bool(torch_options["nesterov"])}

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        self._any_momentum = self._flag("momentum")
        self._any_nesterov = self._flag("nesterov")
        # Dampening matters only where there is momentum (torch ignores it otherwise).
        self._dampened = any(o.get("dampening") and o["momentum"] for o in self._options)
        hp["momentum"] = const["momentum"] = self._column("momentum")
        hp["dampening"] = self._column("dampening")
        masks["nesterov"] = self._mask("nesterov")

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
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
