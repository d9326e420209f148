"""SMART collection, run as root by a oneshot: one `smartctl --json` result per device.

The daemon stays unprivileged (a hardened unit cannot even see the disks), so this job runs
`smartctl --scan-open` and then, for each device, `smartctl --json --info --health
--attributes --nocheck=standby`, and writes the JSON atomically (temporary file, then
rename) under `<root>/run/appliance/smart/<device>.json` for the `disks` probe. A device
that vanished has its old result removed, so a pulled disk does not look healthy forever.
smartctl's non-zero exit statuses are verdicts, not failures: its output is kept as is.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.telemetry.probes.disks import SMART_DIR

SMARTCTL_TIMEOUT_S = 60
_READ_ARGS = ("--json", "--info", "--health", "--attributes", "--nocheck=standby")


def collect(root: Path, smartctl: str) -> list[str]:
    """Write a result for every device smartctl finds; return one message per problem."""
    out_dir = root / SMART_DIR.lstrip("/")
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    scan = _run([smartctl, "--scan-open", "--json"], problems)
    devices = scan.get("devices", []) if scan else []
    written: set[str] = set()
    for device in devices if isinstance(devices, list) else []:
        name, kind = device.get("name"), device.get("type")
        if not isinstance(name, str) or not name.startswith("/dev/"):
            problems.append(f"scan returned an unusable device entry: {device!r}")
            continue
        args = [smartctl, *_READ_ARGS] + (["-d", kind] if isinstance(kind, str) else []) + [name]
        result = _run(args, problems)
        if result is None:
            continue
        file_name = name.removeprefix("/dev/").replace("/", "_") + ".json"
        _write_atomically(out_dir / file_name, result)
        written.add(file_name)
    for stale in out_dir.glob("*.json"):
        if stale.name not in written:
            stale.unlink()
    return problems


def _run(args: list[str], problems: list[str]) -> dict[str, Any] | None:
    try:
        done = subprocess.run(args, capture_output=True, timeout=SMARTCTL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        problems.append(f"{' '.join(args)}: {exc}")
        return None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        problems.append(f"{' '.join(args)}: exit {done.returncode}, output is not JSON")
        return None
    if not isinstance(result, dict):
        problems.append(f"{' '.join(args)}: output is not a JSON object")
        return None
    return result


def _write_atomically(path: Path, result: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def main() -> int:
    parser = argparse.ArgumentParser(description="Collect SMART results for the disks probe.")
    parser.add_argument("--root", type=Path, default=Path("/"), help="filesystem root to write")
    parser.add_argument("--smartctl", default="smartctl", help="smartctl executable")
    args = parser.parse_args()
    problems = collect(args.root, args.smartctl)
    for problem in problems:
        print(f"smart-collect: {problem}", file=sys.stderr)
    return 1 if problems else 0
