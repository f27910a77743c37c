"""Adam's family's batched form: Adam, AdamW, NAdam, RAdam and Adamax members in one step.

The five keep the same first moment, and the same second moment but for Adamax's infinity norm,
and differ only in per-member coefficients (see `BatchedAdam._step`), so one batched step serves
them all, in the same tensor ops whatever the mix of types. Coefficients that depend only on a
member's step (the bias corrections, RAdam's rectification, NAdam's momentum schedule) are
tabulated for a window of steps at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hpsearch.engines.batched_optimizers.base import BatchedOptimizer
from hpsearch.params import Value

_NADAM_MOMENTUM_DECAY = 4e-3  # torch.optim.NAdam's default momentum_decay
# The most steps tabulated at once: a table costs members x steps x 64 bytes, and a member may
# take hundreds of thousands of steps (small batches, many epochs).
_WINDOW = 256


class BatchedAdam(BatchedOptimizer):
    """torch.optim's Adam, AdamW, NAdam, RAdam and Adamax single-tensor algorithms, each member
    its own type's (see the package)."""

    name = "adam"
    eps = 1e-8
    buffers = (("exp_avg", lambda o: True), ("exp_avg_sq", lambda o: True),
               ("max_exp_avg_sq", lambda o: o._any_amsgrad),
               ("exp_inf", lambda o: o._any_adamax))

    def __init__(
        self, members: Sequence[Mapping[str, Value]],
        shapes: Sequence[torch.Size | Sequence[int]], *, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu", horizon: int = 64,
    ) -> None:
        super().__init__(members, shapes, dtype=dtype, device=device, horizon=horizon)
        # Every member's step coefficients for a window of this optimizer's steps, tabulated
        # at once (`_tabulate`) and read a column a step, so that a step evaluates none of
        # their formulas.
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
        self._products_before = torch.ones(self.n, dtype=self._scalar, device=self.device)

    @classmethod
    def _options(cls, torch_options: Mapping[str, Any],
                 params: Mapping[str, Value]) -> dict[str, Any]:
        beta1, beta2 = torch_options["betas"]
        options: dict[str, Any] = {"beta1": float(beta1), "beta2": float(beta2)}
        if "amsgrad" in torch_options:
            options["amsgrad"] = bool(torch_options["amsgrad"])
        return options

    def _select_own(self, index: torch.Tensor) -> None:
        self._products_before = self._products_before.index_select(0, index)
        if self._table is not None:
            self._table = self._table.index_select(0, index)
            self._products = self._products.index_select(0, index)

    def _extend_own(self, other: BatchedOptimizer) -> None:
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

    def _coupled_decays(self) -> list[float]:
        # AdamW's decay is decoupled (a factor on the parameters), the others' coupled (added
        # to the gradient); each member has one, the other is zero.
        return [0.0 if kind == "adamw" else o["weight_decay"]
                for kind, o in zip(self._kinds, self._options, strict=True)]

    def _configure(self, hp: dict[str, torch.Tensor], const: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> None:
        opts = self._options
        decoupled = [kind == "adamw" for kind in self._kinds]
        self._any_decoupled = any(o["weight_decay"] for o, d in zip(opts, decoupled,
                                                                    strict=True) if d)
        self._any_nadam = "nadam" in self._kinds
        self._any_radam = "radam" in self._kinds
        self._any_adamax = "adamax" in self._kinds
        self._any_amsgrad = self._flag("amsgrad")
        self._all_amsgrad = self._any_amsgrad and all(o.get("amsgrad") for o in opts)
        hp["beta1"], hp["beta2"] = self._column("beta1"), self._column("beta2")
        const["one_minus_beta1"] = 1 - hp["beta1"]
        const["beta2"] = hp["beta2"]
        const["one_minus_beta2"] = 1 - hp["beta2"]
        if self._any_amsgrad:
            const["amsgrad"] = self._mask("amsgrad").to(self._coef)
        if self._any_decoupled:
            hp["decoupled_weight_decay"] = torch.tensor(
                [o["weight_decay"] if d else 0.0 for o, d in zip(opts, decoupled, strict=True)],
                dtype=self._coef, device=self.device)
        for kind in ("nadam", "adamax"):
            if kind in self._kinds:
                masks[kind] = torch.tensor([k == kind for k in self._kinds],
                                           dtype=torch.bool, device=self.device)

    def _step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
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
            denom = second.sqrt().div_(divisor.view(shape).to(self.dtype)).add_(self.eps)
            if self._any_adamax:  # exp_inf = max(beta2 * exp_inf, |grad| + eps), its denominator
                exp_inf = self._state["exp_inf"][j]
                torch.maximum(exp_inf.mul_(view["beta2"]), grad.abs().add_(self.eps),
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
