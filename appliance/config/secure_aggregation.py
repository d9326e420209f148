"""Secure aggregation of a fleet's updates (pairwise masking; appliance/privacy/secagg/).

The numbers here fix the round's integer encoding: every box codes B with the shared step
`value_bound / 127` and weights its codes by min(sample count, `max_weight`), so that at most
floor((2^31 - 1) / (127 * max_weight)) boxes fit in one unwrapped 32-bit sum (the same bound
as `appliance.privacy.secagg.encoding.max_participants`; a test keeps the two equal).
"""

from typing import Literal

from pydantic import Field, model_validator

from appliance.config.base import Section

MAX_KEY_SET = 200
"""Boxes per round whose signed mask keys fit one 64 KiB control message (secagg.MAX_KEYS)."""
MAX_PLUS_KEY_SET = 150
"""The same for SecAgg+ (two keys and a commitment per box; secagg.plus_messages.MAX_BOXES)."""


def participant_bound(max_weight: int) -> int:
    """Most boxes per secure round: the key-set message and the no-wrap bound of the sum."""
    return min(MAX_KEY_SET, (2**31 - 1) // (127 * max_weight))


class SecureAggregationSettings(Section):
    """Pairwise-masked updates: the aggregator learns only the sum of the boxes' updates."""

    enabled: bool = Field(
        default=False,
        description="Mask every update so that only the sum can be decoded. Needs dense int8 "
        'updates (`codec.top_k_fraction = 1.0`), `strategy.name = "fedavg"` without '
        "`norm_bound`, and a frozen A (`training.freeze_a`).",
    )
    value_bound: float = Field(
        default=0.05,
        gt=0,
        le=1000,
        description="Largest |change| of one B coordinate in a round; larger values are "
        "clipped on the box. The shared int8 step is value_bound / 127.",
    )
    max_weight: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="A box's weight is its sample count capped here; bounds the number of "
        "boxes per round to floor((2^31 - 1) / (127 * max_weight)) and 200.",
    )
    min_reporting: int = Field(
        default=2,
        ge=2,
        description="Boxes refuse to reveal seeds, and the aggregator to commit, when fewer "
        "boxes reported: a sum of one box is that box's update.",
    )
    key_wait_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="After opening a round, relay the key set once every participant's mask "
        "key arrived or this long has passed (boxes without a key are out of the round).",
    )
    share_wait_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Version 2: after the key set went out, relay the shares once every "
        "key-set member shared or this long has passed (boxes that did not share are out "
        "of the round; it fails if a box that shared keeps fewer than t share holders).",
    )
    reveal_wait_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="After the commit, wait this long for the reporting boxes' seed reveals; "
        "then the round fails (no global adapter) and the next one starts. Version 2 waits "
        "this long for the commit acks, then as long again for the share reveals.",
    )
    version: Literal[1, 2] = Field(
        default=2,
        description="2: SecAgg+ (Bell et al. 2020): Shamir shares of every box's self-mask "
        "seed and mask key among its neighbours, so a round survives boxes dropping at any "
        "phase, and a restart of a box or the aggregator (state persisted, encrypted); a "
        "signed consistency check before any reveal. 1: pairwise masks without shares (a box "
        "dropping after the commit fails the round).",
    )
    threshold: float = Field(
        default=0.6,
        gt=0.5,
        le=1.0,
        description="Version 2: the fraction t of a box's share holders (its neighbours and "
        "itself) whose shares rebuild its secrets; the round completes while every box keeps "
        "t holders, i.e. with up to n - t dropouts (0.6: t = 2 of 3, 6 of 10, 60 of 100). More "
        "than 1/2, or two halves could each approve a different survivor set; Bonawitz et al. "
        "take 2/3 against an active server that also controls boxes.",
    )
    neighbours: int = Field(
        default=0,
        ge=0,
        le=MAX_PLUS_KEY_SET,
        description="Version 2: neighbours per box (masks and shares), rounded up to even; "
        "0 or at least n - 1: every box (Bonawitz). Bell et al.: O(log n) suffices for large "
        "fleets.",
    )
    ring_bits: Literal[0, 16, 32] = Field(
        default=0,
        description="Version 2: bits per masked value. 0: 16 when the round's sum cannot wrap "
        "(participants x 127 x max_weight plus the DP noise margin below 2^15), else 32.",
    )
    noise_multiplier: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Version 2: distributed DP. Each box clips its B change to clip_norm and "
        "adds its share of discrete Gaussian noise so that every committable sum carries noise "
        "multiplier z; the aggregator reports the fleet epsilon. 0: off.",
    )
    clip_norm: float = Field(
        default=0.05,
        gt=0,
        le=1000,
        description="Version 2 with noise: L2 bound of a box's B change (the sensitivity).",
    )
    dp_delta: float = Field(
        default=1e-5,
        gt=0,
        lt=1,
        description="Version 2 with noise: the delta of the fleet epsilon the aggregator reports.",
    )

    @model_validator(mode="after")
    def _fits_one_message(self) -> "SecureAggregationSettings":
        if self.version == 2 and self.min_reporting > MAX_PLUS_KEY_SET:
            raise ValueError(f"min_reporting above {MAX_PLUS_KEY_SET} boxes per SecAgg+ round")
        return self
