"""RMSprop's batched form: smoothing, momentum and the centered variant per member."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer
from hpsearch.params import Value


class BatchedRMSprop(BatchedOptimizer):
    """torch.optim.RMSprop's single-tensor algorithm for every member (see the package)."""

    name = "rmsprop"
    eps = 1e-8
    buffers = (("square_avg", lambda o: True), ("grad_avg", lambda o: o._any_centered),
               ("momentum_buffer", lambda o: o._any_momentum))

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        return {"alpha": float(torch_options["alpha"]),
                "momentum": float(torch_options["momentum"]),
                "centered": bool(torch_options["centered"])}

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        self._any_momentum = self._flag("momentum")
        self._any_centered = self._flag("centered")
        alpha = self._column("alpha")
        const["alpha"] = alpha
        const["one_minus_alpha"] = 1 - alpha
        # Non-centered members' gradient average stays 0 (weight 0), so that
        # square_avg - grad_avg² is their square_avg exactly and needs no mask.
        const["centered_weight"] = torch.where(self._mask("centered"), 1 - alpha, 0.0)
        const["momentum"] = self._column("momentum")

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
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
            avg.add_(self.eps)
            if self._any_momentum:
                # Members without momentum: buffer = grad / avg, the plain update.
                buf = self._state["momentum_buffer"][j]
                buf.mul_(view["momentum"]).addcdiv_(grad, avg)
                param.addcmul_(buf, lr, value=-1)
            else:
                param.addcdiv_(grad * lr.neg(), avg)
