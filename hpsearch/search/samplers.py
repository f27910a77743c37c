"""The study's sampler, from its config: random, grid (its configurations are queued), or
TPE sampling the joint conditional space group by group (`search.lazy_tpe`)."""

from __future__ import annotations

import warnings

import numpy as np
import optuna

from hpsearch.config import StudyConfig
from hpsearch.search.lazy_tpe import LazyTPESampler


def worker_seed(study_seed: int, worker: int) -> int:
    """The sampler seed of worker `worker` (0-based): worker 0 uses the study's seed, so one
    worker searches exactly as a search in a single process does; the others get seeds mixed
    from (seed, worker), so that no two workers draw the same random start-up trials."""
    if worker == 0:
        return study_seed
    return int(np.random.SeedSequence([study_seed, worker]).generate_state(1)[0])


def build_sampler(config: StudyConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    sampler = config.sampler
    seed = worker_seed(config.seed, worker)
    if sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.kind == "grid":
        # The grid's configurations are enqueued by `run_search`; this sampler draws nothing.
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models the parameters that occur together (one branch of
        # the conditional space) jointly instead of one by one. LazyTPESampler samples only
        # the groups a trial uses (and, in the cohort engine, fits once per refill): the
        # same model, at a fraction of Optuna's cost.
        return LazyTPESampler(
            seed=seed, n_startup_trials=sampler.startup_trials, multivariate=True,
            group=True, constant_liar=True,
        )
