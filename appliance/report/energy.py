"""Energy a box used in a time window, from the health readings the aggregator stores.

RAPL zones report cumulative energy counters (`Power/<zone>/Energy J`); only top-level zones
(`intel-rapl:0`, not its sub-zones `intel-rapl:0:0`, which the package already includes) are
summed, and a counter that went down (wrapped or reset) contributes nothing for that step.
NVML reports power (`GPU/<i>/Power W`), integrated over time with the trapezoid rule. Both
need at least two readings inside the window; otherwise the energy is not reported (None),
never guessed.
"""

import itertools
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Energy:
    """Joules in a window, and what measured them."""

    joules: float
    source: str


def _top_level_rapl(metric: str) -> bool:
    zone = metric.split("/")[1].split(" ", maxsplit=1)[0]
    return zone.startswith("intel-rapl:") and zone.count(":") == 1


def window_energy(
    db: sqlite3.Connection, node: str, start_ms: int, end_ms: int
) -> Energy | None:
    """RAPL plus NVML energy of `node` between two instants (None: not reported)."""
    rows = db.execute(
        "SELECT metric, ts_ms, value FROM samples WHERE node = ? AND ts_ms BETWEEN ? AND ? AND "
        "((metric LIKE 'Power/%/Energy J') OR (metric LIKE 'GPU/%/Power W')) ORDER BY ts_ms",
        (node, start_ms, end_ms),
    ).fetchall()
    series: dict[str, list[tuple[int, float]]] = {}
    for metric, ts, value in rows:
        series.setdefault(metric, []).append((int(ts), float(value)))
    total, sources = 0.0, set()
    for metric, points in series.items():
        if len(points) < 2:
            continue
        if metric.startswith("Power/") and _top_level_rapl(metric):
            total += sum(max(b[1] - a[1], 0.0) for a, b in itertools.pairwise(points))
            sources.add("RAPL")
        elif metric.startswith("GPU/"):
            total += sum(
                (b[0] - a[0]) / 1000 * (a[1] + b[1]) / 2
                for a, b in itertools.pairwise(points)
            )
            sources.add("NVML")
    return Energy(total, "+".join(sorted(sources))) if sources else None
