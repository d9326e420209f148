"""Distributed DP noise under SecAgg+: each box adds its share, the sum carries the whole.

Under masking the aggregator sees only the sum of the reporting boxes' weighted codes, so
each box adds integer noise of std sigma / sqrt(m), m = `min_reporting` (the fewest boxes a
box lets the round be committed with): any committed sum then carries at least N(0, sigma^2)
in total (Kairouz et al. 2021, distributed discrete Gaussian; here a rounded Gaussian, each
share cut at 6 std so the ring's no-wrap bound holds, which changes the distribution with
probability below 2e-9 per value).

sigma = z * sensitivity, with the sensitivity of the sum to one box (L2, in code units):
its B change is clipped to `clip_norm`, coded with step s and weighted by at most
max_weight, and rounding moves each of the d codes by at most 1/2, so

    sensitivity = max_weight * (clip_norm / s + sqrt(d) / 2).

The fleet-level epsilon of a round with k >= m reporting boxes is that of the Gaussian
mechanism with noise multiplier z * sqrt(k / m) (the accountant composes them over rounds).
"""

import math

import numpy as np

CUT_STDS = 6.0


def sensitivity(clip_norm: float, step: float, max_weight: int, count: int) -> float:
    """L2 change of the weighted code sum when one box is added or removed."""
    return max_weight * (clip_norm / step + math.sqrt(count) / 2)


def share_std(noise_multiplier: float, sens: float, min_reporting: int) -> float:
    """Per-box noise std (code units) so that m shares sum to std z * sensitivity."""
    if min_reporting < 1:
        raise ValueError("min_reporting must be positive")
    return noise_multiplier * sens / math.sqrt(min_reporting)


def per_box_margin(std: float) -> int:
    """The largest |noise| one box adds to a value (shares are cut at 6 std)."""
    return math.ceil(CUT_STDS * std) if std > 0 else 0


def noise_share(count: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """`count` integer noise values (int64): a rounded Gaussian, cut at 6 std."""
    if std <= 0:
        return np.zeros(count, np.int64)
    raw = np.clip(rng.normal(0.0, std, size=count), -CUT_STDS * std, CUT_STDS * std)
    return np.rint(raw).astype(np.int64)


def effective_multiplier(noise_multiplier: float, reporting: int, min_reporting: int) -> float:
    """The noise multiplier of the whole sum of `reporting` boxes' shares."""
    return noise_multiplier * math.sqrt(reporting / min_reporting)
