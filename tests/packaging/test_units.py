"""The systemd units as shipped: syntax (systemd-analyze verify, any stderr is a failure),
hardening score, and the settings the daemons rely on (notify, watchdog, state, limits)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.units import DAEMONS, ROOT, UNITS, UNITS_DIR, local_copy, settings, value

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (package systemd) missing"
)
MAX_EXPOSURE = 5.0


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_without_a_single_warning(name: str, tmp_path: Path) -> None:
    for other in UNITS:  # the timer needs its service beside it
        local_copy(other, tmp_path)
    done = verify(tmp_path / name)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_verify_catches_an_unknown_key(tmp_path: Path) -> None:
    """The check above can fail: systemd-analyze exits 0 on unknown keys, but warns."""
    unit = local_copy("appliance-edge.service", tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchDogSecs=10\n"))
    done = verify(unit)
    assert done.returncode == 0
    assert "Unknown key 'WatchDogSecs' in section [Service]" in done.stderr


@pytest.mark.parametrize("name", [u for u in UNITS if u.endswith(".service")])
def test_security_exposure_within_the_goal(name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS_DIR / name)],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("name", DAEMONS)
def test_daemon_units_use_notify_watchdog_and_the_appliance_user(name: str) -> None:
    role = name.removeprefix("appliance-").removesuffix(".service")
    assert value(name, "Type") == "notify"
    assert value(name, "NotifyAccess") == "main"
    assert value(name, "ExecStart") == (
        f"/usr/bin/appliance {role} run --config /etc/appliance/{role}.toml"
    )
    assert value(name, "ConditionPathExists") == f"/etc/appliance/{role}.toml"
    assert value(name, "Restart") == "on-failure"
    assert int(value(name, "WatchdogSec")) >= 60
    assert (value(name, "User"), value(name, "Group")) == ("appliance", "appliance")
    assert value(name, "StateDirectory") == "appliance"
    assert value(name, "ConfigurationDirectory") == "appliance"
    assert value(name, "ExecReload") == "/bin/kill -HUP $MAINPID"
    for key in ("Nice", "CPUWeight", "MemoryHigh", "MemoryMax"):
        value(name, key)
    # Traps seen: these hide the disks/GPUs and /proc/meminfo from the probes.
    keys = {(k, v) for _, k, v in settings(name)}
    assert ("PrivateDevices", "yes") not in keys
    assert ("ProcSubset", "pid") not in keys


def test_edge_stops_within_its_timeout() -> None:
    """Stopping: up to 120 s for the trainer's step boundary, then the outbox flush."""
    from appliance.system.shutdown import FLUSH_TIMEOUT_S

    assert int(value("appliance-edge.service", "TimeoutStopSec")) > 120 + FLUSH_TIMEOUT_S


def test_smart_collection_runs_as_root_into_run_appliance() -> None:
    name = "appliance-smart.service"
    assert value(name, "Type") == "oneshot"
    assert "User" not in {k for _, k, _ in settings(name)}
    assert value(name, "RuntimeDirectory") == "appliance/smart"
    assert value(name, "RuntimeDirectoryPreserve") == "yes"
    script = value(name, "ExecStart").split()[-1]
    assert script == "/usr/lib/appliance/firmware_scripts/smart-collect"
    assert (ROOT / "firmware_scripts" / "smart-collect").is_file()
    assert value("appliance-smart.timer", "OnUnitActiveSec")
    assert value("appliance-smart.timer", "WantedBy") == "timers.target"
