"""Memory probe: /proc/meminfo, pressure stall information (PSI) and EDAC error counts.

`MemAvailable` (not `MemFree`) is what the kernel can hand out without swapping. PSI says
how much time tasks stalled waiting for memory, which a percentage cannot. EDAC counts
corrected (`ce_count`) and uncorrected (`ue_count`) ECC errors per memory controller; any
uncorrected error means data may already have been corrupted.
"""

from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main

_MEMINFO_KEYS = {
    "MemTotal": "total_bytes",
    "MemAvailable": "available_bytes",
    "SwapTotal": "swap_total_bytes",
    "SwapFree": "swap_free_bytes",
}
_PSI_RESOURCES = ("memory", "io", "cpu")


def read(root: Path) -> dict[str, Any]:
    tree = Tree(root)
    meminfo = _meminfo(tree)
    total, available = meminfo.get("total_bytes"), meminfo.get("available_bytes")
    used = None
    if total and available is not None:
        used = round(100.0 * (total - available) / total, 2)
    return {
        "probe": "memory",
        **{key: meminfo.get(key) for key in _MEMINFO_KEYS.values()},
        "used_percent": used,
        "pressure": {
            resource: psi
            for resource in _PSI_RESOURCES
            if (psi := _psi(tree, tree.path(f"/proc/pressure/{resource}"))) is not None
        },
        "edac": _edac(tree),
        "errors": tree.errors,
    }


def _meminfo(tree: Tree) -> dict[str, int]:
    path = tree.path("/proc/meminfo")
    values: dict[str, int] = {}
    for line in (tree.text(path) or "").splitlines():
        key, _, rest = line.partition(":")
        if key not in _MEMINFO_KEYS:
            continue
        fields = rest.split()
        if not fields or not fields[0].isdigit():
            tree.note(path, f"bad {key} line: {line[:40]!r}")
            continue
        scale = 1024 if fields[1:] == ["kB"] else 1
        values[_MEMINFO_KEYS[key]] = int(fields[0]) * scale
    return values


def _psi(tree: Tree, path: Path) -> dict[str, float] | None:
    """`some avg10=0.12 avg60=... total=...` (and `full ...`): the avg10/avg60 percentages."""
    raw = tree.text(path)
    if raw is None:
        return None
    psi: dict[str, float] = {}
    for line in raw.splitlines():
        kind, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in ("avg10", "avg60"):
                try:
                    psi[f"{kind}_{key}"] = float(value)
                except ValueError:
                    tree.note(path, f"bad value {pair!r}")
    return psi


def _edac(tree: Tree) -> list[dict[str, Any]]:
    controllers = []
    for mc in tree.children(tree.path("/sys/devices/system/edac/mc"), "mc[0-9]*"):
        controllers.append(
            {
                "controller": mc.name,
                "correctable": tree.integer(mc / "ce_count"),
                "uncorrectable": tree.integer(mc / "ue_count"),
            }
        )
    return controllers


def main() -> int:
    return probe_main("memory", lambda args: read(args.root))
