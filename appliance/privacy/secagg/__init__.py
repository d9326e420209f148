"""Secure aggregation: the aggregator learns only the sum of the boxes' updates.

Version 2, SecAgg+ (Bell et al. 2020; `plus_*`, `shamir`, `graph`, `sealing`, `ring`,
`vault`, `noise`): Shamir shares of every box's self-mask seed and mask key among its
neighbours, so a round survives dropouts at any phase; a signed consistency check before any
reveal; round state persisted encrypted; a 16-bit ring where the sum cannot wrap; distributed
DP noise. Version 1 (`participant`, `collector`, `session`): pairwise masks (Bonawitz et al.
2017 without Shamir shares); survivors reveal the seeds they share with dropped boxes.
See docs/privacy.md, "Secure aggregation".
"""

from appliance.privacy.secagg.collector import Collector, Phase, UnmaskedSum, secure_fedavg
from appliance.privacy.secagg.encoding import (
    Encoded,
    FixedPoint,
    Layout,
    layout_of,
    layout_size,
    max_participants,
)
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import (
    KeySet,
    MaskedHeader,
    MaskKey,
    PeerSeed,
    ReportingSet,
    SeedReveal,
    pack_masked,
    unpack_masked,
)
from appliance.privacy.secagg.participant import Participant

__all__ = [
    "Collector",
    "Encoded",
    "FixedPoint",
    "KeySet",
    "Layout",
    "MaskKey",
    "MaskedHeader",
    "Participant",
    "PeerSeed",
    "Phase",
    "ReportingSet",
    "SecAggError",
    "SeedReveal",
    "UnmaskedSum",
    "layout_of",
    "layout_size",
    "max_participants",
    "pack_masked",
    "secure_fedavg",
    "unpack_masked",
]
