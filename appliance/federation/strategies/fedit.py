"""FedIT: average A and B separately. A baseline only.

(sum w_i B_i)(sum w_i A_i) != sum w_i B_i A_i: the cross terms B_i A_j make it inexact, the
more so the more the boxes' data differ. Kept to measure how much the exact methods gain.
"""

import numpy as np

from appliance.federation.strategies.base import Aggregate, RoundLedger
from appliance.federation.updates import ClientUpdate, GlobalAdapter


class FedIT:
    """Weighted means of A and of B, each on its own."""

    name = "fedit"

    def __init__(self) -> None:
        self._ledger = RoundLedger()
        self._a: dict[str, np.ndarray] = {}
        self._b: dict[str, np.ndarray] = {}

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round."""
        self._ledger.start(base)
        self._a = {n: np.zeros(a.shape, np.float64) for n, (a, _) in base.factors.items()}
        self._b = {n: np.zeros(b.shape, np.float64) for n, (_, b) in base.factors.items()}

    def accept(self, update: ClientUpdate) -> None:
        """Add the weighted deltas of A and B."""
        self._ledger.admit(update)
        weight = self._ledger.record(update)
        for name, delta in update.deltas.items():
            self._b[name] += weight * delta.b
            if delta.a is not None:
                self._a[name] += weight * delta.a

    def finish(self) -> Aggregate:
        """Global factors plus the mean deltas."""
        self._ledger.require_updates()
        base, total = self._ledger.require_base(), self._ledger.total_weight
        factors = {
            n: (
                (a + self._a[n] / total).astype(np.float32),
                (b + self._b[n] / total).astype(np.float32),
            )
            for n, (a, b) in base.factors.items()
        }
        return Aggregate(
            factors,
            {"strategy": self.name, "updates": len(self._ledger.nodes), "samples": int(total)},
        )
