"""Means with bootstrap confidence intervals over sentences.

Samples of the same sentence are not independent (one hard sentence raises the WER of all
its samples), so the bootstrap resamples whole sentences: a cluster bootstrap. Percentile
intervals suit bounded, skewed metrics such as WER and rates of rare events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Estimate:
    mean: float
    low: float  # lower end of the confidence interval
    high: float
    n: int  # number of values the mean is over

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def bootstrap_mean(
    values_by_sentence: list[list[float]],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate | None:
    """Mean of all values and a cluster-bootstrap interval; None when there are no values.

    `values_by_sentence[i]` holds the values of sentence i's samples (missing ones left out).
    The seed is fixed so that a report repeats exactly.
    """
    groups = [np.asarray(v, dtype=np.float64) for v in values_by_sentence if len(v)]
    if not groups:
        return None
    if len(groups) == 1:
        # One sentence: its samples are the only spread there is.
        groups = [value.reshape(1) for value in groups[0]]
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    mean = float(sums.sum() / counts.sum())
    if len(groups) == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(mean, float(low), float(high), int(counts.sum()))
