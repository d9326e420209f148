"""Clip a box's update to an L2 norm: the sensitivity bound every DP guarantee starts from.

The norm is taken over everything the box sends in one round, all tensors together (only B
under frozen A, A and B otherwise), so one clipped update moves the aggregate by at most S
whatever the box's data were.
"""

import math
from dataclasses import dataclass

import numpy as np

from appliance.federation.updates import Delta


class ClippingError(ValueError):
    """The update cannot be clipped (NaN or infinite values)."""


@dataclass(frozen=True)
class Clipped:
    """A clipped update with its norm before clipping and the factor it was scaled by."""

    deltas: dict[str, Delta]
    norm_before: float
    factor: float


def update_norm(deltas: dict[str, Delta]) -> float:
    """L2 norm of the whole update (every factor of every tensor, as one vector)."""
    total = 0.0
    for delta in deltas.values():
        for part in (delta.a, delta.b):
            if part is not None:
                total += float(np.sum(np.square(part, dtype=np.float64)))
    return math.sqrt(total)


def clip(deltas: dict[str, Delta], clip_norm: float) -> Clipped:
    """Scale the update down to norm `clip_norm` when it is larger; leave it alone otherwise."""
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise ClippingError(f"clip norm must be positive and finite (got {clip_norm})")
    norm = update_norm(deltas)
    if not math.isfinite(norm):
        raise ClippingError("update holds NaN or infinite values; it cannot be clipped")
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    if factor == 1.0:
        return Clipped(dict(deltas), norm, 1.0)
    # float32 rounding may leave the result a hair above the bound: shrink by an ulp more
    while True:
        factor = float(np.nextafter(np.float32(factor), np.float32(0)))
        scaled = {name: _scale(d, factor) for name, d in deltas.items()}
        if update_norm(scaled) <= clip_norm:
            return Clipped(scaled, norm, factor)


def _scale(delta: Delta, factor: float) -> Delta:
    f = np.float32(factor)
    a = None if delta.a is None else (np.asarray(delta.a, np.float32) * f)
    return Delta(a, np.asarray(delta.b, np.float32) * f)
