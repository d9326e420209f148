"""Who masks with whom and who holds whose shares in a SecAgg+ round.

With `degree` = 0 (or at least n - 1) every box is every other box's neighbour (Bonawitz et
al. 2017). Otherwise (Bell et al. 2020) the boxes of the key set are placed on a ring in an
order fixed by the round (sha256 of round id and node id, so neither the aggregator nor a box
picks its neighbours) and each box is joined to the `degree // 2` boxes on either side (an
odd degree is rounded up): a symmetric graph in which every box has the same number of
neighbours. A box masks pairwise only with its neighbours and gives its Shamir shares to
them and to itself: its `holders`, m = neighbours + 1 of them, any t of which rebuild its
secrets.
"""

import hashlib
import math
from collections.abc import Sequence

MIN_THRESHOLD_FRACTION = 0.5
"""t must exceed half of the holders: two disjoint halves could otherwise each sign a
different survivor set and let an aggregator collect both secrets of one box."""


def neighbours(members: Sequence[str], degree: int, round_id: str) -> dict[str, tuple[str, ...]]:
    """Each member's neighbours (sorted; never itself) for this round."""
    if len(set(members)) != len(members):
        raise ValueError("a member appears twice")
    n = len(members)
    half = math.ceil(degree / 2)
    if degree <= 0 or 2 * half >= n - 1:
        return {m: tuple(sorted(o for o in members if o != m)) for m in members}
    ring = sorted(members, key=lambda m: hashlib.sha256(f"{round_id}\n{m}".encode()).digest())
    out = {}
    for position, member in enumerate(ring):
        around = {ring[(position + step) % n] for step in range(-half, half + 1) if step}
        out[member] = tuple(sorted(around))
    return out


def threshold_of(fraction: float, holders: int) -> int:
    """t for `holders` share holders: the smallest count above `fraction` of them (at least
    more than half, so t > m / 2 always)."""
    if not MIN_THRESHOLD_FRACTION < fraction <= 1.0:
        raise ValueError(f"threshold fraction {fraction} must be in (0.5, 1]")
    if holders < 1:
        raise ValueError("a box has at least itself as holder")
    t = math.ceil(fraction * holders - 1e-9)
    return max(t, holders // 2 + 1)
