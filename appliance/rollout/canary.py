"""Which boxes see a new global adapter first.

Named canaries are used as configured. A fraction picks the same boxes every round (ordered
by a hash of the box id, not by name, so "box-1" is not always the guinea pig), which keeps a
canary's "current adapter" comparable from one candidate to the next.
"""

import hashlib
import math
from collections.abc import Sequence

from appliance.config.rollout import RolloutSettings


def pick_canaries(participants: Sequence[str], settings: RolloutSettings) -> tuple[str, ...]:
    """The canaries for a candidate sent to `participants` (empty: no staged rollout)."""
    if settings.canaries:
        return tuple(settings.canaries)
    if settings.canary_fraction <= 0 or not participants:
        return ()
    count = max(1, math.ceil(settings.canary_fraction * len(participants)))
    ranked = sorted(participants, key=lambda box: hashlib.sha256(box.encode()).hexdigest())
    return tuple(sorted(ranked[:count]))
