"""Power probe: RAPL energy counters from the powercap class.

`energy_uj` is a wrapping counter of microjoules since boot (wrapping at
`max_energy_range_uj`); power is its rate, computed by whoever keeps two readings. Since
kernel 5.10 the counter is readable by root only (CVE-2020-8694): then it is listed in
`errors` and the zone still reports its name.
"""

from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main


def read(root: Path) -> dict[str, Any]:
    tree = Tree(root)
    zones = []
    for zone in tree.children(tree.path("/sys/class/powercap"), "intel-rapl:*"):
        zones.append(
            {
                "zone": zone.name,
                "name": tree.text(zone / "name") or zone.name,
                "energy_uj": tree.integer(zone / "energy_uj"),
                "max_energy_range_uj": tree.integer(zone / "max_energy_range_uj"),
            }
        )
    return {"probe": "power", "rapl": zones, "errors": tree.errors}


def main() -> int:
    return probe_main("power", lambda args: read(args.root))
