"""Aggregation strategies behind one small interface (Flower's Strategy is the model).

A strategy sees one round: `begin(global adapter)`, `accept(update)` for each box as updates
stream in (memory must not grow with their number where the maths allows), `finish()` for
the new global adapter and a report. Robustness is added by wrapping (`NormBound`) or by
choosing a robust statistic, never by flags in the round loop.
"""

from appliance.federation.strategies.base import Aggregate, RejectedUpdateError, Strategy
from appliance.federation.strategies.fedavg import FedAvgFrozenA
from appliance.federation.strategies.fedit import FedIT
from appliance.federation.strategies.norm_bound import NormBound
from appliance.federation.strategies.product import ExactProduct
from appliance.federation.strategies.robust import CoordinateMedian, TrimmedMean

__all__ = [
    "Aggregate",
    "CoordinateMedian",
    "ExactProduct",
    "FedAvgFrozenA",
    "FedIT",
    "NormBound",
    "RejectedUpdateError",
    "Strategy",
    "TrimmedMean",
]
