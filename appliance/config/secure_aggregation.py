"""Secure aggregation of a fleet's updates (pairwise masking; appliance/privacy/secagg/).

The numbers here fix the round's integer encoding: every box codes B with the shared step
`value_bound / 127` and weights its codes by min(sample count, `max_weight`), so that at most
floor((2^31 - 1) / (127 * max_weight)) boxes fit in one unwrapped 32-bit sum (the same bound
as `appliance.privacy.secagg.encoding.max_participants`; a test keeps the two equal).
"""

from pydantic import Field

from appliance.config.base import Section

MAX_KEY_SET = 200
"""Boxes per round whose signed mask keys fit one 64 KiB control message (secagg.MAX_KEYS)."""


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
    reveal_wait_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="After the commit, wait this long for the reporting boxes' seed reveals; "
        "then the round fails (no global adapter) and the next one starts.",
    )
