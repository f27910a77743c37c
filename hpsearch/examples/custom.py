"""Your own optimizer and scheduler in the joint search (import this module to register them).

`plain_sgd` is seed 001 §4.8's custom optimizer: plain gradient descent written as a
`torch.optim.Optimizer` subclass (no momentum, no weight decay, so the search draws neither for
it). `linear_decay` is a scheduler: LinearLR from lr down to `linear_decay_end` x lr over the
epochs, with one searched parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from hpsearch.optimizers import OptimizerSpec
from hpsearch.params import Param
from hpsearch.plugins import register_optimizer, register_scheduler
from hpsearch.schedulers import SchedulerSpec


class PlainSGD(Optimizer):
    """theta <- theta - lr * grad, for every parameter of every group."""

    def __init__(self, params: Iterable[Any], lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"])
        return loss


PLAIN_SGD = register_optimizer(OptimizerSpec(
    "plain_sgd", PlainSGD, default_lr=0.01,
    help="plain gradient descent as an Optimizer subclass (seed 001 §4.8)",
    weight_decay=False,
))

LINEAR_DECAY_END = Param(
    "linear_decay_end", "float", "final lr as a fraction of lr", default=0.1,
    low=0.01, high=1.0, log=True, bounds=(1e-6, 1.0),
)

LINEAR_DECAY = register_scheduler(SchedulerSpec(
    "linear_decay", "LinearLR from lr to linear_decay_end x lr over the epochs",
    lambda optimizer, params, budget: lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=float(params["linear_decay_end"]),
        total_iters=budget.epochs,
    ),
    params=(LINEAR_DECAY_END,),
))
