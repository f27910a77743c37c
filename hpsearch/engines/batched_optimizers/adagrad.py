"""Adagrad's batched form: the accumulated squared gradients, and an lr decay per member."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer
from hpsearch.params import Value

# A member option hpsearch does not search (yet), with torch's default.
ADAGRAD_LR_DECAY = "adagrad_lr_decay"


class BatchedAdagrad(BatchedOptimizer):
    """torch.optim.Adagrad's single-tensor algorithm for every member (see the package)."""

    name = "adagrad"
    eps = 1e-10
    buffers = (("sum", lambda o: True),)

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        return {"lr_decay": float(params.get(ADAGRAD_LR_DECAY, 0.0))}

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        self._any_lr_decay = self._flag("lr_decay")
        hp["lr_decay"] = self._column("lr_decay")

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
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
            std = state_sum.sqrt().add_(self.eps)
            param.addcdiv_(grad * clr, std)
