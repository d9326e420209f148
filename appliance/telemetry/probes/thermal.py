"""Thermal probe: hwmon temperature sensors, thermal zones and cooling devices.

hwmon reports millidegrees Celsius in `temp<N>_input`, with the device's own limits in
`temp<N>_max` / `temp<N>_crit` and a latched `temp<N>_crit_alarm`. Alerts prefer these
device-reported limits over a fleet-wide guess, so they are passed on as read.
"""

import re
from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main

_TEMP_INPUT = re.compile(r"temp(\d+)_input")


def read(root: Path) -> dict[str, Any]:
    tree = Tree(root)
    return {
        "probe": "thermal",
        "hwmon": [_chip(tree, chip) for chip in tree.children(tree.path("/sys/class/hwmon"), "*")],
        "zones": _zones(tree),
        "cooling": _cooling(tree),
        "errors": tree.errors,
    }


def _chip(tree: Tree, chip: Path) -> dict[str, Any]:
    sensors = []
    for input_file in tree.children(chip, "temp*_input"):
        match = _TEMP_INPUT.fullmatch(input_file.name)
        if match is None:
            continue
        prefix = f"temp{match.group(1)}"
        sensors.append(
            {
                "sensor": prefix,
                "label": tree.text(chip / f"{prefix}_label") or prefix,
                "input_c": _celsius(tree.integer(input_file)),
                "max_c": _celsius(tree.integer(chip / f"{prefix}_max")),
                "crit_c": _celsius(tree.integer(chip / f"{prefix}_crit")),
                "crit_alarm": _flag(tree.integer(chip / f"{prefix}_crit_alarm")),
            }
        )
    return {"chip": chip.name, "name": tree.text(chip / "name") or chip.name, "sensors": sensors}


def _zones(tree: Tree) -> list[dict[str, Any]]:
    zones = []
    for zone in tree.children(tree.path("/sys/class/thermal"), "thermal_zone*"):
        zones.append(
            {
                "zone": zone.name,
                "type": tree.text(zone / "type") or zone.name,
                "temp_c": _celsius(tree.integer(zone / "temp")),
            }
        )
    return zones


def _cooling(tree: Tree) -> list[dict[str, Any]]:
    devices = []
    for device in tree.children(tree.path("/sys/class/thermal"), "cooling_device*"):
        devices.append(
            {
                "device": device.name,
                "type": tree.text(device / "type") or device.name,
                "cur_state": tree.integer(device / "cur_state"),
                "max_state": tree.integer(device / "max_state"),
            }
        )
    return devices


def _celsius(millidegrees: int | None) -> float | None:
    return None if millidegrees is None else millidegrees / 1000.0


def _flag(value: int | None) -> bool | None:
    return None if value is None else value != 0


def main() -> int:
    return probe_main("thermal", lambda args: read(args.root))
