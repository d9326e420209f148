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
        xx, xy, yy = self._norm_coefficients(update)

        def norm(t: float) -> float:
            return math.sqrt(max(t * t * xx + 2 * t**3 * xy + t**4 * yy, 0.0))

        if norm(1.0) <= self.max_norm:
            return 1.0
        low, high = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            low, high = (mid, high) if norm(mid) <= self.max_norm else (low, mid)
        return low

    def _norm_coefficients(self, update: ClientUpdate) -> tuple[float, float, float]:
        """||dW(t)||^2 = t^2 ||X||^2 + 2 t^3 <X, Y> + t^4 ||Y||^2, summed over tensors.

        Scaling both factor deltas by t gives dW(t) = t X + t^2 Y with X = B dA + dB A = P Q
        (P = [B | dB], Q = [dA; A]) and Y = dB dA; each term is a trace of small Gram
        matrices, so one pass over the factors prices every t of the bisection.
        """
        assert self._base is not None
        xx = xy = yy = 0.0
        for name, (a, b) in self._base.factors.items():
            delta = update.deltas[name]
            d_b = delta.b.astype(np.float64)
            left = np.hstack([b, delta.b]).astype(np.float64)
            if delta.a is None:  # frozen A: X = dB A, Y = 0
                xx += float(np.trace((d_b.T @ d_b) @ (a @ a.T).astype(np.float64)))
                continue
            d_a = delta.a.astype(np.float64)
            right = np.vstack([d_a, a]).astype(np.float64)
            xx += float(np.trace((left.T @ left) @ (right @ right.T)))
            xy += float(np.trace((d_b.T @ left) @ (right @ d_a.T)))
            yy += float(np.trace((d_b.T @ d_b) @ (d_a @ d_a.T)))
        return xx, xy, yy
