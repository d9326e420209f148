"""Gaussian noise on a clipped update: local DP on the box, or shares of distributed noise.

Local (what a box does today when `privacy.enabled`): clip to S, add N(0, (z*S)^2) to every
coordinate. That is the Gaussian mechanism on the box's whole round contribution with
sensitivity S (add/remove the box, or replace its update by zero), so each released update
is (epsilon, delta)-DP on its own, before it leaves the box; nothing downstream (broker,
aggregator, other boxes) has to be trusted.

Distributed (for the secure-aggregation path, `noise_share_std`): when the aggregator only
ever sees the *sum* of n masked updates, each box may add a share N(0, (z*S)^2 / n) instead;
the sum then carries N(0, (z*S)^2), the same central guarantee with sqrt(n) times less noise
per box. The guarantee holds for the sum only, and only if at least `expected` boxes add
their share: with dropouts the sum carries less noise, so a caller passes the number of
boxes it is sure will be summed (the committed survivors' lower bound), not the invited
number. The aggregator never sees a single update under masking, which is what makes the
smaller share enough; without masking, use `privatize`.
"""

import math
from dataclasses import dataclass

import numpy as np

from appliance.federation.updates import Delta
from appliance.privacy.clipping import clip


@dataclass(frozen=True)
class Privatized:
    """A clipped, noised update and the numbers an auditor wants about it."""

    deltas: dict[str, Delta]
    norm_before: float
    clipped: bool
    noise_std: float


def noise_share_std(clip_norm: float, noise_multiplier: float, expected: int) -> float:
    """Per-box noise std so that the sum over `expected` boxes has std z*S."""
    if expected < 1:
        raise ValueError(f"expected boxes must be at least 1 (got {expected})")
    return noise_multiplier * clip_norm / math.sqrt(expected)


def add_noise(
    deltas: dict[str, Delta], std: float, rng: np.random.Generator
) -> dict[str, Delta]:
    """Every coordinate plus independent N(0, std^2), in float32 like the rest of the update."""
    if not std >= 0 or not math.isfinite(std):
        raise ValueError(f"noise std must be finite and non-negative (got {std})")

    def noisy(part: np.ndarray) -> np.ndarray:
        noise = rng.normal(0.0, std, size=part.shape)
        return (np.asarray(part, np.float64) + noise).astype(np.float32)

    return {
        name: Delta(None if d.a is None else noisy(d.a), noisy(d.b)) for name, d in deltas.items()
    }


def privatize(
    deltas: dict[str, Delta],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    *,
    expected_summands: int = 1,
) -> Privatized:
    """Clip to `clip_norm`, then add Gaussian noise (the full z*S for local DP, a share of it
    when `expected_summands` > 1 under secure aggregation)."""
    clipped = clip(deltas, clip_norm)
    std = noise_share_std(clip_norm, noise_multiplier, expected_summands)
    return Privatized(
        add_noise(clipped.deltas, std, rng), clipped.norm_before, clipped.factor < 1.0, std
    )
