"""Every probe against recorded trees: healthy, hot, failing disks, ECC errors, gaps, junk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.telemetry.probes import cpu, disks, gpu, inventory, memory, power, thermal
from appliance.telemetry.readings import (
    READING,
    CpuReading,
    DisksReading,
    InventoryReading,
    MemoryReading,
    PowerReading,
    ThermalReading,
)
from tests.telemetry.trees import (
    ALL,
    EDAC_ERRORS,
    HEALTHY,
    MISSING_SENSORS,
    NVME_CRITICAL,
    OVER_TEMPERATURE,
    SMART_FAILING,
    UNREADABLE,
)

STATE = "/var/lib/appliance"
SCRIPTS = Path(__file__).parents[2] / "firmware_scripts"


def _thermal(root: Path) -> ThermalReading:
    return READING.validate_python(thermal.read(root))  # type: ignore[return-value]


def _disks(root: Path) -> DisksReading:
    return READING.validate_python(disks.read(root, STATE))  # type: ignore[return-value]


def _memory(root: Path) -> MemoryReading:
    return READING.validate_python(memory.read(root))  # type: ignore[return-value]


def test_healthy_thermal_reads_hwmon_zones_and_cooling() -> None:
    reading = _thermal(HEALTHY)
    assert [chip.name for chip in reading.hwmon] == ["coretemp", "nvme"]
    package = reading.hwmon[0].sensors[0]
    assert (package.label, package.input_c, package.max_c, package.crit_c, package.crit_alarm) == (
        "Package id 0",
        45.0,
        80.0,
        100.0,
        False,
    )
    assert reading.hwmon[1].sensors[0].crit_alarm is None  # nvme has no crit_alarm file
    assert [(z.type, z.temp_c) for z in reading.zones] == [("x86_pkg_temp", 45.0), ("acpitz", 27.8)]
    assert [(c.type, c.cur_state, c.max_state) for c in reading.cooling] == [
        ("Processor", 0, 10),
        ("intel_powerclamp", 0, 100),
    ]
    assert reading.errors == []


def test_over_temperature_shows_values_above_device_crit_and_throttling() -> None:
    reading = _thermal(OVER_TEMPERATURE)
    package = reading.hwmon[0].sensors[0]
    assert package.input_c is not None and package.crit_c is not None
    assert package.input_c >= package.crit_c
    assert package.crit_alarm is True
    assert max(reading.temperatures_c()) == 101.0
    assert reading.cooling[0].cur_state == reading.cooling[0].max_state == 10
    cpu_reading = READING.validate_python(cpu.read(OVER_TEMPERATURE))
    assert isinstance(cpu_reading, CpuReading)
    assert cpu_reading.core_throttle_count == 4 * 37
    assert cpu_reading.package_throttle_count == 4 * 74
    assert cpu_reading.freq_mhz == [800.0] * 4


def test_healthy_cpu_memory_power_inventory() -> None:
    cpu_reading = READING.validate_python(cpu.read(HEALTHY))
    assert isinstance(cpu_reading, CpuReading)
    assert (cpu_reading.load_1m, cpu_reading.load_5m, cpu_reading.load_15m) == (0.52, 0.58, 0.59)
    assert cpu_reading.cpu_count == 4
    assert cpu_reading.freq_mhz == [2800.0, 2700.0, 2600.0, 2500.0]
    assert cpu_reading.core_throttle_count == 0

    mem = _memory(HEALTHY)
    assert mem.total_bytes == 16262564 * 1024
    assert mem.available_bytes == 12196923 * 1024
    assert mem.used_percent == 25.0
    assert mem.pressure["memory"] == {
        "some_avg10": 0.0,
        "some_avg60": 0.0,
        "full_avg10": 0.0,
        "full_avg60": 0.0,
    }
    assert mem.pressure["cpu"]["some_avg10"] == 1.5
    assert [(c.controller, c.correctable, c.uncorrectable) for c in mem.edac] == [("mc0", 0, 0)]

    power_reading = READING.validate_python(power.read(HEALTHY))
    assert isinstance(power_reading, PowerReading)
    assert [(z.zone, z.name, z.energy_uj) for z in power_reading.rapl] == [
        ("intel-rapl:0", "package-0", 73295417412),
        ("intel-rapl:0:0", "core", 31564792123),
    ]

    inv = READING.validate_python(inventory.read(HEALTHY))
    assert isinstance(inv, InventoryReading)
    assert (inv.dmi.sys_vendor, inv.dmi.product_name, inv.dmi.product_serial) == (
        "OnLogic",
        "Karbon 410",
        "K410-2311-0042",
    )
    assert inv.dmi.bios_version == "Z01-0003A048"
    assert inv.kernel == "6.1.0-27-amd64"
    assert inv.os == "Debian GNU/Linux 12 (bookworm)"
    assert inv.cpu_model == "Intel(R) Core(TM) i7-1185GRE @ 2.80GHz"


def test_healthy_disks_measure_state_dir_and_decode_smart() -> None:
    reading = _disks(HEALTHY)
    fs = reading.filesystem
    assert fs is not None and fs.path == STATE
    expected = os.statvfs(HEALTHY / STATE.lstrip("/"))
    assert fs.size_bytes == expected.f_blocks * expected.f_frsize
    assert fs.free_percent is not None and 0 < fs.free_percent <= 100
    by_device = {device.device: device for device in reading.smart}
    assert sorted(by_device) == ["/dev/nvme0", "/dev/sda"]
    sda = by_device["/dev/sda"]
    assert (sda.failing, sda.prefail, sda.exit_flags, sda.passed) == (False, False, [], True)
    assert sda.model == "Samsung SSD 870 EVO 500GB"
    assert sda.ata == {"reallocated_sectors": 0, "pending_sectors": 0}
    nvme = by_device["/dev/nvme0"]
    assert nvme.nvme is not None and nvme.nvme.critical_warning == 0
    assert nvme.temperature_c == 38


def test_failing_smart_decodes_exit_bits_and_failed_attributes() -> None:
    sda = {d.device: d for d in _disks(SMART_FAILING).smart}["/dev/sda"]
    assert sda.exit_status == 4 | 8 | 16 | 64
    assert sda.exit_flags == [
        "smart_command_failed",
        "disk_failing",
        "prefail_at_threshold",
        "error_log_has_errors",
    ]
    assert sda.failing and sda.prefail and sda.passed is False
    assert sda.failed_attributes == ["Reallocated_Sector_Ct"]
    assert sda.ata == {"reallocated_sectors": 1840, "pending_sectors": 96}


def test_nvme_critical_warning_and_spare_below_threshold() -> None:
    nvme = {d.device: d for d in _disks(NVME_CRITICAL).smart}["/dev/nvme0"]
    assert nvme.nvme is not None
    assert nvme.nvme.critical_warning == 1
    assert nvme.nvme.available_spare_percent == 5
    assert nvme.nvme.available_spare_threshold_percent == 10
    assert nvme.nvme.media_errors == 12
    assert nvme.failing and nvme.exit_flags == ["disk_failing"]


def test_edac_errors_per_controller() -> None:
    mem = _memory(EDAC_ERRORS)
    assert [(c.controller, c.correctable, c.uncorrectable) for c in mem.edac] == [
        ("mc0", 12, 0),
        ("mc1", 3, 2),
    ]


def test_missing_sensors_are_absent_not_errors() -> None:
    reading = _thermal(MISSING_SENSORS)
    assert (reading.hwmon, reading.zones, reading.cooling, reading.errors) == ([], [], [], [])
    mem = _memory(MISSING_SENSORS)
    assert (mem.edac, mem.pressure, mem.swap_total_bytes, mem.errors) == ([], {}, None, [])
    assert mem.used_percent == 24.99
    d = _disks(MISSING_SENSORS)
    assert d.smart == [] and d.errors == [] and d.filesystem is not None
    p = READING.validate_python(power.read(MISSING_SENSORS))
    assert isinstance(p, PowerReading) and p.rapl == [] and p.errors == []
    inv = READING.validate_python(inventory.read(MISSING_SENSORS))
    assert isinstance(inv, InventoryReading)
    assert inv.dmi.sys_vendor is None and inv.os is None and inv.errors == []
    c = READING.validate_python(cpu.read(MISSING_SENSORS))
    assert isinstance(c, CpuReading) and c.freq_mhz == [] and c.core_throttle_count is None


def test_unreadable_files_are_named_and_the_rest_is_still_read() -> None:
    hot = _thermal(UNREADABLE)
    assert hot.errors == [
        "/sys/class/hwmon/hwmon0/temp1_input: Is a directory",
        "/sys/class/thermal/thermal_zone1/temp: not an integer: 'hot'",
    ]
    assert hot.hwmon[0].sensors[0].input_c is None
    assert hot.hwmon[0].sensors[1].input_c == 43.0  # the next sensor is still read
    c = READING.validate_python(cpu.read(UNREADABLE))
    assert isinstance(c, CpuReading) and c.load_1m is None and c.cpu_count == 4
    assert c.errors[0].startswith("/proc/loadavg: not a load average line")
    mem = _memory(UNREADABLE)
    assert mem.total_bytes is None and mem.used_percent is None
    assert mem.errors == [
        "/proc/meminfo: Is a directory",
        "/sys/devices/system/edac/mc/mc0/ue_count: Is a directory",
    ]
    assert mem.edac[0].correctable == 0 and mem.edac[0].uncorrectable is None
    d = _disks(UNREADABLE)
    assert d.smart == [] and d.filesystem is not None
    assert d.errors[0] == "/run/appliance/smart/nvme0.json: Is a directory"
    assert d.errors[1].startswith("/run/appliance/smart/sda.json: not smartctl JSON")
    p = READING.validate_python(power.read(UNREADABLE))
    assert isinstance(p, PowerReading)
    assert p.rapl[0].energy_uj is None and p.rapl[1].energy_uj == 31564792123
    inv = READING.validate_python(inventory.read(UNREADABLE))
    assert isinstance(inv, InventoryReading)
    assert inv.dmi.product_serial is None and inv.dmi.sys_vendor == "OnLogic"
    assert inv.errors == ["/sys/class/dmi/id/product_serial: Is a directory"]


def test_missing_state_dir_is_an_error_of_the_disks_probe(tmp_path: Path) -> None:
    reading = _disks(tmp_path)
    assert reading.filesystem is None
    assert reading.errors == ["/var/lib/appliance: statvfs failed: No such file or directory"]


def test_exit_status_bits_decode_by_name() -> None:
    assert disks.decode_exit_status(0) == []
    assert disks.decode_exit_status(255) == list(disks.EXIT_STATUS_BITS.values())
    assert disks.decode_exit_status(1 << 5) == ["attribute_was_at_threshold"]


def test_gpu_without_driver_is_absent_not_an_error() -> None:
    reading = READING.validate_python(gpu.read(Path("/")))
    if reading.present:  # type: ignore[union-attr]
        pytest.skip("this machine has an NVIDIA driver; the device check covers it")
    assert reading.model_dump(exclude_defaults=True) == {
        "probe": "gpu",
        "present": False,
        "reason": "NVML Shared Library Not Found",
    }


@pytest.mark.parametrize("tree", ALL, ids=lambda tree: tree.name)
def test_scripts_print_one_valid_json_object_per_tree(tree: Path) -> None:
    for name in ("thermal", "cpu", "memory", "disks", "power", "inventory"):
        script = SCRIPTS / f"probe-{name}"
        assert os.access(script, os.X_OK)
        assert script.read_text().startswith("#!/usr/bin/env python3\n")
        done = subprocess.run(
            [sys.executable, str(script), "--root", str(tree)],
            capture_output=True,
            check=True,
        )
        assert done.stdout.count(b"\n") == 1
        reading = READING.validate_json(done.stdout)
        assert reading.probe == name
        assert json.loads(done.stdout)["errors"] == []
