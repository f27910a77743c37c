"""Every optimizer and every scheduler builds from its defaults and steps as torch says."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch.optim import lr_scheduler

from hpsearch.config import load_study_config
from hpsearch.engines.cohort import why_not_cohort
from hpsearch.optimizers import OPTIMIZERS, OptimizerSpec, weight_decay_of
from hpsearch.schedulers import SCHEDULERS, WARMUP_START_FACTOR, SchedulerSpec, build_schedule
from hpsearch.space import SearchSpace

SPACE = SearchSpace.build()


def _model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    features = torch.randn(32, 4)
    target = (features[:, 0] > 0).long()
    return model, features, target


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_builds_with_its_defaults_and_lowers_the_loss(name):
    params = SPACE.complete({"optimizer": name, "lr": 0.05})
    model, features, target = _model_and_batch()
    optimizer = OPTIMIZERS[name].build(model.parameters(), 0.05, 0.0, params)
    assert isinstance(optimizer, OPTIMIZERS[name].torch_class)
    assert optimizer.param_groups[0]["lr"] == 0.05
    loss_fn = torch.nn.CrossEntropyLoss()
    first = loss_fn(model(features), target).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss_fn(model(features), target).backward()
        optimizer.step()
    assert loss_fn(model(features), target).item() < first


def test_optimizer_options_reach_torch():
    model, _, _ = _model_and_batch()
    params = SPACE.complete({"optimizer": "sgd", "momentum": 0.9, "sgd_nesterov": True})
    group = OPTIMIZERS["sgd"].build(model.parameters(), 0.1, 1e-4, params).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)
    params = SPACE.complete({"optimizer": "rmsprop", "rmsprop_alpha": 0.9,
                             "rmsprop_centered": True, "momentum": 0.5})
    group = OPTIMIZERS["rmsprop"].build(model.parameters(), 0.1, 0.0, params).param_groups[0]
    assert (group["alpha"], group["centered"], group["momentum"]) == (0.9, True, 0.5)
    params = SPACE.complete({"optimizer": "adamw", "beta1": 0.85, "beta2": 0.99})
    group = OPTIMIZERS["adamw"].build(model.parameters(), 0.1, 0.0, params).param_groups[0]
    assert group["betas"] == (0.85, 0.99)


def _lr_curve(name: str, epochs: int = 20, steps_per_epoch: int = 1, val_losses=None,
              **given) -> list[float]:
    params = SPACE.complete({"scheduler": name, "lr": 0.1, **given})
    model, _, _ = _model_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = build_schedule(name, optimizer, params, epochs, steps_per_epoch)
    curve = []
    for epoch in range(epochs):
        curve.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(val_losses[epoch] if val_losses else 1.0)
    return curve


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_builds_with_its_defaults_and_keeps_lr_positive(name):
    curve = _lr_curve(name, epochs=20, steps_per_epoch=3)
    assert len(curve) == 20
    assert all(math.isfinite(lr) and 0 <= lr <= 0.1 + 1e-12 for lr in curve)
    assert curve[0] <= 0.1


def test_schedules_follow_torch_semantics():
    # StepLR(step_size = 0.25 * 20 = 5, gamma = 0.5)
    curve = _lr_curve("step", step_size_frac=0.25, step_gamma=0.5)
    assert curve[:5] == [0.1] * 5 and curve[5] == pytest.approx(0.05)
    assert curve[10] == pytest.approx(0.025)
    # MultiStepLR at epochs 0.3 * 20 = 6 and (0.3 + 0.5) * 20 = 16
    curve = _lr_curve("multistep", multistep_first_frac=0.3, multistep_gap_frac=0.5,
                      multistep_gamma=0.1)
    assert curve[5] == 0.1 and curve[6] == pytest.approx(0.01)
    assert curve[15] == pytest.approx(0.01) and curve[16] == pytest.approx(0.001)
    curve = _lr_curve("exponential", exponential_gamma=0.9)
    assert curve[3] == pytest.approx(0.1 * 0.9**3)
    curve = _lr_curve("cosine", cosine_min_lr_ratio=0.0)
    assert curve[10] == pytest.approx(0.05)
    curve = _lr_curve("lambda", lambda_family="inverse_time", lambda_decay=0.5)
    assert curve[4] == pytest.approx(0.1 / 3)
    curve = _lr_curve("lambda", lambda_family="polynomial", lambda_power=2.0)
    assert curve[10] == pytest.approx(0.1 * 0.25)
    curve = _lr_curve("cosine_restarts", cosine_restarts_t0_frac=0.25, cosine_restarts_t_mult=1)
    assert curve[0] == curve[5] == curve[10] == 0.1 and curve[4] < 0.1
    # OneCycle steps per batch, peaks at lr after pct_start of all steps, ends far below.
    curve = _lr_curve("onecycle", epochs=10, steps_per_epoch=4, onecycle_pct_start=0.3)
    assert max(curve) == pytest.approx(0.1, rel=0.05)
    assert curve[0] == pytest.approx(0.1 / 25) and curve[-1] < 0.01


def test_plateau_steps_on_the_validation_loss():
    losses = [1.0, 0.9, 0.8] + [0.8] * 17
    curve = _lr_curve("plateau", val_losses=losses, plateau_factor=0.1, plateau_patience=3)
    # Best 0.8 at epoch index 2; four stalls later (patience 3 exceeded) the lr drops.
    assert curve[:7] == [0.1] * 7
    assert curve[7] == pytest.approx(0.01)


def test_warmup_rises_linearly_then_hands_over():
    curve = _lr_curve("none", warmup_frac=0.2)  # 4 warm-up epochs
    assert curve[0] == pytest.approx(0.1 * WARMUP_START_FACTOR)
    assert curve[0] < curve[1] < curve[2] < curve[3] < 0.1
    assert curve[4:] == pytest.approx([0.1] * 16)
    curve = _lr_curve("cosine", warmup_frac=0.2)
    assert curve[4] == pytest.approx(0.1)  # the cosine starts after the warm-up ...
    assert curve[12] == pytest.approx(0.05)  # ... and spans the remaining 16 epochs
    losses = [1.0] * 20
    curve = _lr_curve("plateau", val_losses=losses, warmup_frac=0.2, plateau_patience=2)
    assert curve[0] == pytest.approx(0.01) and curve[4] == pytest.approx(0.1)
    assert curve[-1] < 0.1  # the plateau scheduler took over and decayed


def test_seed_003_schedules_end_where_the_tutorial_says():
    """Seed 003 printed the lr after 100 epochs; our curve holds the lr *used* in each epoch,
    so the tutorial's value is one more scheduler step: compare with torch directly."""
    model, _, _ = _model_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    reference = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    expected = []
    for _ in range(100):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    params = SPACE.complete({"scheduler": "step", "lr": 0.25, "step_size_frac": 0.01,
                             "step_gamma": 0.9})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    schedule = build_schedule("step", optimizer, params, 100, 1)
    ours = []
    for _ in range(100):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_epoch(0.0)
    assert ours == pytest.approx(expected)
    assert reference.get_last_lr()[0] == pytest.approx(6.640349721896886e-06)


def test_the_weight_decay_a_run_uses():
    assert weight_decay_of({"use_weight_decay": True, "weight_decay": 0.01}) == 0.01
    assert weight_decay_of({"use_weight_decay": False, "weight_decay": 0.01}) == 0.0
    assert weight_decay_of({"weight_decay": 0.01}) == 0.01  # a space without the toggle
    assert weight_decay_of({}) == 0.0


def test_the_registries_name_their_batched_forms_without_importing_the_engines():
    code = ("import sys, hpsearch.optimizers, hpsearch.schedulers; "
            "print(sorted(m for m in sys.modules if m.startswith('hpsearch.engines')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"
    assert OPTIMIZERS["nadam"].batched_form().__name__ == "BatchedAdam"
    assert SCHEDULERS["onecycle"].batched_form().__name__ == "onecycle_table"


def test_an_optimizer_or_schedule_without_a_batched_form_keeps_a_study_off_the_cohort_engine(
        write_study, monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "mine", OptimizerSpec("mine", torch.optim.SGD, 0.1))
    monkeypatch.setitem(SCHEDULERS, "flat", SchedulerSpec("flat", "constant", None))
    assert OPTIMIZERS["mine"].batched is None and OPTIMIZERS["mine"].batched_form() is None

    def reason(search: str) -> str | None:
        config = load_study_config(str(write_study(search=search)))
        return why_not_cohort(config, config.load_data())

    assert reason('optimizers = ["sgd", "adam"]\nschedulers = ["none", "cosine"]') is None
    assert reason('optimizers = ["sgd", "mine"]') == \
        "optimizer 'mine' has no batched form (only the built-in ones do)"
    assert reason('schedulers = ["flat", "cosine"]') == \
        "scheduler 'flat' has no batched form (only the built-in ones do)"
