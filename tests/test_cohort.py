"""The cohort engine trains each member exactly as the reference engine trains it alone."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from conftest import default_dtype

from hpsearch.config import load_study_config
from hpsearch.engines.cohort import Cohort, Member, why_not_cohort
from hpsearch.training import train_configuration

# Members that together use every optimizer, every scheduler, warm-up chains, weight decay,
# momentum variants, gradient clipping and the head's own lr.
MEMBERS: list[dict[str, Any]] = [
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "sgd_nesterov": True,
     "use_weight_decay": True, "weight_decay": 1e-3, "scheduler": "step",
     "step_size_frac": 0.2, "step_gamma": 0.5},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "use_weight_decay": False,
     "scheduler": "plateau", "plateau_factor": 0.5, "plateau_patience": 2,
     "warmup_frac": 0.1},
    {"optimizer": "adam", "lr": 0.01, "beta1": 0.85, "beta2": 0.99, "amsgrad": True,
     "use_weight_decay": True, "weight_decay": 1e-4, "scheduler": "cosine",
     "cosine_min_lr_ratio": 0.05, "warmup_frac": 0.2},
    {"optimizer": "adamw", "lr": 0.003, "beta1": 0.9, "beta2": 0.999, "amsgrad": False,
     "use_weight_decay": True, "weight_decay": 0.05, "scheduler": "onecycle",
     "onecycle_pct_start": 0.3, "onecycle_div_factor": 25.0,
     "onecycle_final_div_factor": 1e3, "onecycle_anneal": "linear"},
    {"optimizer": "nadam", "lr": 0.004, "beta1": 0.9, "beta2": 0.995,
     "use_weight_decay": False, "scheduler": "exponential", "exponential_gamma": 0.95},
    {"optimizer": "radam", "lr": 0.01, "beta1": 0.88, "beta2": 0.999,
     "use_weight_decay": True, "weight_decay": 1e-3, "scheduler": "multistep",
     "multistep_first_frac": 0.3, "multistep_gap_frac": 0.3, "multistep_gamma": 0.3},
    {"optimizer": "adamax", "lr": 0.02, "beta1": 0.9, "beta2": 0.99,
     "use_weight_decay": False, "scheduler": "lambda", "lambda_family": "polynomial",
     "lambda_power": 2.0},
    {"optimizer": "rmsprop", "lr": 0.002, "rmsprop_alpha": 0.9, "momentum": 0.5,
     "rmsprop_centered": True, "use_weight_decay": False, "scheduler": "cosine_restarts",
     "cosine_restarts_t0_frac": 0.25, "cosine_restarts_t_mult": 2,
     "cosine_restarts_min_lr_ratio": 0.01},
    {"optimizer": "rmsprop", "lr": 0.001, "rmsprop_alpha": 0.99, "momentum": 0.0,
     "rmsprop_centered": False, "use_weight_decay": True, "weight_decay": 1e-5,
     "scheduler": "lambda", "lambda_family": "inverse_time", "lambda_decay": 0.1},
    {"optimizer": "adagrad", "lr": 0.05, "use_weight_decay": False, "scheduler": "none",
     "warmup_frac": 0.15},
    {"optimizer": "adadelta", "lr": 1.0, "adadelta_rho": 0.9, "use_weight_decay": True,
     "weight_decay": 1e-4, "scheduler": "lambda", "lambda_family": "exponential",
     "lambda_base": 0.97},
]

STUDY = """
seed = 5
[data]
dataset = "{dataset}"
split_seed = 1
[model]
kind = "mlp"
hidden = [8, 6]
activation = "{activation}"
[training]
epochs = {epochs}
batch_size = {batch_size}
[search.params]
{params}
"""


def study(write_study: Any, dataset: str = "wine", epochs: int = 20, batch_size: int = 0,
          activation: str = "relu", params: str = "") -> Any:
    text = STUDY.format(dataset=dataset, epochs=epochs, batch_size=batch_size,
                        activation=activation, params=params)
    return load_study_config(str(write_study(f"cohort_{dataset}", text=text)))


def completed(config: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    return config.space.complete(given)


def reference_curves(config: Any, data: Any, params: Mapping[str, Any], seed: int,
                     dtype: torch.dtype) -> tuple[list[float], list[float]]:
    """Validation losses and lrs of the reference engine's run (in `dtype`)."""
    from hpsearch.engines.cohort import _cast

    run = train_configuration(config, _cast(data, dtype), params, seed)
    return ([s.val_loss for s in run.result.history], [s.lr for s in run.result.history])


def cohort_curves(cohort: Cohort, members: list[Member],
                  epochs: int) -> dict[int, tuple[list[float], list[float]]]:
    for _ in range(epochs):
        cohort.run_epoch()
    return {id(m): ([s.val_loss for s in m.history], [s.lr for s in m.history])
            for m in members}


def assert_close(got: list[float], want: list[float], tolerance: float, what: str) -> None:
    assert len(got) == len(want), what
    for epoch, (a, b) in enumerate(zip(got, want, strict=True), start=1):
        assert math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), \
            f"{what} at epoch {epoch}: cohort {a!r}, reference {b!r}"


@pytest.mark.parametrize("batch_size", [0, 32])
def test_every_member_of_a_mixed_cohort_trains_as_it_would_alone_float64(write_study: Any,
                                                                          batch_size: int):
    config = study(write_study, epochs=20, batch_size=batch_size)
    data = config.load_data()
    with default_dtype(torch.float64):
        cohort = Cohort(config, data, dtype=torch.float64)
        members = [Member(i, completed(config, given), seed=100 + i)
                   for i, given in enumerate(MEMBERS)]
        cohort.add(members)
        curves = cohort_curves(cohort, members, 20)
        for member in members:
            want_loss, want_lr = reference_curves(config, data, member.params, member.seed,
                                                  torch.float64)
            got_loss, got_lr = curves[id(member)]
            name = f"{member.params['optimizer']}+{member.params['scheduler']}"
            assert_close(got_lr, want_lr, 1e-12, f"{name} lr")
            assert_close(got_loss, want_loss, 1e-9, f"{name} validation loss")


def test_clipping_head_lr_and_regression_match_the_reference(write_study: Any):
    config = study(write_study, dataset="linreg", epochs=15, activation="tanh", params="""
        clip_grad_norm = { low = 0.1, high = 10.0 }
        head_lr_mult = { low = 0.1, high = 10.0 }
    """)
    data = config.load_data()
    givens = [
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "scheduler": "cosine",
         "use_clip_grad_norm": True, "clip_grad_norm": 0.5, "head_lr_mult": 3.0},
        {"optimizer": "adam", "lr": 0.01, "scheduler": "plateau", "plateau_patience": 2,
         "use_clip_grad_norm": False, "head_lr_mult": 0.2},
        {"optimizer": "adam", "lr": 0.02, "scheduler": "onecycle",
         "use_clip_grad_norm": True, "clip_grad_norm": 2.0, "head_lr_mult": 1.0},
    ]
    with default_dtype(torch.float64):
        cohort = Cohort(config, data, dtype=torch.float64)
        members = [Member(i, completed(config, g), seed=7 * i) for i, g in enumerate(givens)]
        cohort.add(members)
        curves = cohort_curves(cohort, members, 15)
        for member in members:
            want = reference_curves(config, data, member.params, member.seed, torch.float64)
            assert_close(curves[id(member)][1], want[1], 1e-12, "lr")
            assert_close(curves[id(member)][0], want[0], 1e-9, "validation loss")


def test_removing_and_adding_members_mid_run_keeps_every_trajectory(write_study: Any):
    """Compaction (a member leaves) and refill (new members join at their own epoch 1) change
    nothing for the members that stay."""
    config = study(write_study, epochs=20, batch_size=48)
    data = config.load_data()
    with default_dtype(torch.float64):
        cohort = Cohort(config, data, dtype=torch.float64)
        first = [Member(i, completed(config, MEMBERS[i]), seed=i) for i in (0, 2, 3, 7)]
        cohort.add(first)
        for _ in range(4):
            cohort.run_epoch()
        cohort.remove([first[1], first[3]])  # an adam and an rmsprop member leave
        late = [Member(i, completed(config, MEMBERS[i]), seed=50 + i) for i in (2, 4, 9)]
        cohort.add(late)
        assert len(cohort) == 5
        for _ in range(6):
            cohort.run_epoch()
        cohort.remove([first[0]])
        for _ in range(8):
            cohort.run_epoch()
        assert [len(m.history) for m in first] == [10, 4, 18, 4]
        assert [len(m.history) for m in late] == [14, 14, 14]
        for member in [first[0], first[2], *late]:
            want_loss, want_lr = reference_curves(config, data, member.params, member.seed,
                                                  torch.float64)
            n = len(member.history)
            assert_close([s.lr for s in member.history], want_lr[:n], 1e-12, "lr")
            assert_close([s.val_loss for s in member.history], want_loss[:n], 1e-9, "loss")


def test_float32_cohort_stays_within_a_small_tolerance_of_the_reference(write_study: Any):
    """The default precision: float32 training rounds differently in batched products, so
    members agree with their solo runs to about 1e-4 relative over 100 epochs."""
    config = study(write_study, epochs=100)
    data = config.load_data()
    cohort = Cohort(config, data)
    members = [Member(i, completed(config, given), seed=i) for i, given in enumerate(MEMBERS)]
    cohort.add(members)
    curves = cohort_curves(cohort, members, 100)
    for member in members:
        want_loss, want_lr = reference_curves(config, data, member.params, member.seed,
                                              torch.float32)
        assert_close(curves[id(member)][1], want_lr, 1e-6, "lr")
        assert_close(curves[id(member)][0], want_loss, 1e-3, "validation loss")


def test_a_diverging_member_ends_alone(write_study: Any):
    config = study(write_study, dataset="linreg", epochs=10)
    data = config.load_data()
    cohort = Cohort(config, data)
    steady = Member(0, completed(config, MEMBERS[2]), seed=0)
    wild = Member(1, completed(config, {"optimizer": "sgd", "lr": 50.0, "momentum": 0.99,
                                        "scheduler": "none"}), seed=1)
    cohort.add([steady, wild])
    diverged = []
    for _ in range(10):
        for outcome in cohort.run_epoch():
            if outcome.stats is None:
                diverged.append(outcome)
                cohort.remove([outcome.member])
    assert [o.member for o in diverged] == [wild]
    assert "loss became" in diverged[0].diverged
    assert len(steady.history) == 10


def test_which_studies_the_cohort_engine_can_train(write_study: Any):
    config = study(write_study)
    assert why_not_cohort(config, config.load_data()) is None
    dropout = load_study_config(str(write_study("dropout", text=STUDY.format(
        dataset="wine", epochs=5, batch_size=0, activation="relu", params="").replace(
        'activation = "relu"', 'activation = "relu"\ndropout = 0.2'))))
    assert "dropout" in why_not_cohort(dropout, dropout.load_data())


def test_a_round_flushes_subnormal_floats_and_leaves_the_thread_as_it_was(write_study: Any):
    from hpsearch.engines.cohort import _flushing, _subnormals_flushed

    cpu = torch.device("cpu")
    subnormal = torch.tensor(1e-40)  # float32
    assert not _flushing() and subnormal.mul(1.0).item() != 0.0
    with _subnormals_flushed(cpu):
        assert _flushing() and subnormal.mul(1.0).item() == 0.0
    assert not _flushing()
    config = study(write_study, epochs=2)
    cohort = Cohort(config, config.load_data())
    cohort.add([Member(0, completed(config, MEMBERS[0]), seed=0)])
    cohort.run_epoch()
    assert not _flushing()
    # A thread that flushes already keeps flushing.
    torch.set_flush_denormal(True)
    try:
        with _subnormals_flushed(cpu):
            pass
        cohort.run_epoch()
        assert _flushing()
    finally:
        torch.set_flush_denormal(False)


def test_a_factory_with_its_own_initialisation_starts_from_its_own_weights(
        write_study: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch):
    """The built-in models' rows are drawn without building them (nn.Linear's own init); a
    user's factory is built, so whatever it initialises is what its members start from."""
    (tmp_path / "own_init_models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def net(n_inputs, n_outputs):\n"
        "    model = nn.Sequential(nn.Linear(n_inputs, 5), nn.Tanh(), nn.Linear(5, n_outputs))\n"
        "    for layer in (model[0], model[2]):\n"
        "        nn.init.normal_(layer.weight, std=0.3)\n"
        "        nn.init.constant_(layer.bias, 0.25)\n"
        "    return model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = STUDY.format(dataset="wine", activation="tanh", epochs=2, batch_size=0, params="")
    text = text.replace('kind = "mlp"\nhidden = [8, 6]\nactivation = "tanh"',
                        'factory = "own_init_models:net"')
    config = load_study_config(str(write_study("own_init", text=text)))
    data = config.load_data()
    cohort = Cohort(config, data)
    members = [Member(i, completed(config, MEMBERS[i]), seed=40 + i) for i in range(3)]
    cohort.add(members)
    (group,) = cohort.groups.values()
    assert not group.builtin
    factory = importlib.import_module("own_init_models").net
    first_biases = slice(data.n_features * 5, data.n_features * 5 + 5)
    for member, row in zip(group.members, group.flat, strict=True):
        torch.manual_seed(member.seed)
        want = torch.cat([p.detach().reshape(-1) for p in
                          factory(data.n_features, data.n_outputs).parameters()])
        assert torch.equal(row, want)
        assert torch.all(row[first_biases] == 0.25)  # the factory's own, not nn.Linear's


def curves_on(config: Any, data: Any, device: str) -> list[tuple[list[float], list[float]]]:
    """The mixed cohort's validation losses and lrs, trained on `device` in float64."""
    with default_dtype(torch.float64):
        cohort = Cohort(config, data, device=device, dtype=torch.float64)
        members = [Member(i, completed(config, given), seed=100 + i)
                   for i, given in enumerate(MEMBERS)]
        cohort.add(members)
        group = next(iter(cohort.groups.values()))
        assert group.flat.device.type == device and group.schedule.lr.device.type == device
        curves = cohort_curves(cohort, members, 20)
    return [curves[id(member)] for member in members]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch_size", [0, 32])
def test_a_cohort_on_cuda_trains_every_member_as_on_the_cpu(write_study: Any, batch_size: int):
    """Every optimizer and schedule's batched form, the stacked model and the minibatches'
    gathers on the GPU: the same curves as the CPU's (float64, to rounding)."""
    config = study(write_study, epochs=20, batch_size=batch_size)
    data = config.load_data()
    on_gpu = curves_on(config, data, "cuda")
    on_cpu = curves_on(config, data, "cpu")
    for given, (gpu_loss, gpu_lr), (cpu_loss, cpu_lr) in zip(MEMBERS, on_gpu, on_cpu,
                                                             strict=True):
        name = f"{given['optimizer']}+{given['scheduler']}"
        assert_close(gpu_lr, cpu_lr, 1e-12, f"{name} lr on cuda")
        assert_close(gpu_loss, cpu_loss, 1e-9, f"{name} validation loss on cuda")
