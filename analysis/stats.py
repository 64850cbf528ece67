"""Confidence intervals and tests: percentile bootstrap of a mean, t-interval across seeds,
paired bootstrap, McNemar.

Every random draw comes from a generator seeded by (seed, a label of what is resampled), so a
number does not change when other runs are added to the report or the order of work changes.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95

# Bootstrap bounds carry Monte-Carlo error of order 1e-3; rounding them to 1e-6 keeps files
# byte-stable across machines whose float summation differs in the last bits.
BOUND_DECIMALS = 6

# Measured on the 2-core development machine: numpy's multinomial costs ~100 ns per category per
# resample, gathering resampled indices ~8 ns per element, so counts over distinct values win
# while there are fewer than n/12 of them.
_MULTINOMIAL_ADVANTAGE = 12

# Resampled index blocks stay under 4M elements (32 MB of int64) however large the group.
_BLOCK_ELEMENTS = 2**22


def generator(seed: int, label: str) -> np.random.Generator:
    """A generator for one resampling job, independent of every other label."""
    word = int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([seed, word]))


def mean(values: np.ndarray) -> float | None:
    """Correctly rounded mean (math.fsum), so it equals statistics.fmean to the last bit."""
    return math.fsum(values.tolist()) / len(values) if len(values) else None


def resample_means(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """Means of `resamples` bootstrap resamples (n draws with replacement) of `values`."""
    n = len(values)
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) * _MULTINOMIAL_ADVANTAGE < n:
        # How often each distinct value is drawn in n draws is Multinomial(n, counts / n): the same
        # distribution as drawing indices, at a cost of len(distinct) instead of n per resample.
        # Per-example metrics take few values (EM two, F1 a few dozen), so this is the usual path.
        drawn = rng.multinomial(n, counts / n, size=resamples)
        return (drawn * distinct).sum(axis=1) / n
    out = np.empty(resamples)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _bounds(means: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return round(float(low), BOUND_DECIMALS), round(float(high), BOUND_DECIMALS)


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its 95% interval: a percentile bootstrap over examples, or a
    t-interval over the per-seed means of a configuration run with several seeds."""

    n: int
    """Values the mean is over: examples, or seeds when `over` is "seeds"."""
    mean: float | None
    low: float | None
    high: float | None
    sd: float | None = None
    """Sample standard deviation (n − 1) of the per-seed means; None over examples or for one seed."""
    over: Literal["examples", "seeds"] = "examples"


def bootstrap_mean(values: np.ndarray, label: str, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> Estimate:
    """Mean of the non-NaN `values` and its 95% percentile bootstrap CI; all None when empty."""
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return Estimate(0, None, None, None)
    low, high = _bounds(resample_means(present, generator(seed, label), resamples), level)
    return Estimate(len(present), mean(present), low, high)


def across_seeds(means: Sequence[float | None], level: float = LEVEL) -> Estimate:
    """Mean of per-seed means, their sample sd and the t-interval mean ± t(level, k − 1)·sd/√k.

    Each seed weighs the same. The interval is about the seed (training, shot draw, sampling) on
    this fixed eval set, not about which questions were asked: the runs' own bootstrap intervals
    say that. None where no seed has a value; sd and interval None for a single seed.
    """
    present = [m for m in means if m is not None]
    if not present:
        return Estimate(0, None, None, None, over="seeds")
    k, centre = len(present), math.fsum(present) / len(present)
    if k == 1:
        return Estimate(1, centre, None, None, over="seeds")
    from scipy.stats import t

    sd = statistics.stdev(present)
    half = float(t.ppf((1 + level) / 2, k - 1)) * sd / math.sqrt(k)
    # Rounded like bootstrap bounds: the t quantile and the square root differ in the last bits
    # between libm builds, and the files stay byte-stable.
    return Estimate(k, centre, round(centre - half, BOUND_DECIMALS), round(centre + half, BOUND_DECIMALS), sd, "seeds")


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a − b over examples both runs scored, its bootstrap CI and two-sided p-value."""

    n: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    """Twice the share of resampled mean differences on the far side of zero, at most 1."""


def paired_bootstrap(a: np.ndarray, b: np.ndarray, label: str, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> PairedDifference:
    """Paired bootstrap of mean(a − b): resampling examples keeps each pair together."""
    both = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[both], b[both]
    if len(a) == 0:
        return PairedDifference(0, None, None, None, None, None, None)
    diff = a - b
    means = resample_means(diff, generator(seed, label), resamples)
    low, high = _bounds(means, level)
    # A resampled difference of exactly zero counts on both sides: identical runs get p = 1.
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return PairedDifference(len(a), mean(a), mean(b), mean(diff), low, high, p)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on paired correct/incorrect outcomes."""

    both: int
    only_a: int
    only_b: int
    neither: int
    p_value: float
    """Two-sided exact binomial p-value of only_a among the discordant pairs; 1.0 if there are none."""


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """Under "A and B are equally often right", each discordant pair favours A with probability 1/2."""
    from scipy.stats import binomtest

    a_correct, b_correct = a_correct.astype(bool), b_correct.astype(bool)
    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(~a_correct & b_correct))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return McNemar(int(np.sum(a_correct & b_correct)), only_a, only_b, int(np.sum(~a_correct & ~b_correct)), float(p))
