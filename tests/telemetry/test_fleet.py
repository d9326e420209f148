"""`appliance fleet status` and `/metrics` for a three-box fleet, end to end.

Three health reporters (probes on recorded trees, real subprocesses) publish over a real
Mosquitto to the aggregator's fleet-health service; the CLI then reads its SQLite store.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import main
from appliance.telemetry.fleet_host import FleetHealthService
from appliance.telemetry.metrics import DaemonState
from appliance.telemetry.reporter import HealthReporter
from appliance.telemetry.store import FleetStore
from tests.support.mosquitto import Mosquitto, free_port
from tests.telemetry.configs import aggregator_config, edge_config
from tests.telemetry.trees import HEALTHY, OVER_TEMPERATURE, SMART_FAILING
from tests.transport.waiting import wait_for

NO_DISK_LIMITS = "[health.gate]\nmin_free_disk_percent = 0.0\nmin_free_disk_bytes = 0"
BOXES = {
    "box1": (HEALTHY, DaemonState(adapter_version="v3", training_state="training")),
    "box2": (OVER_TEMPERATURE, DaemonState(adapter_version="v3", training_state="paused")),
    "box3": (SMART_FAILING, DaemonState(adapter_version="v2", training_state="idle")),
}


def test_fleet_status_of_three_boxes(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    agg_path, agg = aggregator_config(
        tmp_path,
        broker.port,
        f"metrics_port = {port}\nfilesystem_warning_free_percent = 0.0\n"
        "filesystem_critical_free_percent = 0.0",
    )
    service = FleetHealthService(agg)
    service.start()
    reporters = []
    try:
        assert service.host.announced.wait(60)
        for node_id, (tree, state) in BOXES.items():
            _, config = edge_config(tmp_path, broker.port, node_id, tree, NO_DISK_LIMITS)
            reporter = HealthReporter(config, daemon_state=lambda state=state: state)
            reporters.append(reporter)
            reporter.node.start()
            reporter.run_once()
        store = FleetStore(agg.paths.state_dir / "fleet-health.sqlite", read_only=True)
        wait_for(
            lambda: (
                {row.node for row in store.nodes() if row.online} == set(BOXES)
                and {alert.node for alert in store.active_alerts()} == {"box2", "box3"}
            ),
            "three boxes online, alerts on box2 and box3",
        )
        gate = reporters[1].gate()
        assert not gate.allowed and "temperature 101.0 °C at or above 85.0 °C" in gate.reasons

        assert main(["fleet", "status", "--config", str(agg_path)]) == 0
        age, *table = capsys.readouterr().out.splitlines()
        assert age.startswith("data as of ") and age.endswith("; primary host scada running)")
        assert table[0].split() == [
            "BOX",
            "ONLINE",
            "LAST",
            "SEEN",
            "MAX",
            "TEMP",
            "DISK",
            "FREE",
            "TRAINING",
            "ADAPTER",
            "ALERTS",
        ]
        rows = {line.split()[0]: line for line in table[1:]}
        assert sorted(rows) == ["box1", "box2", "box3"]
        assert rows["box1"].split()[1] == "yes" and " s ago " in rows["box1"]
        assert "45.0 C" in rows["box1"] and " training " in rows["box1"]
        assert rows["box1"].rstrip().endswith("-")  # no alerts
        assert "101.0 C" in rows["box2"]
        assert "paused (gate: temperature 101.0 °C at or above 85.0 °C;" in rows["box2"]
        assert "critical temperature_critical hwmon0 coretemp/Package id 0" in rows["box2"]
        assert (
            "critical smart_failing sda" in rows["box3"]
            and "warning smart_prefail sda" in rows["box3"]
        )
        assert " v2 " in rows["box3"]

        assert main(["fleet", "status", "--config", str(agg_path), "--json"]) == 0
        check_json(json.loads(capsys.readouterr().out))

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        assert 'appliance_box_online{box="box2"} 1' in text
        assert (
            'appliance_health{box="box2",metric="Thermal/hwmon0 coretemp/Package id 0/'
            'Temperature C"} 101.0' in text
        )
        assert 'appliance_alert_active{box="box3",rule="smart_failing",subject="sda",' in text
        assert 'training_gate="open"' in text
    finally:
        for reporter in reporters:
            reporter.node.stop()
        service.stop()


def check_json(status: dict[str, Any]) -> None:
    """`fleet status --json` of the three live boxes: the same facts as the table."""
    assert status["host_alive"] is True and 0 <= status["data_age_s"] < 30
    boxes = {box["box"]: box for box in status["boxes"]}
    assert boxes["box1"]["online"] == "yes" and boxes["box1"]["alerts"] == []
    assert 0 <= boxes["box1"]["last_seen_age_s"] < 60
    assert boxes["box1"]["training_gate"] == "open"
    assert boxes["box2"]["max_temperature_c"] == 101.0
    assert boxes["box2"]["training_gate"].startswith("temperature 101.0 °C")
    assert boxes["box3"]["adapter_version"] == "v2"
    assert boxes["box3"]["disk_free_percent"] > 0


def test_fleet_status_needs_the_aggregator_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = aggregator_config(tmp_path, 1883)
    assert main(["fleet", "status", "--config", str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"appliance: error: no fleet health store at {config.paths.state_dir}/"
        "fleet-health.sqlite; has the aggregator run yet?"
    )
    edge_path, _ = edge_config(tmp_path, 1883, "box1", HEALTHY)
    assert main(["fleet", "status", "--config", str(edge_path)]) == 2
    assert "role: fleet status reads the aggregator's config" in capsys.readouterr().err


def test_metrics_endpoint_escapes_labels_and_serves_only_metrics(tmp_path: Path) -> None:
    from appliance.telemetry.prometheus import MetricsServer

    store = FleetStore(tmp_path / "fleet.sqlite")
    store.node_online("box1", 0, 1_000)
    store.record("box1", [('Thermal/odd "chip"\\x/Temperature C', 50.5, 1_000)])
    store.commit()
    server = MetricsServer(tmp_path / "fleet.sqlite", port=0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics") as response:
            text = response.read().decode()
        assert 'metric="Thermal/odd \\"chip\\"\\\\x/Temperature C"} 50.5' in text
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/")
    finally:
        server.stop()
        store.close()


MINUTE_MS = 60_000


def fleet_status_command(config: Path, *options: str) -> str:
    """The installed command line, as an operator runs it: a new process reading the file."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "fleet",
            "status",
            "--config",
            str(config),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_fleet_status_says_how_old_the_store_is_and_doubts_stale_boxes(tmp_path: Path) -> None:
    """A store written as a live host leaves it: box1 fresh, box2 silent for 20 min, box3
    gone with NDEATH, box4 expected but never seen. Then the same store 41 min later, as a
    killed host leaves it: nothing is `yes` any more."""
    path, config = aggregator_config(
        tmp_path, 1883, '[fleet]\nparticipants = ["box1", "box2", "box3", "box4"]'
    )
    now = int(time.time() * 1000)
    store = FleetStore(config.paths.state_dir / "fleet-health.sqlite")
    store.node_online("box1", 0, now - 5_000)
    store.node_online("box2", 0, now - 20 * MINUTE_MS)
    store.node_online("box3", 0, now - 30 * MINUTE_MS)
    store.node_offline("box3", "NDEATH", now - 29 * MINUTE_MS)
    store.host_heartbeat("scada", now, connected=True)
    store.commit()

    age, _, *lines = fleet_status_command(path).splitlines()
    assert age.endswith(" s ago; primary host scada running)"), age
    rows = {line.split()[0]: line for line in lines}
    assert rows["box1"].split()[1] == "yes" and " s ago " in rows["box1"]
    assert "unknown (no message for over 11 min)  20 min ago" in rows["box2"]
    assert "no (NDEATH)" in rows["box3"]
    assert "unknown (never seen)" in rows["box4"]

    store.host_heartbeat("scada", now - 41 * MINUTE_MS, connected=True)
    store.close()
    stale = datetime.fromtimestamp((now - 41 * MINUTE_MS) / 1000, UTC)
    age, _, *lines = fleet_status_command(path).splitlines()
    assert age == (
        f"data as of {stale:%Y-%m-%d %H:%M:%S} UTC (41 min ago; "
        "the aggregator's primary host is not running or not writing)"
    )
    rows = {line.split()[0]: line for line in lines}
    assert "unknown (last known: yes)" in rows["box1"]
    assert "unknown (last known: no, NDEATH)" in rows["box3"]
    status = json.loads(fleet_status_command(path, "--json"))
    assert status["host_alive"] is False and 41 * 60 <= status["data_age_s"] < 42 * 60
    online = {box["box"]: (box["online"], box["last_known_online"]) for box in status["boxes"]}
    assert online == {
        "box1": ("unknown", True),
        "box2": ("unknown", True),
        "box3": ("unknown", False),
        "box4": ("unknown", None),
    }


def test_fleet_status_shows_unknown_once_the_primary_host_stops(
    tmp_path: Path, broker: Mosquitto, edge_nodes: Any
) -> None:
    """Real broker, host and box: `yes` while the host runs; after a clean stop the host
    says so in the store and the box is `unknown`, at once, not after a timeout."""
    from tests.telemetry.test_edge_node import VALUES

    path, config = aggregator_config(tmp_path, broker.port, "metrics_port = 0")
    service = FleetHealthService(config)
    service.start()
    try:
        assert service.host.announced.wait(60)
        edge_nodes("box1").update(VALUES)
        reader = FleetStore(config.paths.state_dir / "fleet-health.sqlite", read_only=True)
        wait_for(lambda: [row.online for row in reader.nodes()] == [True], "box1 online")
        wait_for(lambda: (host := reader.host()) is not None and host.connected, "connected")
        age, _, box1 = fleet_status_command(path).splitlines()
        assert age.endswith("primary host scada running)") and box1.split()[1] == "yes"
    finally:
        service.stop()
    age, _, box1 = fleet_status_command(path).splitlines()
    assert age.endswith("; primary host scada stopped)")
    assert "unknown (last known: yes)" in box1
