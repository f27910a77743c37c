"""Study files: load `studies/NAME.toml` (or a path), validate every key, freeze a StudyConfig.

Study files are data only: they name datasets (or a CSV/Parquet file), models, optimizers and
schedulers from the registries and never carry code. They may name the user's own code, which
is imported (never read from the file): a model factory (`[model] factory = "pkg.mod:fn"`) and
plugin modules that register optimizers or schedulers (`[plugins] modules = ["pkg.hp"]`). The
plugins are imported before anything else is checked, so a stored study that names them parses
again wherever they are installed.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpsearch.data import DATASETS, IMPUTE, TASKS, Dataset, TableSource, load_dataset, load_table
from hpsearch.errors import ConfigError
from hpsearch.models import MODELS, is_factory_path, searched_params
from hpsearch.plugins import load_plugins
from hpsearch.space import BATCH_SIZE, SearchSpace

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "patient", "paired",
           "none")

# Where `--study NAME` looks, in order: ./studies, $HPSEARCH_STUDIES, the studies beside the
# package (a source checkout).
BUNDLED_STUDIES = Path(__file__).resolve().parent.parent / "studies"


@dataclass(frozen=True)
class _Setting:
    """How a study file's value of a config field is checked (see `setting`)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    kind: type | None = None  # a plain type check (e.g. bool) instead of a range or choice


def setting(default: Any, **check: Any) -> Any:
    """A config field with its default and its check, declared together: a number in a range
    (`low`, `high`, `integer`, `low_open`), one of `choices`, or of type `kind`. The study
    file's table is read field by field in this order (`_settings`)."""
    return field(default=default, metadata={"setting": _Setting(**check)})


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # a DATASETS name; for a file, the file's name
    options: Mapping[str, Any] = field(default_factory=dict)
    valid_fraction: float = setting(0.2, low=0.0, high=0.9, low_open=True)
    test_fraction: float = setting(0.2, low=0.0, high=0.9)
    split_seed: int = setting(0, low=0, integer=True)
    scale: bool = setting(True, kind=bool)
    table: TableSource | None = None  # a CSV/Parquet file instead of a registered dataset
    # Standardize a regression target on the training split (the loss is then in its units
    # of standard deviation). A study file's default is `scale`; a stored config without the
    # key (`stored_study_config`) trained on the raw target, and keeps it.
    scale_target: bool = False

    def as_dict(self) -> dict[str, Any]:
        split = {"valid_fraction": self.valid_fraction, "test_fraction": self.test_fraction,
                 "split_seed": self.split_seed, "scale": self.scale,
                 "scale_target": self.scale_target}
        if self.table is None:
            return {"dataset": self.dataset, "options": _plain(self.options), **split}
        table = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.table).items()
                 if v is not None}
        return {**table, **split}


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "mlp"  # a MODELS name, or a user's factory as "package.module:function"
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        key = "factory" if is_factory_path(self.kind) else "kind"
        return {key: self.kind, **_plain(self.options)}


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = setting(100, low=1, integer=True)
    batch_size: int = setting(0, low=0, integer=True)  # 0: full batch


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = setting("tpe", choices=SAMPLERS)
    startup_trials: int = setting(10, low=0, integer=True)


@dataclass(frozen=True)
class PrunerConfig:
    kind: str = setting("median", choices=PRUNERS)
    # Finished trials before pruning starts.
    startup_trials: int = setting(5, low=0, integer=True)
    # Epochs of every trial that are never pruned.
    warmup_epochs: int = setting(10, low=0, integer=True)
    # Percentile pruner: keep the best `percentile` %.
    percentile: float = setting(25.0, low=0.0, high=100.0, low_open=True)
    # Patient pruner: epochs without improvement.
    patience: int = setting(10, low=0, integer=True)
    # Paired pruner: prune a trial whose runs lose to the best trial's same runs at p below.
    p_threshold: float = setting(0.1, low=0.0, high=1.0, low_open=True)
    # Successive halving / Hyperband: how much each rung cuts, and the smallest budget.
    reduction_factor: int = setting(3, low=2, integer=True)
    min_epochs: int = setting(1, low=1, integer=True)


@dataclass(frozen=True)
class EvaluationConfig:
    """How each trial is measured: `folds` x `seeds` training runs of its configuration, the
    same (fold, seed) runs for every trial of the study; the trial's value is their mean."""

    # k-fold cross-validation over the rows not held out for test; 1: one validation split.
    folds: int = setting(1, low=1, integer=True)
    seeds: int = setting(1, low=1, integer=True)  # training seeds per fold

    @property
    def runs(self) -> int:
        return self.folds * self.seeds

    def describe(self) -> str:
        if self.runs == 1:
            return "1 run per trial (one validation split, one seed)"
        folds = f"{self.folds} fold{'s' if self.folds > 1 else ''}"
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        return f"{folds} x {seeds} = {self.runs} runs per trial"


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file. `as_dict()` is what the study stores as its config: a study
    document in the study file's own shape, so `parse_study(config.as_dict())` gives it back."""

    name: str
    description: str
    seed: int
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    search: Mapping[str, Any]  # as written: optimizers, schedulers, params
    space: SearchSpace
    sampler: SamplerConfig
    pruner: PrunerConfig
    source: str = ""
    plugins: tuple[str, ...] = ()  # modules imported before the rest is checked
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def as_dict(self) -> dict[str, Any]:
        def plain(section: Any) -> dict[str, Any]:
            return {k: _plain(v) for k, v in vars(section).items()}

        document = {
            "name": self.name, "description": self.description, "seed": self.seed,
            "data": self.data.as_dict(), "model": self.model.as_dict(),
            "training": plain(self.training), "search": _plain(self.search),
            "sampler": plain(self.sampler), "pruner": plain(self.pruner),
        }
        # Only where used: the stored configs of older studies have neither, and resume.
        if self.plugins:
            document["plugins"] = {"modules": list(self.plugins)}
        if self.evaluation != EvaluationConfig():
            document["evaluation"] = plain(self.evaluation)
        return document

    def load_data(self, folds: int | None = None, refit: bool = False,
                  arrays: bool = False) -> Dataset:
        """The study's dataset, split and scaled as the study file says: into the folds of
        its evaluation, or `folds` (1: one validation split, as `hpsearch train` trains).
        `refit`: one training split of every row not held out for test (a final model).
        `arrays`: numpy arrays instead of tensors (described without importing torch)."""
        d = self.data
        split = {"valid_fraction": d.valid_fraction, "test_fraction": d.test_fraction,
                 "split_seed": d.split_seed, "scale": d.scale, "scale_target": d.scale_target,
                 "folds": self.evaluation.folds if folds is None else folds, "refit": refit,
                 "arrays": arrays}
        if d.table is not None:
            return load_table(d.table, **split)
        return load_dataset(d.dataset, d.options, **split)

    def renamed(self, name: str) -> StudyConfig:
        return StudyConfig(**{**vars(self), "name": name})

    def one_run(self) -> StudyConfig:
        """The same study with one run per trial (one validation split, one seed): how the
        benchmarks compare engines and storages, whatever the study file's evaluation."""
        return StudyConfig(**{**vars(self), "evaluation": EvaluationConfig()})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def study_path(name_or_path: str) -> Path:
    """The study file for `--study`: a path to a .toml file, or the name of a known study."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        if candidate.is_dir():
            raise ConfigError(f"study file {name_or_path} is a folder, not a .toml file")
        if not candidate.is_file():
            raise ConfigError(f"study file {name_or_path} does not exist")
        return candidate
    for folder in study_folders():
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    known = ", ".join(known_studies()) or "none"
    raise ConfigError(f"study {name_or_path!r} is unknown; known: {known}")


def study_folders() -> list[Path]:
    folders = [Path("studies")]
    if os.environ.get("HPSEARCH_STUDIES"):
        folders.append(Path(os.environ["HPSEARCH_STUDIES"]))
    folders.append(BUNDLED_STUDIES)
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def known_studies() -> list[str]:
    return sorted({p.stem for folder in study_folders() for p in folder.glob("*.toml")})


def load_study_config(name_or_path: str) -> StudyConfig:
    path = study_path(name_or_path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_study(document, default_name=path.stem, source=str(path), base_dir=path.parent)


class _Table:
    """Reads one TOML table, checking types; `done()` rejects the keys nobody asked for."""

    def __init__(self, raw: Any, where: str):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table; got {raw!r}")
        self.raw = dict(raw)
        self.where = where
        self.known: list[str] = []

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.known.append(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.where}.{key} must be {expected}; got {value!r}")
        return value

    def number(self, key: str, default: Any, low: float, high: float | None = None,
               integer: bool = False, low_open: bool = False) -> Any:
        value = self.get(key, int if integer else float, default)
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            if high is not None:
                bound += f" and <= {high:g}"
            raise ConfigError(f"{self.where}.{key} must be {bound}; got {value!r}")
        return value

    def choice(
        self, key: str, choices: tuple[str, ...] | Mapping[str, Any], default: str | None
    ) -> str:
        value = self.get(key, str, default)
        if value is None:
            raise ConfigError(f"{self.where}: missing key {key!r}; one of {', '.join(choices)}")
        if value not in choices:
            raise ConfigError(
                f"{self.where}.{key} {value!r} is unknown; known: {', '.join(choices)}"
            )
        return value

    def rest(self) -> dict[str, Any]:
        """The keys not read so far (free-form options)."""
        return {k: v for k, v in self.raw.items() if k not in self.known}

    def done(self) -> None:
        unknown = [k for k in self.raw if k not in self.known]
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown key {unknown[0]!r}; known: {', '.join(self.known)}"
            )


def stored_study_config(document: Mapping[str, Any]) -> StudyConfig:
    """A config as `StudyConfig.as_dict()` stored it (in a study, a model file, or sent to a
    worker)."""
    name = str(document["name"])
    return parse_study(document, default_name=name, source=f"study {name!r}", stored=True)


def parse_study(
    document: Mapping[str, Any], default_name: str, source: str = "",
    base_dir: Path | None = None, stored: bool = False,
) -> StudyConfig:
    """Validate a study document (a parsed TOML file) into a StudyConfig. A relative data
    path is relative to `base_dir` (the study file's folder; default: the current folder).
    `stored`: the document is a stored config, whose missing keys mean what they meant when
    it was stored."""
    where = source or "study"
    top = _Table(document, where)
    name = top.get("name", str, default_name)
    description = top.get("description", str, "")
    seed = top.number("seed", 0, 0, integer=True)

    plugins_table = _Table(top.get("plugins", dict, {}), f"{where} [plugins]")
    plugins = tuple(_strings(plugins_table, "modules"))
    plugins_table.done()
    load_plugins(plugins, f"{where} [plugins]: ")

    data_table = _Table(top.get("data", dict, None) or _missing(where, "data"), f"{where} [data]")
    data = _data_config(data_table, base_dir, stored)
    data_table.done()
    if data.valid_fraction + data.test_fraction >= 0.95:
        raise ConfigError(f"{where} [data]: valid_fraction + test_fraction must leave rows to "
                          f"train on; got {data.valid_fraction + data.test_fraction:g}")

    model_table = _Table(top.get("model", dict, {}), f"{where} [model]")
    if "factory" in model_table.raw:
        if "kind" in model_table.raw:
            raise ConfigError(f"{where} [model]: give kind (a built-in model) or factory (your "
                              "own), not both")
        kind = model_table.get("factory", str, None)
        if not is_factory_path(kind):
            raise ConfigError(f"{where} [model].factory must be 'package.module:function'; "
                              f"got {kind!r}")
    else:
        kind = model_table.choice("kind", MODELS, "mlp")
    model = ModelConfig(kind=kind, options=model_table.rest())
    model_params = searched_params(kind, model.options, f"{where} [model]: ")

    training_table = _Table(top.get("training", dict, {}), f"{where} [training]")
    training = TrainingConfig(**_settings(training_table, TrainingConfig))
    batch_size_fixed = "batch_size" in training_table.raw
    training_table.done()

    search_table = _Table(top.get("search", dict, {}), f"{where} [search]")
    optimizers = search_table.get("optimizers", list, None)
    schedulers = search_table.get("schedulers", list, None)
    overrides = search_table.get("params", dict, {})
    search_table.done()
    if batch_size_fixed and BATCH_SIZE.name in overrides:
        raise ConfigError(f"{where}: batch_size is in [training] and in [search.params]; keep "
                          "one ([search.params] to search it or record it in every trial)")
    space = SearchSpace.build(optimizers, schedulers, overrides, where=f"{where} [search] ",
                              model_params=model_params)
    search = {
        "optimizers": list(space.optimizers), "schedulers": list(space.schedulers),
        "params": dict(overrides),
    }

    sampler_table = _Table(top.get("sampler", dict, {}), f"{where} [sampler]")
    sampler = SamplerConfig(**_settings(sampler_table, SamplerConfig))
    sampler_table.done()
    if sampler.kind == "grid":
        try:
            space.configurations()
        except ConfigError as exc:
            raise ConfigError(f"{where} [sampler]: {exc}") from None

    pruner_table = _Table(top.get("pruner", dict, {}), f"{where} [pruner]")
    pruner = PrunerConfig(**_settings(pruner_table, PrunerConfig))
    pruner_table.done()
    evaluation_table = _Table(top.get("evaluation", dict, {}), f"{where} [evaluation]")
    evaluation = EvaluationConfig(**_settings(evaluation_table, EvaluationConfig))
    evaluation_table.done()
    # The smallest one-sided p that n pairs can give is 2^-n (every pair worse).
    if pruner.kind == "paired" and 0.5 ** evaluation.runs >= pruner.p_threshold:
        raise ConfigError(
            f"{where} [pruner]: the paired pruner compares a trial's runs with the best "
            f"trial's, and {evaluation.describe()} can never reach p < {pruner.p_threshold:g}; "
            f"set [evaluation] folds x seeds to "
            f"{math.floor(math.log2(1 / pruner.p_threshold)) + 1} runs or more")
    top.done()
    return StudyConfig(
        name=name, description=description, seed=seed, data=data, model=model,
        training=training, search=search, space=space, sampler=sampler, pruner=pruner,
        source=source, plugins=plugins, evaluation=evaluation,
    )


def _data_config(table: _Table, base_dir: Path | None, stored: bool) -> DataConfig:
    """[data]: a registered dataset (`dataset`), or a CSV/Parquet file (`path`, `target`)."""
    if "path" in table.raw and "dataset" in table.raw:
        raise ConfigError(f"{table.where}: give dataset (a registered one) or path (a CSV or "
                          "Parquet file), not both")
    source = None
    if "path" not in table.raw and "dataset" not in table.raw:
        raise ConfigError(f"{table.where}: missing key 'dataset' (one of {', '.join(DATASETS)})"
                          " or 'path' (a CSV or Parquet file)")
    if "path" in table.raw:
        path = Path(table.get("path", str, None))
        # Relative to the study file, so a study and its data move together; stored resolved.
        resolved = os.path.normpath(path if path.is_absolute() else
                                    Path(base_dir or Path.cwd()).absolute() / path)
        target = table.get("target", str, None)
        if target is None:
            raise ConfigError(f"{table.where}: missing key 'target' (the column to predict)")
        impute = table.get("impute", str, None)
        if impute is not None and impute not in IMPUTE:
            raise ConfigError(f"{table.where}.impute {impute!r} is unknown; known: "
                              f"{', '.join(IMPUTE)}")
        separator = table.get("separator", str, None)
        if separator is not None and len(separator) != 1:
            raise ConfigError(f"{table.where}.separator must be one character; "
                              f"got {separator!r}")
        source = TableSource(
            path=resolved, target=target, task=table.choice("task", TASKS, "auto"),
            impute=impute, drop=tuple(_strings(table, "drop")),
            max_categories=table.number("max_categories", 50, 2, integer=True),
            separator=separator,
        )
    dataset = source.label if source else table.choice("dataset", DATASETS, None)
    options = table.get("options", dict, {}) if source is None else {}
    settings = _settings(table, DataConfig)
    scale_target = table.get("scale_target", bool, False if stored else settings["scale"])
    return DataConfig(dataset=dataset, options=options, **settings, table=source,
                      scale_target=scale_target)


def _settings(table: _Table, section: type) -> dict[str, Any]:
    """The values of `section`'s `setting` fields in `table`, each checked as declared, in
    declaration order (the order a "known keys" message lists them)."""
    values = {}
    for f in fields(section):
        check: _Setting | None = f.metadata.get("setting")
        if check is None:
            continue
        if check.choices is not None:
            values[f.name] = table.choice(f.name, check.choices, f.default)
        elif check.kind is not None:
            values[f.name] = table.get(f.name, check.kind, f.default)
        else:
            values[f.name] = table.number(f.name, f.default, check.low, check.high,
                                          integer=check.integer, low_open=check.low_open)
    return values


def _strings(table: _Table, key: str) -> list[str]:
    values = table.get(key, list, [])
    for value in values:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{table.where}.{key} must be a list of names; got {value!r}")
    return values


def _missing(where: str, table: str) -> Any:
    raise ConfigError(f"{where}: missing table [{table}]")
