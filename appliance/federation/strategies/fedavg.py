"""Sample-weighted FedAvg of B under a frozen, shared A (FFA-LoRA): exact, and streaming.

With A shared, sum_i w_i B_i A = (sum_i w_i B_i) A, so averaging B is averaging the boxes'
weight changes exactly. Only a running weighted sum is kept: memory does not depend on how
many boxes report.
"""

import numpy as np

from appliance.federation.strategies.base import Aggregate, RejectedUpdateError, RoundLedger
from appliance.federation.updates import ClientUpdate, GlobalAdapter


class FedAvgFrozenA:
    """Weighted mean of B; A stays the shared frozen one."""

    name = "fedavg-frozen-a"

    def __init__(self) -> None:
        self._ledger = RoundLedger()
        self._sums: dict[str, np.ndarray] = {}

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round; the adapter must have a frozen A."""
        if not base.frozen_a:
            raise RejectedUpdateError("FedAvg of B is exact only with a frozen A; use ExactProduct")
        self._ledger.start(base)
        self._sums = {name: np.zeros(b.shape, np.float64) for name, (_, b) in base.factors.items()}

    def accept(self, update: ClientUpdate) -> None:
        """Add w_i * B_i to the running sum."""
        self._ledger.admit(update)
        weight = self._ledger.record(update)
        for name, delta in update.deltas.items():
            self._sums[name] += weight * delta.b

    def finish(self) -> Aggregate:
        """Global B plus the weighted mean change."""
        self._ledger.require_updates()
        base = self._ledger.require_base()
        total = self._ledger.total_weight
        factors = {
            name: (a, (b + self._sums[name] / total).astype(np.float32))
            for name, (a, b) in base.factors.items()
        }
        return Aggregate(
            factors,
            {"strategy": self.name, "updates": len(self._ledger.nodes), "samples": int(total)},
        )
