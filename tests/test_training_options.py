"""The opt-in training parameters (gradient clipping, the head's lr multiplier, a searched batch
size) and the device: each does what it says, and none appears unless the study file asks."""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import load_study_config
from hpsearch.engines.reference import ReferenceEngine
from hpsearch.errors import ConfigError
from hpsearch.models import mlp
from hpsearch.records import ATTR_DEVICE
from hpsearch.schedulers import build_schedule
from hpsearch.search.run import run_search
from hpsearch.space import SearchSpace
from hpsearch.training import (
    build_optimizer,
    clip_norm,
    model_for,
    resolve_device,
    train_configuration,
    train_single,
)

OPT_IN = ("batch_size", "use_clip_grad_norm", "clip_grad_norm", "head_lr_mult")


def test_no_study_gets_the_new_parameters_unless_it_names_them():
    for name in ("wine", "digits", "breast_cancer", "linreg", "churn"):
        space = load_study_config(name).space
        names = {p.name for p in space.relevant()}
        expected = {"use_clip_grad_norm", "clip_grad_norm"} if name == "churn" else set()
        assert names & set(OPT_IN) == expected, name
    assert not set(SearchSpace.build().complete({})) & set(OPT_IN)


@pytest.mark.parametrize(("overrides", "given", "expected"), [
    ({"clip_grad_norm": 2.0}, {}, {"clip_grad_norm": 2.0}),
    ({"clip_grad_norm": 0}, {}, {"clip_grad_norm": 0.0}),
    ({"clip_grad_norm": {"low": 0.5, "high": 4.0}}, {},
     {"use_clip_grad_norm": True, "clip_grad_norm": 1.0}),
    ({"use_clip_grad_norm": {"choices": [False, True]}}, {}, {"use_clip_grad_norm": False}),
    ({"use_clip_grad_norm": {"choices": [False, True]}}, {"use_clip_grad_norm": "true"},
     {"use_clip_grad_norm": True, "clip_grad_norm": 1.0}),
    ({}, {"clip_grad_norm": "3"}, {"use_clip_grad_norm": True, "clip_grad_norm": 3.0}),
    ({"head_lr_mult": {"low": 0.5, "high": 8.0}}, {}, {"head_lr_mult": 1.0}),
    ({"batch_size": {"values": [16, 64]}}, {"batch_size": "64"}, {"batch_size": 64}),
    ({}, {"batch_size": "32"}, {"batch_size": 32}),
])
def test_a_named_opt_in_parameter_joins_the_configuration(overrides, given, expected):
    params = SearchSpace.build(["sgd"], ["none"], overrides).complete(given)
    assert {k: v for k, v in params.items() if k in OPT_IN} == expected


def test_clipping_limits_each_step_to_lr_times_the_norm():
    config = load_study_config("wine")
    data = config.load_data()
    steps = {}
    for norm in (0.0, 1e-3):
        given = {"optimizer": "sgd", "lr": "0.5", "scheduler": "none"}
        if norm:
            given["clip_grad_norm"] = str(norm)
        params = config.space.complete(given)
        assert clip_norm(params) == norm
        torch.manual_seed(0)
        before = torch.cat([p.detach().flatten() for p in model_for(config, data, params)
                            .parameters()])
        one_epoch = type(config.training)(epochs=1, batch_size=0)
        run = train_configuration(_with_training(config, one_epoch), data, params, seed=0)
        after = torch.cat([p.detach().flatten() for p in run.model.parameters()])
        steps[norm] = (after - before).norm().item()
    # Plain SGD moves by lr x the (clipped) gradient: exactly lr x norm when clipped.
    assert steps[1e-3] == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert steps[0.0] > 100 * steps[1e-3]


def _with_training(config, training):
    return type(config)(**{**vars(config), "training": training})


def test_the_head_learning_rate_is_a_second_parameter_group():
    model = mlp(4, 3, hidden=[8, 8])
    space = SearchSpace.build(["sgd"], ["none"], {"head_lr_mult": {"low": 0.1, "high": 10}})
    params = space.complete({"lr": "0.02", "head_lr_mult": "4", "momentum": "0.9"})
    optimizer = build_optimizer(model, params)
    body, head = optimizer.param_groups
    assert (body["lr"], head["lr"]) == (0.02, pytest.approx(0.08))
    assert [id(p) for p in head["params"]] == [id(model[-1].weight), id(model[-1].bias)]
    assert len(body["params"]) == 4 and body["momentum"] == head["momentum"] == 0.9
    single = build_optimizer(model, space.complete({"lr": "0.02"}) | {"head_lr_mult": 1.0})
    assert len(single.param_groups) == 2
    assert len(build_optimizer(model, SearchSpace.build().complete({})).param_groups) == 1


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "step"])
def test_schedules_keep_the_heads_multiple(scheduler):
    model = mlp(4, 3, hidden=[8])
    space = SearchSpace.build(["sgd"], [scheduler], {"head_lr_mult": 3.0, "warmup_frac": 0})
    params = space.complete({"lr": "0.1"})
    optimizer = build_optimizer(model, params)
    schedule = build_schedule(scheduler, optimizer, params, epochs=10, steps_per_epoch=2)
    seen = []
    for _ in range(10):
        for _ in range(2):
            seen.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(1.0)
    assert all(head == pytest.approx(3 * body, rel=1e-6) for body, head in seen)
    assert [max(lrs) for lrs in zip(*seen, strict=True)] == [pytest.approx(0.1),
                                                             pytest.approx(0.3)]


def test_a_searched_batch_size_trains_mini_batches(write_study):
    text = """
    seed = 0
    [data]
    dataset = "breast_cancer"
    [training]
    epochs = 20
    [search]
    optimizers = ["adam"]
    schedulers = ["none"]
    [search.params]
    batch_size = { values = [0, 32] }
    """
    config = load_study_config(str(write_study("batches", text=text)))
    assert config.space.params["batch_size"].choices == (0, 32)
    assert "batch_size" in {p.name for p in config.space.relevant()}
    given = {"optimizer": "adam", "lr": "0.003"}
    _, full = train_single(config, {**given, "batch_size": "0"})
    _, mini = train_single(config, {**given, "batch_size": "32"})
    # 20 epochs of 12 batches are many more steps than 20 full-batch ones: at least as good.
    assert mini.result.last.val_loss <= full.result.last.val_loss * 1.1
    assert mini.result.last.val_accuracy >= 0.9 and full.result.last.val_accuracy >= 0.85
    assert full.result.history != mini.result.history


def test_batch_size_is_fixed_in_training_or_searched_not_both(write_study):
    text = """
    [data]
    dataset = "wine"
    [training]
    batch_size = 16
    [search.params]
    batch_size = { values = [16, 32] }
    """
    with pytest.raises(ConfigError, match=r"batch_size is in \[training\] and in "
                                          r"\[search.params\]; keep one"):
        load_study_config(str(write_study("both", text=text)))


def test_devices_resolve_and_an_absent_accelerator_is_an_error():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda, mps; got "
                                          "'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' is not available here"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="device 'mps' is not available here"):
            resolve_device("mps")


def test_the_reference_engine_moves_the_data_once_and_records_the_device(write_study):
    config = load_study_config(str(write_study()))
    engine = ReferenceEngine(config, config.load_data(), device="cpu")
    assert engine.data.train.features.device == torch.device("cpu")
    outcome = run_search(config, "memory", 1, engine="reference", device="cpu")
    assert outcome.study.trials[0].user_attrs[ATTR_DEVICE] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_the_gpu_matches_the_cpu(write_study):
    config = load_study_config("wine")
    given = {"optimizer": "adam", "lr": "0.01", "scheduler": "onecycle",
             "clip_grad_norm": "1.0", "batch_size": "32"}
    _, cpu = train_single(config, given, device="cpu")
    _, gpu = train_single(config, given, device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    assert [s.lr for s in gpu.result.history] == [s.lr for s in cpu.result.history]
    assert gpu.result.last.val_loss == pytest.approx(cpu.result.last.val_loss, rel=1e-2,
                                                     abs=1e-3)
    engine = ReferenceEngine(config, config.load_data(), device="auto")
    assert engine.data.train.features.device.type == "cuda"
