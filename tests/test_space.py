"""The joint conditional space: bounds, branches, overrides, completion from given values."""

from __future__ import annotations

import optuna
import pytest

from hpsearch.errors import ConfigError
from hpsearch.optimizers import OPTIMIZERS
from hpsearch.schedulers import SCHEDULERS
from hpsearch.space import SearchSpace, base_params


def _sample(space: SearchSpace, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return samples


def test_every_sampled_value_lies_in_its_range_and_branch():
    space = SearchSpace.build()
    params = base_params()
    samples = _sample(space, 400)
    for sample in samples:
        for name, value in sample.items():
            param = params[name]
            if param.kind == "categorical":
                assert value in param.choices, (name, value)
            else:
                assert param.low <= value <= param.high, (name, value)
        optimizer, scheduler = sample["optimizer"], sample["scheduler"]
        own = {p.name for p in OPTIMIZERS[optimizer].params}
        own |= {p.name for p in SCHEDULERS[scheduler].params}
        branch_free = {"optimizer", "lr", "use_weight_decay", "weight_decay", "scheduler",
                       "warmup_frac"}
        assert set(sample) - branch_free <= own, sample
        assert ("weight_decay" in sample) == sample["use_weight_decay"]
        assert ("warmup_frac" in sample) == SCHEDULERS[scheduler].allows_warmup
        if "sgd_nesterov" in sample:
            assert sample["momentum"] > 0
    # 400 random draws cover every optimizer and scheduler.
    assert {s["optimizer"] for s in samples} == set(OPTIMIZERS)
    assert {s["scheduler"] for s in samples} == set(SCHEDULERS)


def test_study_choices_and_overrides_restrict_the_space():
    space = SearchSpace.build(
        ["adam", "sgd"], ["cosine"],
        {"lr": {"low": 0.01, "high": 0.1}, "momentum": 0.9, "weight_decay": 0},
    )
    for sample in _sample(space, 60):
        assert sample["optimizer"] in ("adam", "sgd")
        assert sample["scheduler"] == "cosine"
        assert 0.01 <= sample["lr"] <= 0.1
        assert sample["weight_decay"] == 0.0
        assert "use_weight_decay" not in sample
        if sample["optimizer"] == "sgd":
            assert sample["momentum"] == 0.9


@pytest.mark.parametrize(
    ("optimizers", "schedulers", "overrides", "message"),
    [
        (["adamm"], None, {}, "optimizer must be one of sgd, adam"),
        (None, ["cosin"], {}, "scheduler must be one of none, step"),
        ([], None, {}, "optimizers must name at least one optimizer"),
        (None, None, {"lrr": 0.1}, "unknown parameter 'lrr'; known: optimizer, lr,"),
        (None, None, {"lr": {"low": 0.1, "high": 0.01}},
         "lr: range is inverted (low 0.1 > high 0.01)"),
        (None, None, {"lr": {"low": 0.1, "high": 0.1}},
         "lr: range is empty (low == high == 0.1); to fix it write lr = 0.1"),
        (None, None, {"lr": {"low": 0, "high": 0.1}}, "lr must be in [1e-12, 100]; got 0"),
        (None, None, {"momentum": 1.5}, "momentum must be in [0, 1]; got 1.5"),
        (None, None, {"plateau_patience": 2.5}, "plateau_patience must be an integer; got 2.5"),
        (None, None, {"amsgrad": "maybe"}, "amsgrad must be one of False, True; got 'maybe'"),
        (None, None, {"lr": {"lo": 1}}, "lr: unknown key 'lo'"),
        (None, None, {"weight_decay": {"low": 0, "high": 0.1}},
         "weight_decay: a log range needs low > 0; got 0"),
    ],
)
def test_bad_choices_and_overrides_raise_one_clear_error(optimizers, schedulers, overrides,
                                                         message):
    with pytest.raises(ConfigError) as error:
        SearchSpace.build(optimizers, schedulers, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_complete_fills_defaults_and_validates_given_values():
    space = SearchSpace.build()
    params = space.complete({"optimizer": "adam", "lr": "0.1", "scheduler": "plateau"})
    assert params == {
        "optimizer": "adam", "lr": 0.1, "use_weight_decay": False, "beta1": 0.9,
        "beta2": 0.999, "amsgrad": False, "scheduler": "plateau", "plateau_factor": 0.1,
        "plateau_patience": 10, "warmup_frac": 0.0,
    }
    # The optimizer's own default learning rate when none is given.
    assert space.complete({"optimizer": "adadelta"})["lr"] == 1.0
    assert space.complete({"weight_decay": "0.01"})["use_weight_decay"] is True


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"optimizer": "adam", "momentum": "0.9"},
         "parameter 'momentum' does not apply to optimizer 'adam' with scheduler 'none'"),
        ({"foo": "1"}, "unknown parameter 'foo'"),
        ({"lr": "fast"}, "lr must be a number; got 'fast'"),
    ],
)
def test_complete_rejects_what_does_not_apply(given, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.build().complete(given)


def test_grid_enumerates_each_distinct_configuration_once():
    space = SearchSpace.build(
        ["sgd"], ["none", "step", "plateau"],
        {"lr": {"values": [0.1, 0.01]}, "momentum": 0, "weight_decay": 0, "warmup_frac": 0,
         "step_size_frac": 0.1, "step_gamma": 0.5, "plateau_factor": 0.1,
         "plateau_patience": {"values": [5, 10]}},
    )
    configurations = space.configurations()
    # lr (2) x [none (1) + step (1) + plateau (2 patiences)]; no nesterov: momentum is 0.
    assert len(configurations) == 8
    assert len({tuple(sorted(c.items())) for c in configurations}) == 8
    assert all("sgd_nesterov" not in c for c in configurations)


def test_grid_needs_finite_values():
    with pytest.raises(ConfigError, match="grid sampler needs a finite set of values for lr"):
        SearchSpace.build(["sgd"], ["none"]).configurations()
