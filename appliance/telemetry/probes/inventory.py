"""Inventory probe: what this box is (DMI vendor/model/serial/BIOS, kernel, OS, CPU model).

DMI `product_serial` is readable by root only on most systems; an unprivileged daemon gets
it listed in `errors` and null, never a made-up value.
"""

from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main

_DMI = (
    "sys_vendor",
    "product_name",
    "product_serial",
    "board_vendor",
    "board_name",
    "bios_vendor",
    "bios_version",
    "bios_date",
)
_CPU_MODEL_KEYS = ("model name", "Model", "Hardware")  # x86, then ARM boards


def read(root: Path) -> dict[str, Any]:
    tree = Tree(root)
    dmi = tree.path("/sys/class/dmi/id")
    return {
        "probe": "inventory",
        "dmi": {key: tree.text(dmi / key) for key in _DMI},
        "kernel": tree.text(tree.path("/proc/sys/kernel/osrelease")),
        "os": _os_name(tree),
        "cpu_model": _cpu_model(tree),
        "errors": tree.errors,
    }


def _os_name(tree: Tree) -> str | None:
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        raw = tree.text(tree.path(candidate))
        if raw is None:
            continue
        fields = dict(line.partition("=")[::2] for line in raw.splitlines() if "=" in line)
        name = fields.get("PRETTY_NAME") or fields.get("NAME")
        return name.strip().strip('"') if name else None
    return None


def _cpu_model(tree: Tree) -> str | None:
    fields: dict[str, str] = {}
    for line in (tree.text(tree.path("/proc/cpuinfo")) or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return next((fields[key] for key in _CPU_MODEL_KEYS if fields.get(key)), None)


def main() -> int:
    return probe_main("inventory", lambda args: read(args.root))
