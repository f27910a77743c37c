"""TPE for both engines: the same model of the space, at a fraction of Optuna's cost.

Optuna's grouped, multivariate TPE is a large share of a search's time, the largest of the
cohort engine's, whose training is cheap (docs/benchmarks.md): for every trial it fits and
samples every group of the conditional space (one per optimizer and per scheduler branch, ~17),
though a trial uses three or four of them. `LazyTPESampler` changes four things and nothing
else about the model (the last two only inside `batch`, which the cohort engine opens for each
refill):

- **Lazy groups**: a group is sampled when the trial first asks for one of its parameters, so
  only the branches the trial takes cost anything.
- **Each finished trial joins the groups once** (`_IncrementalGroups`), instead of every
  finished trial being added again for every trial asked.
- **One fit per refill**: inside `batch(size)` (the cohort asks its free slots' trials at
  once), the trials are split into good and bad once, each group's Parzen estimators are
  fitted when the batch's first trial asks for the group, and every later trial of the batch
  uses that fit. No trial of the batch has the group's parameters yet when it is fitted, so
  the batch's trials are no "liars" to each other; trials still running from earlier batches
  are liars, as they are to Optuna's TPE.
- **Few draws per refill**: a group draws the candidates (`n_ei_candidates` each) of several
  of the batch's trials in one `sample` call and scores them in one acquisition call, since
  numpy's per-call overhead is most of the cost of 24 candidates. It draws for the trial
  asking, for the batch's later trials as many as are expected to take the group (the share
  of the good trials that took it), and a few spare; when they run out, it draws again. Each
  trial that asks takes the next block of candidates and that block's best, as TPE picks among
  one trial's own candidates, so the batch's trials still differ. The blocks nobody took are
  dropped with the batch.

Outside `batch`, every trial fits and draws for itself. Draws evaluate the normal tails with
SciPy's ufuncs (`_vectorised_normal_tails`). It relies on TPESampler internals of the pinned
Optuna (its `_sample` steps, its truncated-normal module).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe import _truncnorm
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.sampler import _split_trials, default_gamma
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from scipy import special

# Blocks a group draws beyond its expected share of a batch's trials: a spare block costs a
# fraction of another draw's fixed cost (a `sample` and an acquisition call), but blocks for
# every trial of the batch cost more than they save where few trials take the group (drawing
# and scoring cost per candidate too).
_SPARE_BLOCKS = 3


class LazyTPESampler(TPESampler):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._batch: _Batch | None = None
        # (study id, group) -> finished trial's number -> its values of the group's parameters
        # in internal representation, () where it lacks the group (`_get_internal_repr`).
        self._internal: dict[tuple[int, tuple[str, ...]], dict[int, tuple[Any, ...]]] = {}
        # `infer_relative_search_space`'s last answer, for (study id, groups' version).
        self._space: dict[str, BaseDistribution] = {}
        self._space_key: tuple[int, int] | None = None
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _IncrementalGroups(include_pruned=True)

    @contextlib.contextmanager
    def batch(self, size: int = 1) -> Iterator[None]:
        """The `size` trials asked inside share each group's fit and draw their candidates
        together (the default, 1, draws them trial by trial; trials beyond `size` draw
        theirs one by one)."""
        if size < 0:
            raise ValueError(f"a batch's size must be >= 0, got {size}")
        self._batch = _Batch(size)
        try:
            yield
        finally:
            self._batch = None

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """TPESampler's, the groups' space kept until a finished trial joins them: it is
        asked for every trial, and would sort every group's distributions again each time."""
        groups = self._group_decomposed_search_space
        if not isinstance(groups, _IncrementalGroups) or not self._is_multivariate(study):
            return super().infer_relative_search_space(study, trial)
        batch = self._batch
        if batch is not None and batch.space_read:
            # The finished trials are those of the batch's first trial (see `_fit`): reading
            # them again for each trial would be a sizeable share of a refill's sampling.
            return dict(self._space)
        self._search_space_group = groups.calculate(study, use_cache=True)
        key = (study._study_id, groups.version)
        if self._space_key != key:
            # TPESampler.infer_relative_search_space's group branch.
            self._space = {name: distribution
                           for sub_space in self._search_space_group.search_spaces
                           for name, distribution in sorted(sub_space.items())
                           if not distribution.single()}
            self._space_key = key
        if batch is not None:
            batch.space_read = True
        return dict(self._space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not self._group or self._search_space_group is None:
            return super().sample_relative(study, trial, search_space)
        groups = []
        for sub_space in self._search_space_group.search_spaces:
            group = {name: distribution for name, distribution in sorted(sub_space.items())
                     if not distribution.single() and name in search_space}
            if group:
                groups.append(group)
        return _LazyGroups(self, study, trial, groups)

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        batch = self._batch
        if batch is None:
            group = self._fit(study, trial, search_space)
            blocks = 1
        else:
            batch.trials.add(trial.number)
            key = tuple(search_space)
            group = batch.groups.get(key)
            if group is None:
                group = batch.groups[key] = self._fit(study, trial, search_space)
            # This trial's block, one for each later trial of the batch expected to ask for
            # the group, and spares.
            later = max(0, batch.size - len(batch.trials))
            blocks = 1 + min(later, math.ceil(later * group.share) + _SPARE_BLOCKS)
        if group.drawn_out():
            # As TPESampler._sample goes on from its fitted estimators, for several trials.
            with _vectorised_normal_tails():
                candidates = group.below.sample(self._rng.rng, self._n_ei_candidates * blocks)
                group.hold(candidates, self._compute_acquisition_func(candidates, group.below,
                                                                      group.above))
        chosen = group.take(self._n_ei_candidates)
        return {name: distribution.to_external_repr(chosen[name])
                for name, distribution in search_space.items()}

    def _get_internal_repr(self, trials: list[FrozenTrial],
                           search_space: dict[str, BaseDistribution],
                           study: Study) -> dict[str, np.ndarray]:
        """TPESampler's, reading each finished trial's parameters once per group (they never
        change): TPESampler's own converts every trial's again for every fit, a sizeable share
        of a refill's sampling."""
        rows = self._internal.setdefault((study._study_id, tuple(search_space)), {})
        values: dict[str, list[Any]] = {name: [] for name in search_space}
        columns = list(values.values())
        for trial in trials:
            finished = trial.state.is_finished()
            row = rows.get(trial.number) if finished else None
            if row is None:
                params = self._get_params(trial, study)
                row = tuple(distribution.to_internal_repr(params[name])
                            for name, distribution in search_space.items()) \
                    if search_space.keys() <= params.keys() else ()
                if finished:
                    rows[trial.number] = row
            if row:  # () where the trial lacks the group
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
        return {name: np.asarray(column) for name, column in values.items()}

    def _fit(self, study: Study, trial: FrozenTrial,
             search_space: dict[str, BaseDistribution]) -> _GroupDraws:
        """TPESampler._sample's fit: split the trials (running ones as liars), then one Parzen
        estimator for the good trials and one for the rest; and the good trials' share that
        took the group."""
        batch = self._batch
        if batch is not None and batch.split is not None:
            below, above = batch.split
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
            if self._constant_liar:
                states.append(TrialState.RUNNING)
            trials = study._get_trials(deepcopy=False, states=states,
                                       use_cache=not self._constant_liar)
            trials = [t for t in trials if t.number != trial.number]
            if self._gamma is None:
                self._gamma = default_gamma
            finished = sum(t.state != TrialState.RUNNING for t in trials)
            below, above = _split_trials(study, trials, self._gamma(finished))
            if batch is not None:
                # Every group of the batch is fitted on this split: its finished trials don't
                # change during a refill, running ones are all "above", and the only trials
                # it lacks or holds in an older state are the batch's own, which have none
                # of a group's parameters when the group is fitted (its first ask in the
                # batch) and so count for none of its estimators.
                batch.split = below, above
        took_group = sum(search_space.keys() <= t.params.keys() for t in below)
        return _GroupDraws(
            self._build_parzen_estimator(study, search_space, below, handle_below=True),
            self._build_parzen_estimator(study, search_space, above, handle_below=False),
            share=took_group / len(below) if below else 1.0)


@contextlib.contextmanager
def _vectorised_normal_tails() -> Iterator[None]:
    """Optuna's truncated normal (drawing candidates, and their densities) with SciPy's
    `ndtr`, `log_ndtr` and `ndtri_exp`: Optuna's module is a port of SciPy's code that
    evaluates these element by element in Python (`np.frompyfunc`), the largest cost of a
    draw; SciPy's are the ufuncs it was ported from (values equal to rounding,
    tests/test_lazy_tpe.py)."""
    saved = _truncnorm._ndtr, _truncnorm._log_ndtr, _truncnorm._ndtri_exp
    _truncnorm._ndtr, _truncnorm._log_ndtr, _truncnorm._ndtri_exp = \
        special.ndtr, special.log_ndtr, special.ndtri_exp
    try:
        yield
    finally:
        _truncnorm._ndtr, _truncnorm._log_ndtr, _truncnorm._ndtri_exp = saved


@dataclass
class _GroupDraws:
    """A group's fitted estimators and the candidates drawn from `below` that no trial has
    taken yet, in blocks of one trial's `n_ei_candidates`."""

    below: _ParzenEstimator
    above: _ParzenEstimator
    share: float  # of the good trials that took the group: about that of the trials to come
    candidates: dict[str, np.ndarray] = field(default_factory=dict)
    acquisition: np.ndarray = field(default_factory=lambda: np.empty(0))
    taken: int = 0  # candidates handed out, a whole number of blocks

    def drawn_out(self) -> bool:
        return self.taken == len(self.acquisition)

    def hold(self, candidates: dict[str, np.ndarray], acquisition: np.ndarray) -> None:
        self.candidates, self.acquisition, self.taken = candidates, acquisition, 0

    def take(self, block_size: int) -> dict[str, int | float]:
        """The next block's best candidate by acquisition (in internal representation)."""
        block = slice(self.taken, self.taken + block_size)
        self.taken += block_size
        return TPESampler._compare({name: values[block]
                                    for name, values in self.candidates.items()},
                                   self.acquisition[block])


@dataclass
class _Batch:
    size: int  # trials the batch will ask (more are served, each drawing its own block)
    groups: dict[tuple[str, ...], _GroupDraws] = field(default_factory=dict)
    trials: set[int] = field(default_factory=set)  # numbers of the trials that drew a group
    # The trials split into good ("below") and the rest, for the batch's first fit and the rest
    split: tuple[list[FrozenTrial], list[FrozenTrial]] | None = None
    space_read: bool = False  # the relative search space is read for the batch's first trial


class _IncrementalGroups(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition, adding each finished trial's parameters once: Optuna's
    adds every finished trial again for every trial asked (adding one twice changes nothing),
    a cost that grows with the study into the largest of sampling on a long search."""

    def __init__(self, include_pruned: bool):
        super().__init__(include_pruned)
        self._added: set[int] = set()  # trial ids
        self.version = 0  # counts the trials added: the groups are as they were if unchanged

    def calculate(self, study: Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id not in (None, study._study_id):
            raise ValueError("a search space follows one study")
        self._study_id = study._study_id
        states = (TrialState.COMPLETE, TrialState.PRUNED) if self._include_pruned else (
            TrialState.COMPLETE,)
        for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if trial._trial_id not in self._added:
                self._added.add(trial._trial_id)
                self._search_space.add_distributions(trial.distributions)
                self.version += 1
        # A copy of the list: adding replaces the group dicts, never changes one.
        groups = _SearchSpaceGroup()
        groups._search_spaces = list(self._search_space.search_spaces)
        return groups


class _LazyGroups(dict):
    """A trial's relative params, each group sampled when one of its parameters is first
    looked up (Optuna's Trial only asks `name in params` and `params[name]`)."""

    def __init__(self, sampler: LazyTPESampler, study: Study, trial: FrozenTrial,
                 groups: list[dict[str, BaseDistribution]]):
        super().__init__()
        self._sampler = sampler
        self._study = study
        self._trial = trial
        self._groups = groups
        self._group_of = {name: index for index, group in enumerate(groups) for name in group}

    def _resolve(self, name: Any) -> None:
        index = self._group_of.get(name)
        if index is None:
            return
        group = self._groups[index]
        for member in group:
            self._group_of.pop(member, None)
        self.update(self._sampler._sample_relative(self._study, self._trial, group))

    def __contains__(self, name: object) -> bool:
        self._resolve(name)
        return super().__contains__(name)

    def __getitem__(self, name: Any) -> Any:
        self._resolve(name)
        return super().__getitem__(name)
