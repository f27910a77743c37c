"""Your own model: a factory named `package.module:function` in the study file, with fixed options
and parameters of its own that join the search, `hpsearch space`, `train --set`, grids and
re-training like the built-in ones."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from hpsearch.cli import cli
from hpsearch.config import load_study_config
from hpsearch.engines.reference import ReferenceEngine
from hpsearch.errors import ConfigError
from hpsearch.search.run import run_search
from hpsearch.studies import retrain_trial
from hpsearch.training import train_single

FACTORIES = '''
import torch
from torch import nn
from hpsearch import Param, searches


class Net(nn.Module):
    def __init__(self, n_inputs, n_outputs, width, depth):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(n_inputs if i == 0 else width, width), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x):
        return self.head(self.body(x))


@searches(Param("width", "int", "hidden width", default=8, low=4, high=32, log=True,
                bounds=(1, 1024)))
def net(n_inputs, n_outputs, width=8, depth=1):
    return Net(n_inputs, n_outputs, width, depth)


def plain(n_inputs, n_outputs):
    return nn.Linear(n_inputs, n_outputs)


def not_a_model(n_inputs, n_outputs):
    return "a model"


def wrong_outputs(n_inputs, n_outputs):
    return nn.Linear(n_inputs, n_outputs + 1)


@searches(Param("lr", "float", "clashes", default=0.1, low=0.01, high=1.0))
def clashing(n_inputs, n_outputs, lr=0.1):
    return nn.Linear(n_inputs, n_outputs)


class NoHead(nn.Module):
    def __init__(self, n_inputs, n_outputs):
        super().__init__()
        self.inner = nn.Linear(n_inputs, n_outputs)

    def forward(self, x):
        return self.inner(x)
'''


@pytest.fixture
def models(tmp_path, monkeypatch) -> str:
    """A user's module of model factories in the current folder (not installed): its name."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    return name


def _study(tmp_path: Path, model: str, params: str = "", sampler: str = "random") -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent("""
        seed = 2
        [data]
        dataset = "wine"
        split_seed = 42
        [model]
        {model}
        [training]
        epochs = 8
        [search]
        optimizers = ["adam"]
        schedulers = ["none"]
        [search.params]
        warmup_frac = 0
        {params}
        [sampler]
        kind = "{sampler}"
        [pruner]
        kind = "none"
    """).format(model=textwrap.dedent(model).strip(), params=textwrap.dedent(params).strip(),
                sampler=sampler))
    return path


def test_a_factory_with_a_searched_parameter_is_searched_stored_and_retrained(tmp_path,
                                                                              models):
    path = _study(tmp_path, f'factory = "{models}:net"\ndepth = 2',
                  "width = { low = 4, high = 16 }\nhead_lr_mult = { low = 0.5, high = 4 }")
    config = load_study_config(str(path))
    assert config.model.kind == f"{models}:net" and config.model.options == {"depth": 2}
    assert config.as_dict()["model"] == {"factory": f"{models}:net", "depth": 2}
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_search(config, url, 4, engine="reference")
    study = optuna.load_study(study_name="mine", storage=url)
    widths = [t.params["width"] for t in study.trials]
    assert all(4 <= w <= 16 for w in widths) and len(set(widths)) > 1
    assert all(0.5 <= t.params["head_lr_mult"] <= 4 for t in study.trials)
    again = retrain_trial("mine", url, 3)
    model = again.run.model
    assert model.head.in_features == widths[3] and len(model.body) == 4  # depth 2
    assert again.retrained_loss == again.stored_loss


def test_the_factorys_parameters_show_in_space_and_take_train_set(tmp_path, models):
    path = _study(tmp_path, f'factory = "{models}:net"')
    space = CliRunner().invoke(cli, ["space", "--study", str(path)])
    assert space.exit_code == 0, space.output
    assert any(line.split()[:4] == ["width", "int", "[4,", "32]"]
               for line in space.output.splitlines())
    params, run = train_single(load_study_config(str(path)), {"width": "6"})
    assert params["width"] == 6 and run.model.head.in_features == 6
    params, run = train_single(load_study_config(str(path)), {})
    assert params["width"] == 8  # the declared default
    result = CliRunner().invoke(cli, ["train", "--study", str(path), "--set", "width=5"])
    assert result.exit_code == 0, result.output
    assert "width" in result.output


def test_a_grid_multiplies_the_factorys_values(tmp_path, models):
    path = _study(tmp_path, f'factory = "{models}:net"',
                  "lr = 0.01\nuse_weight_decay = false\nbeta1 = 0.9\nbeta2 = 0.999\n"
                  "amsgrad = false\nwidth = { values = [4, 8, 12] }", sampler="grid")
    configurations = load_study_config(str(path)).space.configurations()
    assert [c["width"] for c in configurations] == [4, 8, 12]


def test_a_factory_without_searched_parameters_trains(tmp_path, models):
    config = load_study_config(str(_study(tmp_path, f'factory = "{models}:plain"')))
    assert config.space.model == ()
    params, run = train_single(config, {"lr": "0.1"})
    assert isinstance(run.model, torch.nn.Linear) and "width" not in params
    history = run.result.history
    assert history[-1].val_loss < history[0].val_loss and history[-1].val_accuracy > 0.8


@pytest.mark.parametrize(("model", "message"), [
    ('factory = "no_colon"', "[model].factory must be 'package.module:function'; got "
                             "'no_colon'"),
    ('factory = "{m}:missing"', "[model]: model factory '{m}:missing': {m} has no attribute "
                                "'missing'"),
    ('factory = "hp_no_such_pkg.models:net"', "[model]: model factory "
     "'hp_no_such_pkg.models:net' cannot be imported: no module named 'hp_no_such_pkg'"),
    ('factory = "{m}:net"\nwidth = 8', "[model]: model factory '{m}:net': 'width' is "
                                      "searched; fix it in [search.params] (width = ...)"),
    ('factory = "{m}:net"\nheight = 8', "[model]: model factory '{m}:net' cannot be called "
                                       "with n_inputs, n_outputs and ['height', 'width']"),
    ('factory = "{m}:clashing"', "the model factory's parameter 'lr' has the name of a "
                                 "built-in parameter; rename it (e.g. model_lr)"),
    ('kind = "mlp"\nfactory = "{m}:net"', "[model]: give kind (a built-in model) or factory "
                                          "(your own), not both"),
])
def test_bad_factories_in_study_files(tmp_path, models, model, message):
    path = _study(tmp_path, model.format(m=models))
    with pytest.raises(ConfigError) as error:
        load_study_config(str(path))
    assert message.format(m=models) in str(error.value)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize(("factory", "params", "message"), [
    ("not_a_model", "", "model factory '{m}:not_a_model' must return a torch.nn.Module; "
                        "got str"),
    ("wrong_outputs", "", "model '{m}:wrong_outputs' must map (2, 13) inputs to (2, 3) "
                          "outputs (classification of wine); got (2, 4)"),
    ("NoHead", "head_lr_mult = 2.0", "head_lr_mult needs to know the model's head: model "
                                     "'{m}:NoHead' has no `head` attribute"),
])
def test_a_model_that_cannot_train_fails_before_any_trial(tmp_path, models, factory, params,
                                                          message):
    config = load_study_config(str(_study(tmp_path, f'factory = "{models}:{factory}"',
                                          params)))
    with pytest.raises(ConfigError) as error:
        ReferenceEngine(config, config.load_data())
    assert str(error.value).startswith(message.format(m=models))
