"""The strategy interface and the checks every strategy applies to an incoming update."""

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from appliance.federation.updates import ClientUpdate, Factors, GlobalAdapter


class RejectedUpdateError(ValueError):
    """An update cannot take part in this round; the message says why."""


@dataclass(frozen=True)
class Aggregate:
    """A round's result: the next global adapter's factors and numbers for the audit log."""

    factors: Factors
    report: dict[str, float | int | str] = field(default_factory=dict)


class Strategy(Protocol):
    """One federated round's aggregation."""

    name: str

    def begin(self, base: GlobalAdapter) -> None:
        """Start a round from the current global adapter."""

    def accept(self, update: ClientUpdate) -> None:
        """Fold one box's update in, or raise `RejectedUpdateError`."""

    def finish(self) -> Aggregate:
        """The aggregated adapter; raises `RejectedUpdateError` if no update was accepted."""


class RoundLedger:
    """Bookkeeping shared by strategies: the base, who contributed, total weight."""

    def __init__(self) -> None:
        self.base: GlobalAdapter | None = None
        self.nodes: set[str] = set()
        self.total_weight = 0.0

    def start(self, base: GlobalAdapter) -> None:
        """Forget the previous round."""
        self.base, self.nodes, self.total_weight = base, set(), 0.0

    def admit(self, update: ClientUpdate) -> GlobalAdapter:
        """Check an update against the round; returns the round's base adapter."""
        base = self.require_base()
        if update.node_id in self.nodes:
            raise RejectedUpdateError(f"{update.node_id}: already contributed to this round")
        if update.sample_count <= 0:
            raise RejectedUpdateError(f"{update.node_id}: sample_count must be positive")
        check_delta_shapes(update, base)
        return base

    def record(self, update: ClientUpdate) -> float:
        """Count an admitted update; returns its weight (its sample count)."""
        self.nodes.add(update.node_id)
        self.total_weight += update.sample_count
        return float(update.sample_count)

    def require_base(self) -> GlobalAdapter:
        """The round's base adapter (begin() must have been called)."""
        if self.base is None:
            raise RuntimeError("begin() must be called before accept() or finish()")
        return self.base

    def require_updates(self) -> None:
        """finish() needs at least one accepted update."""
        if not self.nodes:
            raise RejectedUpdateError("no update was accepted in this round")


def check_delta_shapes(update: ClientUpdate, base: GlobalAdapter) -> None:
    """Same tensors and shapes as the global adapter, finite values, A only when trained."""
    if set(update.deltas) != set(base.factors):
        raise RejectedUpdateError(f"{update.node_id}: tensors differ from the global adapter")
    for name, (a, b) in base.factors.items():
        delta = update.deltas[name]
        if delta.b.shape != b.shape:
            raise RejectedUpdateError(
                f"{update.node_id}: {name}: B shape {delta.b.shape} != {b.shape}"
            )
        if (delta.a is None) != base.frozen_a:
            raise RejectedUpdateError(
                f"{update.node_id}: {name}: A sent for a frozen-A round or missing"
            )
        if delta.a is not None and delta.a.shape != a.shape:
            raise RejectedUpdateError(
                f"{update.node_id}: {name}: A shape {delta.a.shape} != {a.shape}"
            )
        arrays = [delta.b] if delta.a is None else [delta.a, delta.b]
        if not all(np.isfinite(x).all() for x in arrays):
            raise RejectedUpdateError(f"{update.node_id}: {name}: NaN or infinite values")
