"""Engines: what trains a search's members (one training run each), epoch by epoch, behind one
small interface (`engines.base.Engine`).

- `reference` (`engines.reference`): each member alone, with torch.optim; trains any model.
- `cohort` (`engines.cohort`): every member at once as one stacked model, with batched
  optimizers and schedules; trains nn.Sequential models of Linear layers and activations.
- `auto`: the cohort engine where it can train the study, else the reference engine.
"""

from __future__ import annotations

import torch

from hpsearch.config import StudyConfig
from hpsearch.data import Dataset
from hpsearch.engines.base import Engine, EpochOutcome, Member
from hpsearch.engines.cohort import Cohort, why_not_cohort
from hpsearch.engines.reference import ReferenceEngine
from hpsearch.errors import ConfigError

__all__ = ["AUTO", "COHORT", "DEFAULT_COHORT_SIZE", "ENGINES", "REFERENCE", "Engine",
           "EpochOutcome", "Member", "build_engine", "choose_engine"]

AUTO, REFERENCE, COHORT = "auto", "reference", "cohort"
ENGINES = (AUTO, REFERENCE, COHORT)

# Trials a cohort trains at once. More is quicker per trial where a round's fixed cost
# dominates, but trials asked together learn nothing from each other: at 32 a seeded search's
# best trials are as good as when trials are asked one at a time (`scripts/bench_cohort.py
# --part quality`, docs/benchmarks.md).
DEFAULT_COHORT_SIZE = 32


def choose_engine(engine: str, config: StudyConfig, data: Dataset) -> tuple[str, str]:
    """The engine that runs `config`'s trials, and why the cohort engine doesn't (or "")."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == REFERENCE:
        return REFERENCE, ""
    reason = why_not_cohort(config, data)
    if reason is None:
        return COHORT, ""
    if engine == COHORT:
        raise ConfigError(f"--engine cohort cannot train study {config.name!r}: {reason}")
    return REFERENCE, reason


def build_engine(name: str, config: StudyConfig, data: Dataset,
                 device: str | torch.device) -> Engine:
    """The engine `name` (as `choose_engine` resolved it) for `config`'s members on `device`."""
    if name == COHORT:
        return Cohort(config, data, device)
    return ReferenceEngine(config, data, device)
