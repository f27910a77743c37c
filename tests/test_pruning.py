"""The cohort's round pruner decides exactly as the study's pruner does, member by member."""

from __future__ import annotations

import math
import random

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.pruners._percentile import _get_percentile_intermediate_result_over_trials
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hpsearch.search.pruning import Curve, PairedPruning, RoundPruner, _StepValues

# Members whose every value is NaN are part of the cases (the pruner prunes them).
pytestmark = [pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")]

PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    "median, interval 3": lambda: optuna.pruners.MedianPruner(
        n_startup_trials=0, n_warmup_steps=1, interval_steps=3),
    "percentile 25, min 4": lambda: optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=2, n_warmup_steps=0, n_min_trials=4),
    "percentile 90": lambda: optuna.pruners.PercentilePruner(90.0),
    "patient (its own prune)": lambda: optuna.pruners.PatientPruner(
        optuna.pruners.MedianPruner(n_startup_trials=2), patience=2),
    "successive halving (its own prune)": lambda: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=2, reduction_factor=2),
}


def _values(rng: random.Random, steps: int) -> dict[int, float]:
    """A noisy decreasing curve, with now and then a NaN."""
    return {step: math.nan if rng.random() < 0.05 else rng.uniform(0, 2) / step
            for step in range(1, steps + 1)}


def _decisions(kind: str, direction: str, through_round_pruner: bool) -> list[bool]:
    """Twelve rounds of 20 members, with completed trials joining between rounds as a
    cohort's do; each round's decisions by the round pruner or by the pruner itself. (Twin
    studies rather than asking both on one: successive halving records its rungs as it
    decides.)"""
    rng = random.Random(7)
    study = optuna.create_study(direction=direction, pruner=PRUNERS[kind]())
    round_pruner = RoundPruner(study)
    decisions = []
    for _round in range(12):
        for _ in range(rng.randint(0, 3)):
            values = _values(rng, rng.randint(1, 15))
            last = values[max(values)]
            study.add_trial(create_trial(
                state=TrialState.COMPLETE, value=0.5 if math.isnan(last) else last,
                params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                intermediate_values=values))
        members = []
        for _ in range(20):
            trial = study.ask()
            for step, value in _values(rng, rng.randint(1, 15)).items():
                trial.report(value, step)
            members.append(study._storage.get_trial(trial._trial_id))
        if through_round_pruner:
            decisions += round_pruner.decide(members)
        else:
            decisions += [study.pruner.prune(study, member) for member in members]
        for member in members:
            study.tell(member.number, state=TrialState.FAIL)
    assert round_pruner.remembers == (kind.startswith(("median", "percentile")))
    return [bool(decision) for decision in decisions]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("kind", list(PRUNERS))
def test_same_decisions_as_the_pruner_member_by_member(kind: str, direction: str):
    expected = _decisions(kind, direction, through_round_pruner=False)
    assert _decisions(kind, direction, through_round_pruner=True) == expected
    if not kind.startswith("patient"):  # it prunes only trials that stall: these rarely do
        assert set(expected) == {True, False}  # the cases exercise both answers


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_curve_kept_epoch_by_epoch_is_the_curve_read_from_the_trial(direction: str):
    """The cohort keeps each member's curve as it reports epochs 1, 2, ... (finite values):
    its running best and the epoch before must be what the pruner reads from the trial."""
    rng = random.Random(3)
    study = optuna.create_study(direction=direction)
    better = max if direction == "maximize" else min
    for _ in range(5):
        trial = study.ask()
        best = None
        for epoch in range(1, rng.randint(1, 30) + 1):
            value = rng.uniform(0, 2) / epoch
            trial.report(value, epoch)
            best = value if best is None else better(best, value)
            kept = Curve(epoch, best, epoch - 1 if epoch > 1 else -1)
            read = Curve.of(study._storage.get_trial(trial._trial_id), study.direction)
            assert kept == read
        study.tell(trial, state=TrialState.FAIL)


@pytest.mark.parametrize("direction", [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE])
def test_the_kept_percentiles_are_optunas_bit_for_bit(direction: StudyDirection):
    """The sorted values kept step by step give exactly Optuna's percentile (its list and
    numpy.nanpercentile), for sets with ties, NaNs, one value, all NaN, too few values."""
    rng = random.Random(11)
    checked = 0
    for case in range(300):
        trials = []
        for number in range(rng.randint(1, 25)):
            values = {}
            for step in range(1, rng.randint(1, 6) + 1):
                draw = rng.random()
                values[step] = math.nan if draw < 0.1 else float(rng.randint(0, 3)) \
                    if draw < 0.3 else rng.uniform(-1, 1) * 10 ** rng.randint(-8, 3)
            trials.append(create_trial(
                state=TrialState.COMPLETE, value=0.0, params={},
                distributions={}, intermediate_values=values))
            trials[-1]._trial_id = number
        n_min = case % 4
        for percent in (50.0, 25.0, 90.0, 0.0, 100.0, 33.3):
            kept = _StepValues(
                100 - percent if direction == StudyDirection.MAXIMIZE else percent, n_min)
            # Trials join a few at a time, as they complete.
            for joined in range(1, len(trials) + 1, 3):
                kept.update(trials[:joined])
                expected = _get_percentile_intermediate_result_over_trials(
                    trials[:joined], direction, 3, percent, n_min)
                got = kept.percentile(3)
                assert got == expected or (math.isnan(got) and math.isnan(expected))
                checked += not math.isnan(expected)
    assert checked > 1000


# -- the paired pruner ------------------------------------------------------------------------
@pytest.mark.parametrize("pairs", [1, 2, 5, 6, 10, 14])
def test_the_paired_p_is_the_exact_one_sided_signed_rank_test(pairs: int):
    from scipy import stats

    rng = np.random.default_rng(pairs)
    paired = PairedPruning(warmup=0, p_threshold=0.1)
    for _ in range(20):
        differences = rng.normal(0.2, 1.0, pairs)  # no ties, no zeros
        expected = stats.wilcoxon(differences, alternative="greater", method="exact").pvalue
        assert paired.p_worse(differences) == pytest.approx(expected, abs=1e-12)
    # Zeros are dropped and tied sizes share their average rank: every sign pattern of the
    # ranks 1.5, 1.5, 3 whose signed sum reaches -1.5 + 1.5 + 3 = 3 (3 of the 8).
    assert paired.p_worse(np.array([0.0, -0.5, 0.5, 0.9])) == pytest.approx(3 / 8)
    assert paired.p_worse(np.zeros(4)) == 1.0


def test_the_normal_approximation_beyond_the_exact_pairs():
    from scipy import stats

    differences = np.random.default_rng(0).normal(0.3, 1.0, 30)
    expected = stats.wilcoxon(differences, alternative="greater", method="approx",
                              correction=False).pvalue
    assert PairedPruning(0, 0.1).p_worse(differences) == pytest.approx(expected, rel=1e-9)


def test_the_paired_pruner_prunes_a_trial_that_loses_run_by_run_from_its_warmup():
    paired = PairedPruning(warmup=3, p_threshold=0.1)
    curves = [[1.0 - 0.1 * epoch + 0.01 * run for epoch in range(5)] for run in range(6)]
    losing = [curve[3] + 0.05 for curve in curves]  # every run worse at epoch 4
    assert not paired.prunes(4, losing)  # no incumbent yet
    paired.completed(0.6, curves)
    assert paired.prunes(4, losing)  # 6 of 6 worse: p = 1/64
    assert not paired.prunes(2, [curve[1] + 0.05 for curve in curves])  # in its warmup
    mixed = [curve[3] + (0.05 if run % 2 else -0.05) for run, curve in enumerate(curves)]
    assert not paired.prunes(4, mixed)
    # A better trial completes: it is the incumbent now; a worse one never replaces it.
    better = [[value - 1.0 for value in curve] for curve in curves]
    paired.completed(-0.4, better)
    paired.completed(5.0, curves)
    assert paired.incumbent == (-0.4, better)
    assert paired.prunes(4, [curve[3] - 0.5 for curve in curves])


def test_the_paired_pruner_needs_runs_enough_to_reach_its_threshold(write_study):
    from conftest import SMALL_WINE

    from hpsearch.config import load_study_config
    from hpsearch.errors import ConfigError

    text = SMALL_WINE.format(search="").replace('kind = "median"', 'kind = "paired"')
    with pytest.raises(ConfigError, match=r"the paired pruner .* 1 run per trial .* can "
                                          r"never reach p < 0\.1; set \[evaluation\] folds x "
                                          r"seeds to 4 runs or more"):
        load_study_config(str(write_study(text=text)))
    runs = text + "\n[evaluation]\nfolds = 2\nseeds = 2\n"
    assert load_study_config(str(write_study(text=runs))).pruner.kind == "paired"


@pytest.mark.parametrize("engine", ["reference", "cohort"])
def test_a_paired_search_prunes_trials_with_all_their_runs(write_study, tmp_path, engine):
    from conftest import SMALL_WINE

    from hpsearch.config import load_study_config
    from hpsearch.records import ATTR_END_DETAIL, ATTR_RUN_VAL_LOSS
    from hpsearch.search.run import run_search

    text = SMALL_WINE.format(search="").replace('kind = "median"', 'kind = "paired"') + \
        "\n[evaluation]\nfolds = 2\nseeds = 2\n"
    config = load_study_config(str(write_study(text=text)))
    url = f"sqlite:///{tmp_path / 'paired.db'}"
    outcome = run_search(config, url, 12, engine=engine, cohort_size=4)
    assert outcome.counts.finished == 12 and outcome.counts.failed == 0
    trials = optuna.load_study(study_name="small", storage=url).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the paired pruner pruned nothing"
    for trial in pruned:
        last = max(trial.intermediate_values)
        assert trial.user_attrs[ATTR_END_DETAIL] == f"pruned by the paired pruner at epoch {last}"
        assert last >= 3 and sorted(trial.intermediate_values) == list(range(1, last + 1))
        assert len(trial.user_attrs[ATTR_RUN_VAL_LOSS]) == 4
    # Nothing before the startup trials completed.
    first_pruned = min(t.number for t in pruned)
    assert sum(t.state == TrialState.COMPLETE for t in trials[:first_pruned]) >= 3 or \
        engine == "cohort"
