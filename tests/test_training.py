"""The shared training loop on real data: the seeds' experiments, divergence, mini-batches."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler

from hpsearch.config import load_study_config
from hpsearch.records import COMPLETED, DIVERGED
from hpsearch.training import STOPPED, train_configuration, train_single


def test_linreg_recovers_w_true_as_in_seed_003():
    params, run = train_single(load_study_config("linreg"), {"scheduler": "none"})
    assert params["lr"] == 0.25 and params["optimizer"] == "sgd"
    result = run.result
    assert result.end_reason == COMPLETED and len(result.history) == 100
    weights = run.model[0].weight.detach()[0].tolist()
    assert weights == pytest.approx([0, 2, 4, 6, 8], abs=0.03)
    assert abs(run.model[0].bias.item()) < 0.03
    # The noise variance is 0.2 ** 2 = 0.04: the tutorial's final loss.
    assert result.last.train_loss == pytest.approx(0.04, abs=0.006)
    assert result.last.val_loss == pytest.approx(0.04, abs=0.008)


def test_linreg_trains_in_its_own_units_as_seed_003_does():
    config = load_study_config("linreg")
    assert not config.data.scale_target  # scale = false: x and y as drawn
    _, run = train_single(config, {"scheduler": "none"})
    assert (run.preprocessing.target_mean, run.preprocessing.target_scale) == (0.0, 1.0)
    # Seed 003's final loss, 0.0404: the noise's variance 0.2 ** 2, in y's units.
    assert run.result.last.val_loss == pytest.approx(0.0404, abs=0.003)
    assert run.preprocessing.rmse(run.result.last.val_loss) == pytest.approx(0.2, abs=0.01)


def test_seed_004_plateau_lr_falls_as_reduce_lr_on_plateau_dictates():
    config = load_study_config("wine")
    params, run = train_single(
        config, {"optimizer": "adam", "lr": "0.1", "scheduler": "plateau"})
    assert (params["plateau_factor"], params["plateau_patience"]) == (0.1, 10)
    history = run.result.history
    assert len(history) == 100
    # Replay torch's own ReduceLROnPlateau on the validation losses the run saw.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=10)
    expected = []
    for stats in history:
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(stats.val_loss)
    assert [s.lr for s in history] == pytest.approx(expected, rel=1e-12)
    lrs = {round(s.lr, 12) for s in history}
    assert max(lrs) == 0.1 and min(lrs) <= 1e-5  # it did fall, by factors of 10
    assert history[-1].val_accuracy >= 0.9


def test_same_seed_same_run_other_seed_other_run():
    config = load_study_config("wine")
    given = {"optimizer": "sgd", "lr": "0.05", "momentum": "0.9", "scheduler": "cosine"}
    _, a = train_single(config, given, seed=5)
    _, b = train_single(config, given, seed=5)
    _, c = train_single(config, given, seed=6)
    assert [s.val_loss for s in a.result.history] == [s.val_loss for s in b.result.history]
    assert a.result.last.val_loss != c.result.last.val_loss


def test_a_diverging_learning_rate_ends_the_run_cleanly():
    config = load_study_config("linreg")
    _, run = train_single(config, {"scheduler": "none", "lr": "5"})
    result = run.result
    assert result.end_reason == DIVERGED
    assert result.detail.startswith("training loss became inf at epoch ")
    assert all(math.isfinite(s.val_loss) for s in result.history)


def test_callback_can_stop_training():
    config = load_study_config("wine")
    params = config.space.complete({"optimizer": "adam"})
    run = train_configuration(config, config.load_data(), params, 0,
                              on_epoch_end=lambda stats: stats.epoch == 7)
    assert run.result.end_reason == STOPPED and len(run.result.history) == 7


def test_mini_batches_reach_a_loss_comparable_to_full_batch(write_study):
    text = """
    seed = 0
    [data]
    dataset = "breast_cancer"
    [training]
    epochs = 30
    batch_size = {batch}
    """
    full = load_study_config(str(write_study("full", text=text.format(batch=0))))
    mini = load_study_config(str(write_study("mini", text=text.format(batch=32))))
    given = {"optimizer": "adam", "lr": "0.003"}
    _, full_run = train_single(full, given)
    _, mini_run = train_single(mini, given)
    # 30 epochs of 12 batches take many more steps than 30 full-batch steps: mini-batch
    # training should be at least as good here; both must learn (chance is ~0.69).
    assert mini_run.result.last.val_loss <= full_run.result.last.val_loss * 1.1
    assert mini_run.result.last.val_accuracy >= 0.9
    assert full_run.result.last.val_accuracy >= 0.85
