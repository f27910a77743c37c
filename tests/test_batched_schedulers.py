"""BatchedSchedule against torch: member by member, every step, the lr torch's scheduler sets.

The reference is hpsearch's own `build_schedule` on a one- or two-group SGD optimizer, stepped as
the training loop steps it (optimizer.step, after_batch; after_epoch with the validation loss).
Cohorts mix schedulers, parameters, warm-ups and head groups; members join and leave mid-run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import optuna
import pytest
import torch

from hpsearch.engines.batched_schedulers import BatchedSchedule
from hpsearch.errors import ConfigError
from hpsearch.params import Value
from hpsearch.schedulers import BUILTIN_SCHEDULERS, SCHEDULERS, build_schedule
from hpsearch.space import SearchSpace

Params = dict[str, Value]
BUILTINS = sorted(BUILTIN_SCHEDULERS)
REL = 1e-12  # the brief's tolerance; in practice the lrs agree bit for bit


def torch_lrs(params: Mapping[str, Value], epochs: int, spe: int,
              losses: Sequence[float]) -> torch.Tensor:
    """[epochs * spe + 1, 2]: (body, head) lr before every batch, then after the last epoch."""
    lr = float(params["lr"])
    body, head = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    groups: list = [body]
    if "head_lr_mult" in params:
        groups = [{"params": [body]},
                  {"params": [head], "lr": lr * float(params["head_lr_mult"])}]
    optimizer = torch.optim.SGD(groups, lr=lr)
    schedule = build_schedule(str(params["scheduler"]), optimizer, params, epochs, spe)

    def now() -> list[float]:
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
        return lrs * 2 if len(lrs) == 1 else lrs

    out = []
    for epoch in range(epochs):
        for _ in range(spe):
            out.append(now())
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(losses[epoch])
    out.append(now())
    return torch.tensor(out, dtype=torch.float64)


class Cohort:
    """Drives a BatchedSchedule as the engine would, recording each member's lr trace by id;
    members leave (select) when their run ends, and may join (extend) at any epoch."""

    def __init__(self, members: list[Params], epochs: int, spe: int, losses: list[list[float]],
                 device: str = "cpu"):
        self.epochs, self.spe, self.device = epochs, spe, device
        self.params: list[Params] = []
        self.losses: list[list[float]] = []
        self.traces: list[list[list[float]]] = []
        self.ids: list[int] = []
        self.age: list[int] = []
        self.schedule = BatchedSchedule([], epochs, spe, device=device)
        self.join(members, losses)

    def join(self, members: list[Params], losses: list[list[float]]) -> None:
        first = len(self.params)
        self.params += members
        self.losses += losses
        self.traces += [[] for _ in members]
        self.ids += range(first, first + len(members))
        self.age += [0] * len(members)
        fresh = BatchedSchedule(members, self.epochs, self.spe, device=self.device)
        assert fresh.n == len(members) and fresh.lr.dtype == torch.float64
        assert fresh.lr.shape == (len(members), 2)
        self.schedule.extend(fresh)

    def record(self) -> None:
        for member, lr in zip(self.ids, self.schedule.lr.tolist(), strict=True):
            self.traces[member].append(lr)

    def epoch(self) -> None:
        for _ in range(self.spe):
            self.record()
            self.schedule.after_batch()
        loss = [self.losses[member][age] for member, age in zip(self.ids, self.age, strict=True)]
        self.schedule.after_epoch(torch.tensor(loss, dtype=torch.float64))
        self.age = [age + 1 for age in self.age]
        done = [slot for slot, age in enumerate(self.age) if age == self.epochs]
        if done:
            self.record_final(done)
            self.keep([slot for slot in range(len(self.ids)) if slot not in done])

    def record_final(self, slots: list[int]) -> None:
        lrs = self.schedule.lr.tolist()
        for slot in slots:
            self.traces[self.ids[slot]].append(lrs[slot])

    def keep(self, slots: list[int]) -> None:
        self.schedule.select(torch.tensor(slots, dtype=torch.long))
        self.ids = [self.ids[slot] for slot in slots]
        self.age = [self.age[slot] for slot in slots]
        assert self.schedule.n == len(slots)

    def run(self, epochs: int) -> None:
        for _ in range(epochs):
            self.epoch()

    def check(self, complete: bool = True, exact: bool = False) -> int:
        """Every member's trace equals torch's (whole runs where `complete`; bit for bit where
        `exact`, else to REL); returns the number of members checked."""
        for member, params in enumerate(self.params):
            ours = torch.tensor(self.traces[member], dtype=torch.float64).reshape(-1, 2)
            if complete:
                assert ours.shape[0] == self.epochs * self.spe + 1, params
            expected = torch_lrs(params, self.epochs, self.spe, self.losses[member])
            expected = expected[: ours.shape[0]]
            close = (ours == expected) if exact else (
                (ours - expected).abs() <= REL * expected.abs())
            if not bool(close.all()):
                step = int((~close).any(1).nonzero()[0])
                pytest.fail(f"member {member} {params}: step {step}: ours "
                            f"{ours[step].tolist()}, torch {expected[step].tolist()}")
        return len(self.params)


# -- members -------------------------------------------------------------------------------------

def variants(name: str) -> list[Params]:
    """Several members of scheduler `name`, with different parameters each."""
    if name == "none":
        return [{"lr": 0.1}, {"lr": 3e-4}, {"lr": 1.7}]
    if name == "step":
        return [{"lr": 0.1, "step_size_frac": 0.1, "step_gamma": 0.1},
                {"lr": 0.03, "step_size_frac": 0.33, "step_gamma": 0.5},
                {"lr": 1e-3, "step_size_frac": 0.01, "step_gamma": 0.9}]
    if name == "multistep":
        return [{"lr": 0.1, "multistep_first_frac": 0.3, "multistep_gap_frac": 0.4,
                 "multistep_gamma": 0.1},  # two milestones
                {"lr": 0.02, "multistep_first_frac": 0.6, "multistep_gap_frac": 0.4,
                 "multistep_gamma": 0.3},  # the second falls at the end: one milestone
                {"lr": 5e-3, "multistep_first_frac": 0.2, "multistep_gap_frac": 0.1,
                 "multistep_gamma": 0.05}]
    if name == "exponential":
        return [{"lr": 0.1, "exponential_gamma": 0.95}, {"lr": 0.7, "exponential_gamma": 0.85},
                {"lr": 2e-3, "exponential_gamma": 0.999}]
    if name == "cosine":
        return [{"lr": 0.1, "cosine_min_lr_ratio": 0.0},
                {"lr": 0.03, "cosine_min_lr_ratio": 0.05},
                {"lr": 1.3, "cosine_min_lr_ratio": 0.1}]
    if name == "plateau":
        return [{"lr": 0.1, "plateau_factor": 0.1, "plateau_patience": 2},
                {"lr": 0.05, "plateau_factor": 0.5, "plateau_patience": 0},
                {"lr": 0.01, "plateau_factor": 0.3, "plateau_patience": 5},
                {"lr": 0.2, "plateau_factor": 0.05, "plateau_patience": 10},
                # Tiny: decays fall under eps (1e-8) after a few cuts, the head's later.
                {"lr": 1e-7, "plateau_factor": 0.5, "plateau_patience": 1}]
    if name == "lambda":
        return [{"lr": 0.1, "lambda_family": "exponential", "lambda_base": 0.93},
                {"lr": 0.04, "lambda_family": "inverse_time", "lambda_decay": 0.3},
                {"lr": 0.2, "lambda_family": "polynomial", "lambda_power": 2.0},
                {"lr": 0.01, "lambda_family": "polynomial", "lambda_power": 0.5}]
    if name == "onecycle":
        return [{"lr": 0.1, "onecycle_pct_start": 0.3, "onecycle_div_factor": 25.0,
                 "onecycle_final_div_factor": 1e4, "onecycle_anneal": "cos"},
                {"lr": 0.02, "onecycle_pct_start": 0.13, "onecycle_div_factor": 100.0,
                 "onecycle_final_div_factor": 10.0, "onecycle_anneal": "linear"},
                {"lr": 0.5, "onecycle_pct_start": 0.47, "onecycle_div_factor": 5.0,
                 "onecycle_final_div_factor": 1e3, "onecycle_anneal": "cos"}]
    assert name == "cosine_restarts"
    return [{"lr": 0.1, "cosine_restarts_t0_frac": 0.1, "cosine_restarts_t_mult": 1,
             "cosine_restarts_min_lr_ratio": 0.0},
            {"lr": 0.03, "cosine_restarts_t0_frac": 0.07, "cosine_restarts_t_mult": 2,
             "cosine_restarts_min_lr_ratio": 0.05},
            {"lr": 0.3, "cosine_restarts_t0_frac": 0.2, "cosine_restarts_t_mult": 3,
             "cosine_restarts_min_lr_ratio": 0.01},
            {"lr": 0.01, "cosine_restarts_t0_frac": 0.5, "cosine_restarts_t_mult": 1,
             "cosine_restarts_min_lr_ratio": 0.1}]


WARMUPS = [0.0, 0.05, 0.1, 0.2, 0.5]
HEAD_MULTS = [1.0, 10.0, 0.1, 3.7]


def members_of(name: str, warmup: bool, head: bool, offset: int = 0) -> list[Params]:
    out = []
    for i, extra in enumerate(variants(name)):
        params: Params = {"scheduler": name, **extra}
        if warmup:
            params["warmup_frac"] = WARMUPS[(i + offset) % len(WARMUPS)]
        if head:
            params["head_lr_mult"] = HEAD_MULTS[(i + offset) % len(HEAD_MULTS)]
        out.append(params)
    return out


def losses_for(count: int, epochs: int, seed: int) -> list[list[float]]:
    """Validation losses that improve, stall, plateau exactly and wander, one kind a member."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            series = [rng.uniform(0.5, 1.5) for _ in range(epochs)]
        elif kind == 1:  # falls, then flat with noise below the 1e-4 threshold
            series = [max(1.0 - 0.04 * e, 0.4) * (1 + 1e-5 * rng.random()) for e in range(epochs)]
        elif kind == 2:  # each loss exactly best * (1 - 1e-4): never "better" (strict <)
            series = [1.0]
            for _ in range(epochs - 1):
                series.append(series[-1] * (1.0 - 1e-4))
        else:
            series = [1.0 / (1 + e) if e % 7 else 2.0 for e in range(epochs)]
        out.append(series)
    return out


# -- tests ---------------------------------------------------------------------------------------

def test_every_builtin_scheduler_is_batched():
    assert all(callable(SCHEDULERS[name].batched_form()) for name in BUILTINS)


CASES = [(name, warmup, head, spe)
         for name in BUILTINS
         for warmup in (False, True) if not (warmup and name == "onecycle")
         for head in (False, True)
         for spe in (1, 3)]


@pytest.mark.parametrize(("name", "warmup", "head", "spe"), CASES)
def test_each_scheduler_matches_torch_member_by_member(name, warmup, head, spe):
    epochs = 100 if spe == 1 else 23
    members = members_of(name, warmup, head)
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=spe))
    cohort.run(epochs)
    assert cohort.check() == len(members)


def everything(offset: int = 0) -> list[Params]:
    """Every scheduler's variants, with and without warm-ups and head groups, interleaved."""
    out = []
    for j, name in enumerate(BUILTINS):
        out += members_of(name, warmup=(j + offset) % 2 == 0, head=True, offset=offset)
        out += members_of(name, warmup=(j + offset) % 2 == 1, head=False, offset=offset + 1)
    random.Random(offset).shuffle(out)
    return out


@pytest.mark.parametrize(("epochs", "spe"), [(60, 1), (20, 3)])
def test_one_cohort_with_every_scheduler_at_once(epochs, spe):
    members = everything()
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=7))
    cohort.run(epochs)
    assert cohort.check() == len(members) > 50


def test_bit_for_bit_in_a_mixed_cohort():
    """Beyond the 1e-12 contract: the tables replicate torch's arithmetic operation by
    operation (recursions, math.cos, torch.div where torch divides Python floats), so a change
    that merely rounds differently shows here first."""
    epochs, spe = 30, 5
    members = everything(5)
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=9))
    cohort.run(epochs)
    assert cohort.check(exact=True) == len(members)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_same_as_torch():
    epochs, spe = 30, 3
    members = everything(6)
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=4), "cuda")
    cohort.run(13)
    cohort.keep(list(range(0, len(members), 2)))
    later = everything(7)
    cohort.join(later, losses_for(len(later), epochs, seed=5))
    while cohort.ids:
        cohort.epoch()
    assert cohort.schedule.lr.device.type == "cuda"
    cohort.check(complete=False)


def test_select_mid_run_drops_and_reorders_and_the_rest_still_match():
    epochs, spe = 30, 2
    members = everything(1)
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=3))
    cohort.run(11)
    slots = list(range(len(members)))
    random.Random(5).shuffle(slots)
    cohort.keep(slots[: len(slots) // 2])  # half of them, in a new order
    kept = list(cohort.ids)
    assert sorted(kept) != kept
    cohort.run(epochs - 11)
    assert not cohort.ids  # every run ended and left the cohort
    cohort.check(complete=False)
    finished = [m for m in range(len(members)) if len(cohort.traces[m]) == epochs * spe + 1]
    assert finished == sorted(kept)


def test_extend_mid_run_new_members_start_at_their_step_zero():
    epochs, spe = 24, 3
    first = everything(2)
    cohort = Cohort(first, epochs, spe, losses_for(len(first), epochs, seed=11))
    cohort.run(5)
    second = everything(3)
    cohort.join(second, losses_for(len(second), epochs, seed=12))
    cohort.run(9)
    third = members_of("onecycle", False, True) + members_of("plateau", True, True, offset=2)
    cohort.join(third, losses_for(len(third), epochs, seed=13))
    # Run until every member's run is over (each leaves when it ends).
    while cohort.ids:
        cohort.epoch()
    assert cohort.check() == len(first) + len(second) + len(third)


def test_extend_onto_a_cohort_without_per_batch_members_grows_its_table():
    epochs, spe = 20, 3
    cohort = Cohort(members_of("cosine", True, False), epochs, spe, losses_for(3, epochs, 1))
    cohort.run(4)
    cohort.join(members_of("onecycle", False, False), losses_for(3, epochs, 2))
    while cohort.ids:
        cohort.epoch()
    assert cohort.check() == 6


def test_random_configurations_from_the_search_space():
    """What hpsearch's space actually produces (optuna's random sampler, head_lr_mult opted in
    for some): one cohort, every member against its own torch schedule."""
    spaces = [SearchSpace.build(), SearchSpace.build(overrides={"head_lr_mult": {"low": 0.1,
                                                                                  "high": 10.0}})]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    members = [spaces[i % 2].suggest(study.ask()) for i in range(90)]
    assert {m["scheduler"] for m in members} == set(BUILTIN_SCHEDULERS)
    epochs, spe = 40, 2
    cohort = Cohort(members, epochs, spe, losses_for(len(members), epochs, seed=21))
    cohort.run(epochs)
    assert cohort.check() == 90


def test_device_tensors_and_loss_dtype():
    members = members_of("plateau", True, True)
    schedule = BatchedSchedule(members, 10, 1, device="cpu")
    assert schedule.lr.device.type == "cpu" and schedule.lr.dtype == torch.float64
    # A float32 loss is read as float64, as torch's float(metrics) reads it.
    schedule.after_epoch(torch.ones(len(members), dtype=torch.float32))
    assert schedule.lr.dtype == torch.float64


def test_unknown_scheduler_is_a_value_error():
    with pytest.raises(ValueError, match="'cyclic'"):
        BatchedSchedule([{"scheduler": "none", "lr": 0.1},
                         {"scheduler": "cyclic", "lr": 0.1}], 10, 1)


def test_extend_needs_the_same_run_length():
    schedule = BatchedSchedule(members_of("none", False, False), 10, 1)
    with pytest.raises(ValueError, match="epochs"):
        schedule.extend(BatchedSchedule(members_of("none", False, False), 12, 1))


def test_onecycle_that_torch_cannot_run_is_the_same_config_error_in_both_engines():
    # pct_start * total_steps == 1: torch's OneCycleLR computes 0 / 0 at step 0.
    params = {"scheduler": "onecycle", "lr": 0.1, "onecycle_pct_start": 0.1,
              "onecycle_div_factor": 25.0, "onecycle_final_div_factor": 1e4,
              "onecycle_anneal": "cos"}
    with pytest.raises(ZeroDivisionError):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10,
                                            pct_start=0.1)
    message = "onecycle_pct_start 0.1 over 10 steps makes OneCycleLR rise for a single step"
    with pytest.raises(ConfigError, match=message):
        torch_lrs(params, 10, 1, [1.0] * 10)
    with pytest.raises(ConfigError, match=message):
        BatchedSchedule([{"scheduler": "none", "lr": 0.1}, params], 10, 1)


def test_holds_the_last_lr_past_the_run():
    schedule = BatchedSchedule(members_of("exponential", False, False), 3, 1)
    for _ in range(3):
        schedule.after_epoch(torch.ones(3, dtype=torch.float64))
    last = schedule.lr.clone()
    schedule.after_epoch(torch.ones(3, dtype=torch.float64))
    assert torch.equal(schedule.lr, last)
    assert math.isfinite(float(last.sum()))
