"""Ratios of runs taken side by side, for the benchmark scripts (not part of hpsearch).

This machine's speed drifts by up to 1.5x within minutes, so a ratio of medians taken minutes
apart says little. The benchmarks interleave their variants and compare each run with the run
of the other variant next to it (same seed): `paired` gives the median and range of those
run-by-run ratios.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> str:
    """'**median x** (runs low x-high x)' of numerators[k] / denominators[k]."""
    ratios = sorted(n / d for n, d in zip(numerators, denominators, strict=True))
    return f"**{statistics.median(ratios):.2f}x** (runs {ratios[0]:.2f}x-{ratios[-1]:.2f}x)"
