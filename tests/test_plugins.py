"""Your own optimizer and scheduler: registered from Python or by entry point, sampled beside the
built-ins, trained, reported, resumed and re-trained; clashes are one clear error."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from hpsearch import plugins
from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.errors import ConfigError
from hpsearch.optimizers import BUILTIN_OPTIMIZERS, MOMENTUM, OPTIMIZERS, OptimizerSpec
from hpsearch.params import Param
from hpsearch.plugins import register_optimizer, register_scheduler
from hpsearch.report import leaderboard, summary, trials_frame
from hpsearch.schedulers import BUILTIN_SCHEDULERS, SCHEDULERS, SchedulerSpec
from hpsearch.search.run import run_search
from hpsearch.space import SearchSpace
from hpsearch.studies import retrain_trial

EXAMPLE = "hpsearch.examples.custom"


@pytest.fixture(autouse=True)
def registries():
    """Registrations are process-wide: undo each test's, and forget the example module so that
    importing it registers again."""
    saved = dict(OPTIMIZERS), dict(SCHEDULERS), plugins._entry_points_loaded
    yield
    _forget_registrations(saved)


def _forget_registrations(saved) -> None:
    OPTIMIZERS.clear()
    OPTIMIZERS.update(saved[0])
    SCHEDULERS.clear()
    SCHEDULERS.update(saved[1])
    plugins._entry_points_loaded = saved[2]
    sys.modules.pop(EXAMPLE, None)


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


STUDY = """
seed = 5
{plugins}
[data]
dataset = "wine"
split_seed = 42
[model]
kind = "mlp"
hidden = [10]
[training]
epochs = 10
[search]
optimizers = ["plain_sgd", "adam"]
schedulers = ["none", "linear_decay"]
[search.params]
lr = {{ low = 0.01, high = 0.5 }}
warmup_frac = 0
[sampler]
kind = "random"
[pruner]
kind = "none"
"""


def _write(tmp_path: Path, plugins_table: str = '[plugins]\nmodules = ["' + EXAMPLE + '"]'
           ) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(STUDY.format(plugins=plugins_table))
    return path


def test_the_seeds_custom_optimizer_is_plain_gradient_descent():
    from hpsearch.examples.custom import PlainSGD

    torch.manual_seed(0)
    features, target = torch.randn(64, 4), torch.randint(0, 2, (64,))
    models = []
    for optimizer_class in (PlainSGD, torch.optim.SGD):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        optimizer = optimizer_class(model.parameters(), lr=0.1)
        for _ in range(20):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(features), target).backward()
            optimizer.step()
        models.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(models[0], models[1], atol=1e-6)


def test_a_registered_optimizer_and_scheduler_are_searched_trained_and_reported(tmp_path):
    path = _write(tmp_path)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = run("optimize", "--study", str(path), "--trials", "10", "--storage", url)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="custom", storage=url)
    trials = study.get_trials()
    mine = [t for t in trials if t.params["optimizer"] == "plain_sgd"]
    assert mine and len(mine) < len(trials)  # sampled beside adam
    # plain_sgd has no weight decay: the search draws none for it (adam's trials have it).
    assert all("use_weight_decay" not in t.params for t in mine)
    assert all("use_weight_decay" in t.params for t in trials if t not in mine)
    decaying = [t for t in trials if t.params["scheduler"] == "linear_decay"]
    assert decaying and all(0.01 <= t.params["linear_decay_end"] <= 1.0 for t in decaying)
    for trial in decaying:  # LinearLR from lr towards end x lr over the 10 epochs
        curve = trial.user_attrs["lr_curve"]
        end = trial.params["linear_decay_end"]
        # The stored curve keeps 4 significant digits.
        assert curve[0] == pytest.approx(trial.params["lr"], rel=5e-4)
        assert curve[-1] == pytest.approx(trial.params["lr"] * (1 + (end - 1) * 9 / 10),
                                          rel=5e-4)
    frame = trials_frame(study)
    by_optimizer = summary(frame, "optimizer")
    assert set(by_optimizer["optimizer"]) == {"plain_sgd", "adam"}
    assert "linear_decay_end=" in " ".join(leaderboard(frame, top=10)["scheduler_params"])
    report = run("report", "--study", "custom", "--storage", url)
    assert report.exit_code == 0 and "plain_sgd" in report.output
    space = run("space", "--study", str(path))
    assert "plain_sgd" in space.output and "linear_decay_end" in space.output


def test_a_study_that_names_a_plugin_resumes_and_retrains_in_a_fresh_process(tmp_path):
    path = _write(tmp_path)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_search(load_study_config(str(path)), url, 4, engine="reference")
    # What a new process has: no registrations beyond the built-ins.
    _forget_registrations(({k: OPTIMIZERS[k] for k in BUILTIN_OPTIMIZERS},
                           {k: SCHEDULERS[k] for k in BUILTIN_SCHEDULERS},
                           plugins._entry_points_loaded))
    assert "plain_sgd" not in OPTIMIZERS
    study = optuna.load_study(study_name="custom", storage=url)
    number = next(t.number for t in study.trials if t.params["optimizer"] == "plain_sgd")
    again = retrain_trial("custom", url, number)  # the stored config imports the plugin
    assert again.retrained_loss == again.stored_loss
    outcome = run_search(load_study_config(str(path)), url, 6, engine="reference")
    assert (outcome.counts.finished, outcome.ran) == (6, 2)


def test_a_plugin_optimizer_needs_its_module(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer must be one of sgd, .*; got 'plain_sgd'"):
        load_study_config(str(_write(tmp_path, plugins_table="")))
    with pytest.raises(ConfigError) as error:
        load_study_config(str(_write(tmp_path, '[plugins]\nmodules = ["nope.hp"]')))
    assert str(error.value).endswith(
        "[plugins]: plugin module 'nope.hp' cannot be imported: no module named 'nope' (from "
        f"{Path.cwd()} or the installed packages)")


def test_registering_a_plugin_leaves_the_default_space_alone():
    import hpsearch.examples.custom  # noqa: F401  (registers plain_sgd and linear_decay)

    assert "plain_sgd" in OPTIMIZERS and "linear_decay" in SCHEDULERS
    space = SearchSpace.build()
    assert space.optimizers == BUILTIN_OPTIMIZERS
    assert "plain_sgd" not in space.optimizers and "linear_decay" not in space.schedulers
    # ... but `hpsearch train --set optimizer=plain_sgd` may name it.
    assert space.complete({"optimizer": "plain_sgd"})["lr"] == 0.01


def _spec(name: str = "mine", **fields) -> OptimizerSpec:
    return OptimizerSpec(name, torch.optim.SGD, 0.1, "test", **fields)


@pytest.mark.parametrize(("spec", "message"), [
    (_spec("sgd"), "optimizer 'sgd' is built in; register yours under another name"),
    (_spec("My-Opt"), "optimizer name must be lowercase letters, digits and _ (starting with "
                      "a letter); got 'My-Opt'"),
    (_spec(params=(Param("momentum", "float", "mine", default=0.5, low=0.0, high=0.9),)),
     "optimizer 'mine': parameter 'momentum' is already declared differently by optimizer "
     "'sgd'; reuse that Param object or choose another name"),
    (_spec(params=(Param("lr", "float", "mine", default=0.5, low=0.0, high=0.9),)),
     "optimizer 'mine': parameter 'lr' is already declared differently by hpsearch"),
    (_spec(params=(Param("mine_beta", "float", "x", default=2.0, low=0.0, high=0.9,
                         bounds=(0.0, 1.0)),)),
     "optimizer 'mine': the default of mine_beta must be in [0, 1]; got 2"),
    (OptimizerSpec("mine", torch.optim.SGD, 0.0), "optimizer 'mine': default_lr must be > 0"),
    ("sgd", "register_optimizer takes an OptimizerSpec; got 'sgd'"),
])
def test_bad_registrations_are_one_clear_error(spec, message):
    with pytest.raises(ConfigError) as error:
        register_optimizer(spec)
    assert str(error.value).startswith(message)
    assert set(OPTIMIZERS) == set(BUILTIN_OPTIMIZERS)  # nothing half-registered


def test_registering_again_and_replacing():
    spec = register_optimizer(_spec(params=(MOMENTUM,)))  # shares momentum with sgd: fine
    assert register_optimizer(spec) is spec  # the same spec again: a no-op
    other = OptimizerSpec("mine", torch.optim.SGD, 0.2)
    with pytest.raises(ConfigError, match="optimizer 'mine' is already registered; pass "
                                          "replace=True"):
        register_optimizer(other)
    register_optimizer(other, replace=True)
    assert OPTIMIZERS["mine"] is other
    with pytest.raises(ConfigError, match="scheduler 'cosine' is built in"):
        register_scheduler(SchedulerSpec("cosine", "mine", None))


def test_entry_points_register_once_and_a_broken_one_is_skipped(tmp_path, monkeypatch,
                                                                caplog):
    info = tmp_path / "hp_plugin_test-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hp-plugin-test\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""
        [hpsearch.optimizers]
        plain_sgd = {EXAMPLE}:PLAIN_SGD
        misnamed = {EXAMPLE}:PLAIN_SGD
        [hpsearch.schedulers]
        linear_decay = {EXAMPLE}:LINEAR_DECAY
        broken = hp_nowhere.schedules:SPEC
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins._entry_points_loaded = False
    with caplog.at_level(logging.WARNING, logger="hpsearch.plugins"):
        config = load_study_config(str(_write(tmp_path, plugins_table="")))
    assert config.space.optimizers == ("plain_sgd", "adam")
    assert "linear_decay" in config.space.schedulers
    warnings = [r.getMessage() for r in caplog.records]
    assert any("'broken' in group hpsearch.schedulers" in w and "hp_nowhere" in w
               for w in warnings)
    assert any("'misnamed'" in w and "whose name is not 'misnamed'" in w for w in warnings)
    caplog.clear()
    load_study_config(str(_write(tmp_path, plugins_table="")))
    assert not caplog.records  # loaded once per process
