"""Norm bounding as a wrapper: no box can move the global adapter by more than a set amount.

The bound is on the Frobenius norm of the box's whole weight change (all tensors together),
computed from the factors with small Gram matrices, never the dense matrices. An update over
the bound is scaled down to it (with frozen A this is exactly t * dW; with trained A both
factor deltas are scaled by the t that brings the norm to the bound). This is also the
clipping step of differential privacy.
"""

import math
from dataclasses import replace

import numpy as np

from appliance.federation.strategies.base import Aggregate, Strategy
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter

_BISECTION_STEPS = 60


class NormBound:
    """Wraps a strategy; scales each update so that ||dW||_F <= max_norm."""

    def __init__(self, inner: Strategy, max_norm: float) -> None:
        if not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a positive number (got {max_norm})")
        self.inner, self.max_norm = inner, max_norm
        self.name = f"norm-bound({inner.name})"
        self._base: GlobalAdapter | None = None
        self._bounded: list[str] = []

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round on the inner strategy too."""
        self._base, self._bounded = base, []
        self.inner.begin(base)

    def accept(self, update: ClientUpdate) -> None:
        """Scale the update down to the bound if needed, then pass it on."""
        assert self._base is not None, "begin() first"
        if not all(
            np.isfinite(d.b).all() and (d.a is None or np.isfinite(d.a).all())
            for d in update.deltas.values()
        ):
            self.inner.accept(update)  # the inner strategy rejects it with its reason
            return
        t = self._scale_for(update)
        if t < 1.0:
            self._bounded.append(update.node_id)
            update = replace(
                update,
                deltas={
                    name: Delta(None if d.a is None else t * d.a, t * d.b)
                    for name, d in update.deltas.items()
                },
            )
        self.inner.accept(update)

    def finish(self) -> Aggregate:
        """The inner result, with how many updates were bounded."""
        result = self.inner.finish()
        report = dict(result.report)
        report.update(strategy=self.name, max_norm=self.max_norm, bounded=len(self._bounded))
        return Aggregate(result.factors, report)

    def _scale_for(self, update: ClientUpdate) -> float:
        """Largest t in [0, 1] with ||dW(t)|| <= max_norm (1 when already within)."""
        if self._norm(update, 1.0) <= self.max_norm:
            return 1.0
        low, high = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            low, high = (mid, high) if self._norm(update, mid) <= self.max_norm else (low, mid)
        return low

    def _norm(self, update: ClientUpdate, t: float) -> float:
        assert self._base is not None
        total = 0.0
        for name, (a, b) in self._base.factors.items():
            delta = update.deltas[name]
            d_a = np.zeros_like(a) if delta.a is None else delta.a
            # dW(t) = B (t dA) + dB (t A + t^2 dA) = P Q with P = [B | dB]
            left = np.hstack([b, delta.b]).astype(np.float64)
            right = np.vstack([t * d_a, t * a + t * t * d_a]).astype(np.float64)
            total += float(np.trace((left.T @ left) @ (right @ right.T)))
        return math.sqrt(max(total, 0.0))
