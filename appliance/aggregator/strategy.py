"""Build the configured aggregation strategy (a robust wrapper when a norm bound is set)."""

from appliance.config.federation import StrategySettings
from appliance.federation.strategies import (
    CoordinateMedian,
    ExactProduct,
    FedAvgFrozenA,
    FedIT,
    NormBound,
    Strategy,
    TrimmedMean,
)


def build_strategy(settings: StrategySettings) -> Strategy:
    """The strategy `[fleet.strategy]` names."""
    inner: Strategy
    match settings.name:
        case "fedavg":
            inner = FedAvgFrozenA()
        case "exact-product":
            inner = ExactProduct(accumulator=settings.accumulator)
        case "fedit":
            inner = FedIT()
        case "median":
            inner = CoordinateMedian()
        case "trimmed-mean":
            inner = TrimmedMean(settings.trim_fraction)
    return inner if settings.norm_bound is None else NormBound(inner, settings.norm_bound)
