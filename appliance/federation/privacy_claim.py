"""What a box tells the aggregator about the privacy of one update (in the update header).

A federation wire type (it travels in the update header), so it lives here: `privacy` builds
it and imports `federation`, never the other way round (that was the package cycle).

The aggregator cannot check these numbers (the noise is indistinguishable from signal); it
records them in the audit log per participant, so the plant can see which boxes released
what at which cumulative epsilon.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DpReport(BaseModel):
    """The mechanism a box applied to this update and its cumulative epsilon after it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mechanism: Literal["gaussian-local"] = "gaussian-local"
    clip_norm: float = Field(gt=0, le=1e6)
    noise_multiplier: float = Field(gt=0, le=1e3)
    delta: float = Field(gt=0, lt=1)
    epsilon: float = Field(ge=0, le=1e6, description="Spent by this box including this update.")
    releases: int = Field(ge=1, description="Updates this box has released under DP so far.")


class FleetDpReport(BaseModel):
    """Distributed DP of a secure round, as the aggregator accounts it for the whole fleet:
    every box adds a share of the noise, so only the sum is private; its epsilon composes all
    rounds in the aggregator's fleet ledger (an audit field of its own, so a plant reads it
    without knowing the strategy report's keys)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mechanism: Literal["distributed-gaussian"] = "distributed-gaussian"
    noise_multiplier: float = Field(
        gt=0, le=1e3, description="Effective multiplier of the summed noise this round."
    )
    clip_norm: float = Field(gt=0, le=1e6, description="L2 clip of each box's B change.")
    delta: float = Field(gt=0, lt=1)
    epsilon: float = Field(ge=0, le=1e6, description="Fleet epsilon after this round.")
    rounds: int = Field(ge=1, description="Noised secure rounds in the fleet ledger so far.")
