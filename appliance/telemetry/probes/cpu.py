"""CPU probe: load averages, current frequencies and thermal-throttle counters.

Throttle counters (`thermal_throttle/*_throttle_count`) only grow; a rising count while
training means the box is too hot for the work it is given.
"""

from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main


def read(root: Path) -> dict[str, Any]:
    tree = Tree(root)
    cpus = [
        cpu
        for cpu in tree.children(tree.path("/sys/devices/system/cpu"), "cpu[0-9]*")
        if cpu.name[3:].isdigit()
    ]
    freqs = [tree.integer(cpu / "cpufreq" / "scaling_cur_freq") for cpu in cpus]
    core = [tree.integer(cpu / "thermal_throttle" / "core_throttle_count") for cpu in cpus]
    package = [tree.integer(cpu / "thermal_throttle" / "package_throttle_count") for cpu in cpus]
    return {
        "probe": "cpu",
        **_loadavg(tree),
        "cpu_count": len(cpus),
        "freq_mhz": [khz / 1000.0 for khz in freqs if khz is not None],
        "core_throttle_count": _total(core),
        "package_throttle_count": _total(package),
        "errors": tree.errors,
    }


def _loadavg(tree: Tree) -> dict[str, float | None]:
    path = tree.path("/proc/loadavg")
    raw = tree.text(path)
    fields = raw.split() if raw else []
    try:
        one, five, fifteen = (float(value) for value in fields[:3])
    except ValueError:
        tree.note(path, f"not a load average line: {raw[:40]!r}" if raw else "empty")
        return {"load_1m": None, "load_5m": None, "load_15m": None}
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen}


def _total(counts: list[int | None]) -> int | None:
    present = [count for count in counts if count is not None]
    return sum(present) if present else None


def main() -> int:
    return probe_main("cpu", lambda args: read(args.root))
