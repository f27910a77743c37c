"""Adadelta's batched form: the running averages' decay per member."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer
from hpsearch.params import Value


class BatchedAdadelta(BatchedOptimizer):
    """torch.optim.Adadelta's single-tensor algorithm for every member (see the package)."""

    name = "adadelta"
    eps = 1e-6
    buffers = (("square_avg", lambda o: True), ("acc_delta", lambda o: True))

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        return {"rho": float(torch_options["rho"])}

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        rho = self._column("rho")
        const["rho"] = rho
        const["one_minus_rho"] = 1 - rho

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              lrs: Sequence[torch.Tensor]) -> None:
        for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
            rank = param.dim()
            view = self._views[rank]
            grad = self._decayed(param, grad, view)
            square_avg = self._state["square_avg"][j]
            acc_delta = self._state["acc_delta"][j]
            square_avg.mul_(view["rho"]).addcmul_(grad, grad * view["one_minus_rho"])
            std = square_avg.add(self.eps).sqrt_()
            delta = acc_delta.add(self.eps).sqrt_().div_(std).mul_(grad)
            acc_delta.mul_(view["rho"]).addcmul_(delta, delta * view["one_minus_rho"])
            param.addcmul_(delta, self._lr(lrs[j], rank, self.dtype), value=-1)
