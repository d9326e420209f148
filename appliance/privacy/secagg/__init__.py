"""Secure aggregation (pairwise masking, Bonawitz et al. 2017, without Shamir shares).

Boxes agree pairwise seeds with X25519 (keys signed with their identity keys and relayed by
the aggregator), add ChaCha20-expanded masks to fixed-point integer updates modulo 2^32 and
send them; the masks cancel in the sum. After the aggregator commits who reported, survivors
reveal the seeds they share with dropped boxes, and the aggregator learns only the sum.
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
