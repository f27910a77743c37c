"""Paired statistics shared by the search's report and the confirmation: a mean and its
t-interval, paired differences of two configurations' runs, the two-sided Wilcoxon
signed-rank test, Holm's correction, and what an outcome is called.

Outcomes, in the same words wherever they are reported: `better` / `worse` (Holm-adjusted
p < alpha, lower or higher on average), `tied` (identical on every pair), `inconclusive` (not
significant: a difference the runs cannot tell from chance, whether too few pairs differ for
any p to reach alpha after the correction or their differences go both ways). Only identical
results are called tied: "not significant" is not evidence of "as good".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05
BETTER, WORSE, TIED, INCONCLUSIVE = "better", "worse", "tied", "inconclusive"


# -- intervals --------------------------------------------------------------------------------
def mean_interval(values: Sequence[float] | np.ndarray | pd.Series,
                  confidence: float = CONFIDENCE,
                  within: tuple[float, float] = (-math.inf, math.inf),
                  ) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its Student-t confidence interval, ignoring NaN,
    clipped to `within`. The interval is NaN below two values; it is a point where every
    value is the same."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2 or not np.isfinite(x).all():
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1)
                 / math.sqrt(len(x)))
    return mean, max(mean - half, within[0]), min(mean + half, within[1])


# -- paired tests -----------------------------------------------------------------------------
def paired_differences(best: pd.Series, other: pd.Series) -> np.ndarray:
    """best - other on the seeds both ran (Series indexed by seed; a diverged run is +inf:
    worse than any loss). Two diverged runs are a tie."""
    both = pd.concat([best, other], axis=1, join="inner").to_numpy(dtype=float)
    a, b = both[:, 0], both[:, 1]
    with np.errstate(invalid="ignore"):
        difference = a - b
    difference[np.isinf(a) & np.isinf(b)] = 0.0
    return difference


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (zeros dropped; 1.0 if all are
    zero). The test only uses their signs and the ranks of their sizes, so a diverged run's
    infinite difference is ranked as the largest."""
    from scipy import stats

    d = differences[differences != 0]
    if len(d) == 0:
        return 1.0
    finite = np.abs(d[np.isfinite(d)])
    largest = 2 * (finite.max() if len(finite) else 1.0) + 1
    d = np.where(np.isinf(d), np.sign(d) * largest, d)
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false "better" across a
    question's comparisons, and is never weaker than Bonferroni's."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for step, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - step) * p_values[index]))
        adjusted[index] = running
    return adjusted


def smallest_p(seeds: int) -> float:
    """The smallest two-sided exact Wilcoxon p that `seeds` differing pairs can give: every
    difference of one sign, 2 / 2^seeds."""
    return 2.0 ** (1 - seeds)


def seeds_needed(comparisons: int, alpha: float = ALPHA) -> int:
    """The fewest seeds (with differing results) with which the strongest of `comparisons`
    Holm-corrected comparisons can reach p < alpha at all."""
    seeds = 1
    while comparisons * smallest_p(seeds) >= alpha:
        seeds += 1
    return seeds


def outcome(wins: int, losses: int, pairs: int, p_holm: float, mean_difference: float,
            needed: int, alpha: float = ALPHA) -> str:
    """What a comparison of `pairs` paired runs found (`wins`/`losses`: pairs where the best
    was lower/higher; `needed`: `seeds_needed` for its question)."""
    if pairs > 0 and wins + losses == 0:
        return TIED
    if wins + losses >= needed and p_holm < alpha:
        return BETTER if mean_difference < 0 else WORSE
    return INCONCLUSIVE
