"""Exact aggregation of trained-A adapters: the weighted mean of the boxes' products B_i A_i,
re-factorised to rank r.

Unlike averaging A and B separately (FedIT), this is the true mean weight change; only the
final rank-r truncation loses anything, and that loss is reported every round. The GGUF base
is never touched, so a quantized base stays as served.

Two accumulators: `factored` (default) never forms a dense matrix and bounds memory by
re-factorising the stack of products (QR + small SVD), reporting a bound on what that drops;
`dense` keeps the exact d x k sum (32 MB per 2048 x 2048 tensor), folding products in batches,
which is exact until the final truncation and several times faster at a thousand updates.
"""

from typing import Literal

import numpy as np

from appliance.federation.strategies.base import Aggregate, RejectedUpdateError, RoundLedger
from appliance.federation.strategies.lowrank import DenseSum, LowRankSum
from appliance.federation.updates import ClientUpdate, GlobalAdapter

DEFAULT_MAX_BUFFER_RANK = 256


class ExactProduct:
    """sum_i w_i B_i A_i / sum_i w_i, truncated to the adapter's rank by QR + small SVD."""

    name = "exact-product"

    def __init__(
        self,
        max_buffer_rank: int = DEFAULT_MAX_BUFFER_RANK,
        accumulator: Literal["factored", "dense"] = "factored",
    ) -> None:
        self._ledger = RoundLedger()
        self._max_buffer_rank = max_buffer_rank
        self._accumulator = accumulator
        self._sums: dict[str, LowRankSum | DenseSum] = {}

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round; the adapter's A must be trained (frozen A: use FedAvgFrozenA)."""
        if base.frozen_a:
            raise RejectedUpdateError("with a frozen A, FedAvgFrozenA is exact and keeps A shared")
        self._ledger.start(base)
        self._sums = {
            name: self._new_sum(b.shape[0], a.shape[1], max(self._max_buffer_rank, 4 * a.shape[0]))
            for name, (a, b) in base.factors.items()
        }

    def _new_sum(self, rows: int, cols: int, buffer_rank: int) -> LowRankSum | DenseSum:
        if self._accumulator == "dense":
            return DenseSum(rows, cols, batch_rank=buffer_rank)
        return LowRankSum(rows, cols, max_rank=buffer_rank)

    def accept(self, update: ClientUpdate) -> None:
        """Fold w_i B_i A_i into each tensor's low-rank sum."""
        base = self._ledger.admit(update)
        weight = self._ledger.record(update)
        for name, (a, b) in update.factors_on(base).items():
            self._sums[name].add(weight * b.astype(np.float64), a.astype(np.float64))

    def finish(self) -> Aggregate:
        """Rank-r factors of the mean product; report the worst relative truncation error."""
        self._ledger.require_updates()
        base, total = self._ledger.require_base(), self._ledger.total_weight
        factors, worst, bound = {}, 0.0, 0.0
        for name, summed in self._sums.items():
            result = summed.truncate(base.rank, scale=1.0 / total)
            factors[name] = (result.right.astype(np.float32), result.left.astype(np.float32))
            worst = max(worst, result.relative_error)
            bound = max(bound, result.streaming_error_bound)
        report: dict[str, float | int | str] = {
            "strategy": self.name,
            "accumulator": self._accumulator,
            "updates": len(self._ledger.nodes),
            "samples": int(total),
            "truncation_error": worst,
            "streaming_error_bound": bound,
        }
        return Aggregate(factors, report)
