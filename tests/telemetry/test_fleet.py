"""`appliance fleet status` and `/metrics` for a three-box fleet, end to end.

Three health reporters (probes on recorded trees, real subprocesses) publish over a real
Mosquitto to the aggregator's fleet-health service; the CLI then reads its SQLite store.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

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
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == [
            "BOX",
            "ONLINE",
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
        assert "yes" in rows["box1"] and "45.0 C" in rows["box1"] and " training " in rows["box1"]
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
        boxes = {box["box"]: box for box in json.loads(capsys.readouterr().out)["boxes"]}
        assert boxes["box1"]["online"] is True and boxes["box1"]["alerts"] == []
        assert boxes["box1"]["training_gate"] == "open"
        assert boxes["box2"]["max_temperature_c"] == 101.0
        assert boxes["box2"]["training_gate"].startswith("temperature 101.0 °C")
        assert boxes["box3"]["adapter_version"] == "v2"
        assert boxes["box3"]["disk_free_percent"] > 0

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
