"""The probe runner: timeouts, bad exits and garbage are reported; other probes carry on."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.telemetry.probes import smart_collect
from appliance.telemetry.readings import DisksReading, ThermalReading
from appliance.telemetry.runner import FIRMWARE_SCRIPTS, PROBES, ProbeRunner
from tests.telemetry.trees import HEALTHY, SMART_FAILING

BAD_PROBES = {
    "garbage": "print('temperature is fine, trust me')",
    "nan": 'print(\'{"probe": "power", "rapl": [{"zone": "z", "name": "n", '
    '"energy_uj": NaN, "max_energy_range_uj": 1}], "errors": []}\')',
    "wrongtype": 'print(\'{"probe": "cpu", "load_1m": "high"}\')',
    "liar": 'print(\'{"probe": "power", "rapl": [], "errors": []}\')',
    "crash": "import sys; sys.stderr.write('Traceback: boom\\n'); sys.exit(3)",
    "hang": "import time; time.sleep(600)",
    "flood": "import sys; sys.stdout.write('x' * (2 << 20))",
    "hot": 'print(\'{"probe": "thermal", "hwmon": [], "zones": [{"zone": "z", '
    '"type": "t", "temp_c": 5000}], "cooling": [], "errors": []}\')',
}


def test_all_shipped_probes_against_the_healthy_tree() -> None:
    results = ProbeRunner(root=HEALTHY).run_all()
    assert list(results) == list(PROBES)
    assert all(result.error is None for result in results.values()), results
    assert isinstance(results["disks"].reading, DisksReading)
    assert results["disks"].reading.filesystem is not None


def test_bad_probes_are_reported_and_good_ones_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, body in BAD_PROBES.items():
        (tmp_path / f"probe-{name}").write_text(body + "\n")
    shutil.copy(FIRMWARE_SCRIPTS / "probe-thermal", tmp_path / "probe-thermal")
    runner = ProbeRunner(scripts_dir=tmp_path, root=HEALTHY, timeout_s=3)
    with caplog.at_level(logging.WARNING, "appliance.telemetry.runner"):
        results = runner.run_all(["thermal", "missing", *BAD_PROBES])
    assert isinstance(results["thermal"].reading, ThermalReading)
    errors = {name: result.error for name, result in results.items() if name != "thermal"}
    assert all(results[name].reading is None for name in errors)
    assert errors["missing"] == f"no probe script {tmp_path / 'probe-missing'}"
    assert errors["garbage"].startswith("invalid output (1 problems): output: Invalid JSON")
    assert errors["nan"].startswith("invalid output") and "rapl.0.energy_uj" in errors["nan"]
    assert "cpu.load_1m" in errors["wrongtype"]
    assert errors["liar"] == "printed a 'power' reading"
    assert errors["crash"] == "exited with status 3: Traceback: boom"
    assert errors["hang"] == "timed out after 3 s (killed)"
    assert errors["flood"] == f"printed {2 << 20} bytes (limit {1 << 20})"
    assert "zones.0.temp_c: Input should be less than or equal to 1000" in errors["hot"]
    logged = {record.getMessage().split(":")[0] for record in caplog.records}
    assert logged == {f"probe {name} failed" for name in errors}


def _fake_smartctl(tmp_path: Path, results: dict[str, Path]) -> Path:
    """A recorded smartctl: `--scan-open` lists `results`, a device read prints its file."""
    script = tmp_path / "smartctl"
    devices = [{"name": name, "type": "sat"} for name in results]
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"results = {json.dumps({name: str(path) for name, path in results.items()})}\n"
        "if '--scan-open' in sys.argv:\n"
        f"    print(json.dumps({{'devices': {devices!r}}}))\n"
        "    sys.exit(0)\n"
        "path = results.get(sys.argv[-1])\n"
        "if path is None:\n"
        "    print('not json'); sys.exit(2)\n"
        "text = open(path).read()\n"
        "print(text)\n"
        "sys.exit(json.loads(text)['smartctl']['exit_status'])\n"
    )
    script.chmod(0o755)
    return script


def test_smart_collect_writes_results_the_disks_probe_decodes(tmp_path: Path) -> None:
    recorded = SMART_FAILING / "run/appliance/smart"
    smartctl = _fake_smartctl(
        tmp_path, {"/dev/sda": recorded / "sda.json", "/dev/nvme0": recorded / "nvme0.json"}
    )
    root = tmp_path / "root"
    stale = root / "run/appliance/smart/sdz.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    assert smart_collect.collect(root, str(smartctl)) == []
    out = root / "run/appliance/smart"
    assert sorted(path.name for path in out.iterdir()) == ["nvme0.json", "sda.json"]
    assert json.loads((out / "sda.json").read_text()) == json.loads(
        (recorded / "sda.json").read_text()
    )
    (root / "var/lib/appliance").mkdir(parents=True)
    reading = ProbeRunner(root=root).run("disks").reading
    assert isinstance(reading, DisksReading)
    assert {d.device: d.failing for d in reading.smart} == {"/dev/nvme0": False, "/dev/sda": True}


def test_smart_collect_script_reports_unusable_devices(tmp_path: Path) -> None:
    smartctl = _fake_smartctl(tmp_path, {"/dev/sdb": tmp_path / "absent.json"})
    done = subprocess.run(
        [
            sys.executable,
            str(FIRMWARE_SCRIPTS / "smart-collect"),
            "--root",
            str(tmp_path / "root"),
            "--smartctl",
            str(smartctl),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "/dev/sdb: exit 1, output is not JSON" in done.stderr
    assert list((tmp_path / "root/run/appliance/smart").iterdir()) == []
