"""Batched forms of the built-in optimizers: n members of one optimizer family, stepped at once.

The cohort engine trains K trials as one stacked model: every parameter tensor has a leading
member dimension `n`, and each member has its own hyperparameters. A batched optimizer steps all
members of one optimizer type together (`BatchedAdam` steps Adam, AdamW, NAdam, RAdam and
Adamax as one family, whose members differ only in coefficients), with a handful of
whole-tensor operations instead of n separate `torch.optim` steps: a cohort of tiny models
spends its training time on Python and dispatch overhead, not on arithmetic. Each optimizer's
spec names its batched form (`OptimizerSpec.batched`); one module here per family, on the base
class `BatchedOptimizer`.

Each member follows `torch.optim`'s single-tensor algorithm for its optimizer with the options
`hpsearch.training.build_optimizer` gives it (same formulas, eps placement, bias corrections,
state initialisation; torch's defaults for what hpsearch does not pass), so that a member trains
as its trial would train alone. It is equal to `torch.optim` up to rounding, not bit for bit: a
few operations are regrouped so that per-member coefficients can be tensors (torch passes them
as scalars), which moves results by an ulp or so per step (tests/test_batched_optimizers.py
checks 1e-12 in float64).

Per-member hyperparameters live on the device as tensors of shape [n]; per-member options that
are booleans in torch (nesterov, amsgrad, centered) become masks or zero coefficients, so a step
has no Python loop over members and no host sync. Which code paths a step needs (any weight
decay? any momentum? ...) is known on the host from the members' options, so a cohort without,
say, amsgrad pays nothing for it.
"""

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer

__all__ = ["BatchedOptimizer"]
