"""hpsearch's TPE: lazy groups, one fit and few draws per group and batch, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.samplers._tpe.sampler import default_gamma
from optuna.trial import TrialState

from hpsearch.config import load_study_config
from hpsearch.search.lazy_tpe import _SPARE_BLOCKS, LazyTPESampler

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STARTUP = 20
CANDIDATES = 24  # TPESampler's default n_ei_candidates
SHARED = ("lr", "optimizer")  # the group every trial of the toy space uses
BRANCH = {"sgd": "momentum", "adam": "beta1"}


def suggest_toy(trial: optuna.Trial) -> dict[str, Any]:
    """A conditional space shaped like hpsearch's: an optimizer, and each its own parameter."""
    optimizer = trial.suggest_categorical("optimizer", list(BRANCH))
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.0, 0.99)
    else:
        trial.suggest_float("beta1", 0.5, 0.999)
    return trial.params


def toy_loss(params: dict[str, Any]) -> float:
    branch_value = params.get("momentum", params.get("beta1"))
    return (math.log10(params["lr"]) + 2) ** 2 + (branch_value - 0.9) ** 2


def toy_study(seed: int) -> tuple[optuna.Study, LazyTPESampler]:
    """A study past its startup trials, with the cohort engine's sampler settings."""
    sampler = LazyTPESampler(seed=seed, n_startup_trials=STARTUP, multivariate=True,
                               group=True, constant_liar=True)
    study = optuna.create_study(sampler=sampler)
    for _ in range(STARTUP):
        trial = study.ask()
        study.tell(trial, toy_loss(suggest_toy(trial)))
    return study, sampler


@dataclass
class Fit:
    group: tuple[str, ...]
    draws: Any  # the sampler's record of the group: its estimators and share
    candidates: list[dict[str, np.ndarray]] = field(default_factory=list)  # one per draw


def record_fits(sampler: LazyTPESampler, monkeypatch: pytest.MonkeyPatch) -> list[Fit]:
    """The sampler's fits as they happen, each with the candidates drawn from it."""
    fits: list[Fit] = []
    fit_group = sampler._fit

    def recording_fit(study, trial, search_space):
        draws = fit_group(study, trial, search_space)
        fit = Fit(tuple(search_space), draws)
        draw = draws.below.sample

        def recording_draw(rng, size):
            candidates = draw(rng, size)
            fit.candidates.append(candidates)
            return candidates

        draws.below.sample = recording_draw
        fits.append(fit)
        return draws

    monkeypatch.setattr(sampler, "_fit", recording_fit)
    return fits


def ask_batch(study: optuna.Study, sampler: LazyTPESampler, count: int,
              size: int) -> list[optuna.Trial]:
    """As the cohort refills: ask `count` trials, then draw their params in `batch(size)`."""
    asked = [study.ask() for _ in range(count)]
    with sampler.batch(size):
        for trial in asked:
            suggest_toy(trial)
    return asked


def test_a_trial_samples_only_the_groups_of_the_branch_it_takes(monkeypatch):
    study, sampler = toy_study(seed=3)
    # Both branches' groups are in the space: the one a trial doesn't take is not sampled.
    assert {p for t in study.trials for p in t.params} >= set(BRANCH.values())
    fits = record_fits(sampler, monkeypatch)
    for _ in range(4):
        fits.clear()
        trial = study.ask()
        params = suggest_toy(trial)
        branch = BRANCH[params["optimizer"]]
        assert [fit.group for fit in fits] == [SHARED, (branch,)]
        assert set(params) == {*SHARED, branch}
        study.tell(trial, toy_loss(params))


def blocks_of(fit: Fit) -> list[dict[str, np.ndarray]]:
    """The group's candidates, draw after draw, in blocks of one trial's candidates."""
    drawn = {name: np.concatenate([c[name] for c in fit.candidates]) for name in fit.group}
    count = len(drawn[fit.group[0]]) // CANDIDATES
    return [{name: values[i * CANDIDATES:(i + 1) * CANDIDATES] for name, values in drawn.items()}
            for i in range(count)]


def batch_of_twelve(monkeypatch: pytest.MonkeyPatch) -> tuple[optuna.Study, list[Fit],
                                                                list[optuna.Trial]]:
    """A seed whose batch takes both branches, and the sgd one more often than its share of
    the good trials foretells (so that its group draws more than once)."""
    study, sampler = toy_study(seed=8)
    fits = record_fits(sampler, monkeypatch)
    asked = ask_batch(study, sampler, count=12, size=12)
    assert "".join(trial.params["optimizer"][0] for trial in asked) == "ssaasassssss"
    return study, fits, asked


def test_a_batch_fits_each_group_once_and_gives_each_trial_the_best_of_its_own_block(
        monkeypatch):
    _, fits, asked = batch_of_twelve(monkeypatch)
    assert [fit.group for fit in fits] == [SHARED, ("momentum",), ("beta1",)]
    for fit in fits:
        users = [t for t in asked if set(fit.group) <= t.params.keys()]
        blocks = blocks_of(fit)
        assert len(users) <= len(blocks) <= len(asked) - asked.index(users[0])
        for trial, block in zip(users, blocks, strict=False):
            acquisition = fit.draws.below.log_pdf(block) - fit.draws.above.log_pdf(block)
            best = int(np.argmax(acquisition))
            chosen = {name: trial.distributions[name].to_internal_repr(trial.params[name])
                      for name in fit.group}
            assert chosen == {name: values[best] for name, values in block.items()}
    assert [len(c["lr"]) for c in fits[0].candidates] == [len(asked) * CANDIDATES]
    assert len(fits[1].candidates) > 1
    assert len({trial.params["lr"] for trial in asked}) == len(asked)


def test_a_group_draws_for_its_share_of_the_batch_and_a_few_spare(monkeypatch):
    study, fits, asked = batch_of_twelve(monkeypatch)
    good = sorted(study.trials[:STARTUP], key=lambda t: t.value)[:default_gamma(STARTUP)]
    for fit in fits:
        share = sum(set(fit.group) <= t.params.keys() for t in good) / len(good)
        assert fit.draws.share == share
        first = next(i for i, t in enumerate(asked) if set(fit.group) <= t.params.keys())
        later = len(asked) - first - 1
        expected = 1 + min(later, math.ceil(later * share) + _SPARE_BLOCKS)
        assert len(fit.candidates[0][fit.group[0]]) == expected * CANDIDATES
    assert [fit.draws.share for fit in fits] == [1.0, 0.0, 1.0]  # both ends of the range


def test_trials_beyond_the_batch_size_each_draw_their_own_block(monkeypatch):
    study, sampler = toy_study(seed=5)
    fits = record_fits(sampler, monkeypatch)
    asked = ask_batch(study, sampler, count=4, size=2)
    shared = next(fit for fit in fits if fit.group == SHARED)
    assert [len(draw["lr"]) // CANDIDATES for draw in shared.candidates] == [2, 1, 1]
    assert len({trial.params["lr"] for trial in asked}) == len(asked)
    with pytest.raises(ValueError, match="size must be >= 0, got -1"), sampler.batch(-1):
        pass


def searched_params(seed: int) -> list[dict[str, Any]]:
    """Two refills (the first under-sized), told in between, then trials one by one."""
    study, sampler = toy_study(seed)
    for count, size in ((5, 5), (4, 3)):
        for trial in ask_batch(study, sampler, count, size):
            study.tell(trial, toy_loss(trial.params))
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, toy_loss(suggest_toy(trial)))
    return [trial.params for trial in study.trials]


def test_the_same_seed_and_asks_give_the_same_params():
    assert searched_params(seed=11) == searched_params(seed=11)
    assert searched_params(seed=11)[STARTUP:] != searched_params(seed=12)[STARTUP:]


def test_a_search_of_the_wine_space_runs_in_batches_past_its_startup_trials(monkeypatch):
    """hpsearch's real conditional space (every optimizer x every schedule), refilled 8
    trials at a time; a made-up loss that prefers one optimizer and a learning rate."""
    space = load_study_config("wine").space

    def loss(params: dict[str, Any]) -> float:
        return (math.log10(params["lr"]) + 2) ** 2 + (params["optimizer"] != "adam")

    sampler = LazyTPESampler(seed=1, n_startup_trials=16, multivariate=True, group=True,
                               constant_liar=True)
    fits = record_fits(sampler, monkeypatch)
    study = optuna.create_study(sampler=sampler)
    for _ in range(6):
        asked = [study.ask() for _ in range(8)]
        with sampler.batch(len(asked)):
            drawn = [space.suggest(trial) for trial in asked]
        for trial, params in zip(asked, drawn, strict=True):
            assert params == space.complete(params)  # one branch, whole and valid
            study.tell(trial, loss(params))

    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 48
    assert fits  # TPE modelled the trials after the startup ones
    assert {fit.group for fit in fits} >= {("lr", "optimizer", "scheduler", "use_weight_decay")}
    startup, modelled = trials[:16], trials[16:]
    assert np.mean([t.value for t in modelled]) < np.mean([t.value for t in startup])


def test_the_vectorised_normal_tails_give_optunas_draws_and_densities():
    """Inside `_vectorised_normal_tails` Optuna's truncated normal draws the same values from
    the same random state, and gives the same log-densities, as its own element-by-element
    code: far tails, both sides of the mean, narrow and wide intervals."""
    from optuna.samplers._tpe import _truncnorm

    from hpsearch.search.lazy_tpe import _vectorised_normal_tails

    rng = np.random.default_rng(7)
    mu = np.concatenate([rng.uniform(-3, 3, 200), [-40.0, 40.0, 0.0, 9.0]])
    sigma = np.concatenate([rng.uniform(0.01, 3, 200), [1.0, 1.0, 1e-6, 0.5]])
    low, high = -4.6, 0.0
    a, b = (low - mu) / sigma, (high - mu) / sigma

    def draws_and_densities():
        x = _truncnorm.rvs(a, b, loc=mu, scale=sigma, random_state=np.random.RandomState(3))
        return x, _truncnorm.logpdf(x, a, b, loc=mu, scale=sigma)

    optunas = draws_and_densities()
    with _vectorised_normal_tails():
        vectorised = draws_and_densities()
    assert {f.__module__ for f in (_truncnorm._ndtr, _truncnorm._log_ndtr,
                                   _truncnorm._ndtri_exp)} == \
        {"optuna.samplers._tpe._truncnorm"}  # put back
    np.testing.assert_allclose(vectorised[0], optunas[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(vectorised[1], optunas[1], rtol=1e-9, atol=1e-9)
    assert np.all((vectorised[0] >= low) & (vectorised[0] <= high))


def batch_counting(monkeypatch: pytest.MonkeyPatch, seed: int, count: int,
                   counted: tuple[Any, str], uncached: tuple[str, Any] | None = None
                   ) -> tuple[list[dict[str, Any]], int]:
    """The params of a batch of `count` trials (after 4 left running: liars) and how often it
    called `counted` (owner, name); with `uncached` (a `_Batch` field and the value it then
    always holds), without the batch's cache of it."""
    from hpsearch.search import lazy_tpe

    study, sampler = toy_study(seed=seed)
    ask_batch(study, sampler, count=4, size=4)
    calls = []
    owner, name = counted
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, counting)
        if uncached is not None:
            field_name, value = uncached
            patch.setattr(lazy_tpe._Batch, field_name, property(lambda _: value,
                                                                lambda _, __: None))
        asked = ask_batch(study, sampler, count=count, size=count)
    return [trial.params for trial in asked], len(calls)


def test_a_batch_splits_the_trials_once_and_samples_as_if_each_fit_split_them(monkeypatch):
    """The batch's split (good trials and the rest, running ones as liars) is made once, for
    its first fit: every later fit of the batch draws what a split of its own would give."""
    from hpsearch.search import lazy_tpe

    counted = (lazy_tpe, "_split_trials")
    cached, splits_cached = batch_counting(monkeypatch, 11, 12, counted)
    fresh, splits_fresh = batch_counting(monkeypatch, 11, 12, counted, ("split", None))
    assert cached == fresh
    both_branches = all(any(branch in params for params in fresh)
                        for branch in BRANCH.values())
    assert both_branches  # three groups fitted: the shared one and each branch's
    assert (splits_cached, splits_fresh) == (1, 3)


def test_a_groups_observations_are_optunas_with_finished_trials_read_once():
    study, sampler = toy_study(seed=3)
    study.optimize(lambda trial: toy_loss(suggest_toy(trial)), n_trials=30)
    running = study.ask()  # a liar with part of its parameters
    running.suggest_categorical("optimizer", list(BRANCH))
    trials = study.get_trials(deepcopy=False)
    assert running.number == trials[-1].number and trials[-1].state == TrialState.RUNNING
    for group in ({"lr": trials[0].distributions["lr"],
                   "optimizer": trials[0].distributions["optimizer"]},
                  {"momentum": optuna.distributions.FloatDistribution(0.0, 0.99)}):
        want = optuna.samplers.TPESampler._get_internal_repr(sampler, trials, group, study)
        for _ in range(2):  # read, then served from what was kept
            got = sampler._get_internal_repr(trials, group, study)
            assert got.keys() == want.keys()
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
        # Only some trials took the branch's group; none lacked the shared one.
        took = len(next(iter(want.values())))
        assert (took == len(trials) - 1) if "lr" in group else 0 < took < len(trials) - 1
    # The running trial was not kept: its parameters may still come.
    assert all(running.number not in rows for rows in sampler._internal.values())


def test_the_relative_search_space_is_optunas_and_follows_new_groups():
    study, sampler = toy_study(seed=4)
    for _ in range(6):
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        got = sampler.infer_relative_search_space(study, frozen)
        want = optuna.samplers.TPESampler.infer_relative_search_space(sampler, study, frozen)
        assert list(got.items()) == list(want.items())
        got["lr"] = None  # a caller's copy: what the sampler keeps is not changed
        assert sampler.infer_relative_search_space(study, frozen)["lr"] is not None
        study.tell(trial, toy_loss(suggest_toy(trial)))
    # A parameter no finished trial had before joins the space once a trial finishes with it.
    trial = study.ask()
    trial.suggest_float("extra", 0.0, 1.0)
    study.tell(trial, 1.0)
    frozen = study._storage.get_trial(study.ask()._trial_id)
    assert "extra" in sampler.infer_relative_search_space(study, frozen)


def test_a_batch_reads_the_relative_search_space_once_and_samples_the_same(monkeypatch):
    """The finished trials don't change during a refill: the batch's trials all get the space
    its first trial read, and the same params as if each read it again."""
    from hpsearch.search import lazy_tpe

    counted = (lazy_tpe._IncrementalGroups, "calculate")
    once, reads_once = batch_counting(monkeypatch, 12, 10, counted)
    each, reads_each = batch_counting(monkeypatch, 12, 10, counted, ("space_read", False))
    assert once == each
    assert (reads_once, reads_each) == (1, 10)
