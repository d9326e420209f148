"""Robust statistics across boxes: coordinate-wise median and trimmed mean.

Coordinates only mean the same thing across boxes when A is shared and frozen (B A = (B R)
(R^-1 A) for any invertible R), so under frozen A they run on B; otherwise on the dense
product B_i A_i, re-factorised to rank r afterwards. Both must see every update before they
can answer, so unlike FedAvg their memory grows with the number of boxes: fine for a plant's
tens of boxes, and the reason they are not the default. They are unweighted on purpose: a box
cannot buy influence by claiming more samples.
"""

from abc import ABC, abstractmethod

import numpy as np

from appliance.federation.strategies.base import Aggregate, RoundLedger
from appliance.federation.strategies.lowrank import truncate_dense
from appliance.federation.updates import ClientUpdate, GlobalAdapter


class _CoordinateStatistic(ABC):
    """Buffers each box's B (frozen A) or product, then applies a statistic along boxes."""

    name = "coordinate-statistic"

    def __init__(self) -> None:
        self._ledger = RoundLedger()
        self._values: dict[str, list[np.ndarray]] = {}

    @abstractmethod
    def statistic(self, stacked: np.ndarray) -> np.ndarray:
        """Reduce axis 0 (boxes)."""

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round."""
        self._ledger.start(base)
        self._values = {name: [] for name in base.factors}

    def accept(self, update: ClientUpdate) -> None:
        """Keep the box's B (frozen A) or its dense product."""
        base = self._ledger.admit(update)
        self._ledger.record(update)
        for name, (a, b) in update.factors_on(base).items():
            self._values[name].append(b if base.frozen_a else b.astype(np.float64) @ a)

    def finish(self) -> Aggregate:
        """Statistic of B, or of the products truncated back to rank r."""
        self._ledger.require_updates()
        base = self._ledger.require_base()
        factors, worst = {}, 0.0
        for name, (a, _) in base.factors.items():
            value = self.statistic(np.stack(self._values[name]))
            if base.frozen_a:
                factors[name] = (a, value.astype(np.float32))
                continue
            result = truncate_dense(value, base.rank)
            factors[name] = (result.right.astype(np.float32), result.left.astype(np.float32))
            worst = max(worst, result.relative_error)
        report: dict[str, float | int | str] = {
            "strategy": self.name,
            "updates": len(self._ledger.nodes),
            "samples": int(self._ledger.total_weight),
        }
        if not base.frozen_a:
            report["truncation_error"] = worst
        return Aggregate(factors, report)


class CoordinateMedian(_CoordinateStatistic):
    """Median of each coordinate across boxes."""

    name = "coordinate-median"

    def statistic(self, stacked: np.ndarray) -> np.ndarray:
        """Median along boxes."""
        median: np.ndarray = np.median(stacked, axis=0)
        return median


class TrimmedMean(_CoordinateStatistic):
    """Mean of each coordinate after dropping the `trim_fraction` highest and lowest values."""

    def __init__(self, trim_fraction: float = 0.1) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5) (got {trim_fraction})")
        super().__init__()
        self.trim_fraction = trim_fraction
        self.name = f"trimmed-mean({trim_fraction:g})"

    def statistic(self, stacked: np.ndarray) -> np.ndarray:
        """Trimmed mean along boxes."""
        cut = int(self.trim_fraction * stacked.shape[0])
        ordered = np.sort(stacked, axis=0)
        trimmed: np.ndarray = ordered[cut : stacked.shape[0] - cut].mean(axis=0)
        return trimmed
