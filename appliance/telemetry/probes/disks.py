"""Disks probe: free space of the state directory's filesystem, and SMART/NVMe health.

SMART needs root, so the daemon never runs `smartctl` itself: a privileged oneshot
(`firmware_scripts/smart-collect`) writes one `smartctl --json` result per device under
`/run/appliance/smart/`, and this unprivileged probe decodes them. smartctl's exit status is
a bit mask and carries the verdict (bit 3: disk failing; bit 4: a prefail attribute at or
below its threshold), so it is decoded bit by bit.
"""

import argparse
import json
import os
from pathlib import Path
from typing import Any

from appliance.telemetry.probes.sysfs import Tree, probe_main

SMART_DIR = "/run/appliance/smart"
DEFAULT_STATE_DIR = "/var/lib/appliance"
EXIT_STATUS_BITS = {
    0: "command_line_error",
    1: "device_open_failed",
    2: "smart_command_failed",
    3: "disk_failing",
    4: "prefail_at_threshold",
    5: "attribute_was_at_threshold",
    6: "error_log_has_errors",
    7: "self_test_log_has_errors",
}
_ATA_COUNTERS = {5: "reallocated_sectors", 197: "pending_sectors", 198: "offline_uncorrectable"}


def read(root: Path, state_dir: str = DEFAULT_STATE_DIR) -> dict[str, Any]:
    tree = Tree(root)
    return {
        "probe": "disks",
        "filesystem": _filesystem(tree, tree.path(state_dir), state_dir),
        "smart": [
            device
            for result in tree.children(tree.path(SMART_DIR), "*.json")
            if (device := _smart(tree, result)) is not None
        ],
        "errors": tree.errors,
    }


def _filesystem(tree: Tree, path: Path, shown: str) -> dict[str, Any] | None:
    try:
        stat = os.statvfs(path)
    except OSError as exc:
        tree.note(path, f"statvfs failed: {exc.strerror}")
        return None
    size = stat.f_blocks * stat.f_frsize
    free = stat.f_bavail * stat.f_frsize  # what the unprivileged daemon can still use
    return {
        "path": shown,
        "size_bytes": size,
        "free_bytes": free,
        "free_percent": round(100.0 * free / size, 3) if size else None,
        "inodes_free_percent": round(100.0 * stat.f_favail / stat.f_files, 3)
        if stat.f_files
        else None,
    }


def decode_exit_status(status: int) -> list[str]:
    """Names of the bits set in a smartctl exit status (see smartctl(8), RETURN VALUES)."""
    return [name for bit, name in EXIT_STATUS_BITS.items() if status & (1 << bit)]


def _smart(tree: Tree, path: Path) -> dict[str, Any] | None:
    raw = tree.text(path)
    if raw is None:
        return None
    try:
        result = json.loads(raw)
    except ValueError as exc:
        tree.note(path, f"not smartctl JSON: {exc}")
        return None
    if not isinstance(result, dict) or not isinstance(result.get("smartctl"), dict):
        tree.note(path, "not smartctl JSON: no 'smartctl' object")
        return None
    status = result["smartctl"].get("exit_status")
    if not isinstance(status, int) or not 0 <= status <= 255:
        tree.note(path, f"smartctl exit_status missing or invalid: {status!r}")
        return None
    flags = decode_exit_status(status)
    device = _dict(result.get("device"))
    nvme = _dict(result.get("nvme_smart_health_information_log"))
    passed = _dict(result.get("smart_status")).get("passed")
    return {
        "device": str(device.get("name") or path.stem),
        "protocol": _text(device.get("protocol")),
        "model": _text(result.get("model_name")),
        "serial": _text(result.get("serial_number")),
        "exit_status": status,
        "exit_flags": flags,
        "passed": passed if isinstance(passed, bool) else None,
        "failing": "disk_failing" in flags or passed is False,
        "prefail": "prefail_at_threshold" in flags or bool(_failed_attributes(result)),
        "failed_attributes": _failed_attributes(result),
        "temperature_c": _int(_dict(result.get("temperature")).get("current")),
        "power_on_hours": _int(_dict(result.get("power_on_time")).get("hours")),
        "collected_at": _int(_dict(result.get("local_time")).get("time_t")),
        "nvme": {
            "critical_warning": _int(nvme.get("critical_warning")),
            "available_spare_percent": _int(nvme.get("available_spare")),
            "available_spare_threshold_percent": _int(nvme.get("available_spare_threshold")),
            "percentage_used": _int(nvme.get("percentage_used")),
            "media_errors": _int(nvme.get("media_errors")),
        }
        if nvme
        else None,
        "ata": _ata_counters(result),
    }


def _failed_attributes(result: dict[str, Any]) -> list[str]:
    """ATA attributes smartctl marks `when_failed` ("now" or "past")."""
    table = _dict(result.get("ata_smart_attributes")).get("table")
    failed = []
    for attribute in table if isinstance(table, list) else []:
        if isinstance(attribute, dict) and attribute.get("when_failed") == "now":
            failed.append(str(attribute.get("name") or attribute.get("id")))
    return failed


def _ata_counters(result: dict[str, Any]) -> dict[str, int] | None:
    table = _dict(result.get("ata_smart_attributes")).get("table")
    if not isinstance(table, list):
        return None
    counters = {}
    for attribute in table:
        if isinstance(attribute, dict) and attribute.get("id") in _ATA_COUNTERS:
            value = _int(_dict(attribute.get("raw")).get("value"))
            if value is not None:
                counters[_ATA_COUNTERS[attribute["id"]]] = value
    return counters


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="the daemon's state directory (absolute, inside ROOT) whose filesystem is measured",
    )


def main() -> int:
    return probe_main("disks", lambda args: read(args.root, args.state_dir), _arguments)
