"""What a box sends and what the aggregator holds: LoRA factors and their deltas.

Names are adapter tensor names without the factor suffix (`blk.0.attn_q.weight`); arrays use
the PEFT orientation: A is (r, n_in), B is (n_out, r), the weight change is B @ A.
"""

from dataclasses import dataclass, field

import numpy as np

Factors = dict[str, tuple[np.ndarray, np.ndarray]]
"""Base tensor name -> (A, B)."""


@dataclass(frozen=True)
class GlobalAdapter:
    """The fleet's current adapter: the starting point of a round."""

    version: int
    factors: Factors
    alpha: float
    frozen_a: bool

    @property
    def rank(self) -> int:
        """LoRA rank shared by every factor pair."""
        return int(next(iter(self.factors.values()))[0].shape[0])


@dataclass(frozen=True)
class Delta:
    """The change a box made to one factor pair; `a` is None when A is frozen."""

    a: np.ndarray | None
    b: np.ndarray


@dataclass(frozen=True)
class ClientUpdate:
    """One box's contribution to a round, decoded and validated."""

    node_id: str
    sample_count: int
    deltas: dict[str, Delta]
    meta: dict[str, str | int | float] = field(default_factory=dict)

    def factors_on(self, base: GlobalAdapter) -> Factors:
        """The box's adapter: the global one plus this delta."""
        out: Factors = {}
        for name, (a, b) in base.factors.items():
            delta = self.deltas[name]
            out[name] = (a if delta.a is None else a + delta.a, b + delta.b)
        return out
