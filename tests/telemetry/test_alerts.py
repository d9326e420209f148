"""Alert rules over the metrics of each recorded tree; firing and resolving."""

from pathlib import Path

from appliance.telemetry.alerts import (
    Alert,
    AlertTracker,
    Thresholds,
    evaluate,
    offline_alert,
)
from appliance.telemetry.metrics import probe_metrics
from appliance.telemetry.runner import ProbeRunner
from appliance.telemetry.store import AlertRow, as_number
from tests.telemetry.trees import (
    EDAC_ERRORS,
    HEALTHY,
    MISSING_SENSORS,
    NVME_CRITICAL,
    OVER_TEMPERATURE,
    SMART_FAILING,
)

LIMITS = Thresholds()


def _values(tree: Path) -> dict[str, float | str | None]:
    """The metrics a host would hold for a box whose root is `tree`."""
    results = ProbeRunner(root=tree).run_all(["thermal", "memory", "disks"])
    return {
        name: value if isinstance(value, str) else as_number(value)
        for name, (_, value) in probe_metrics(results).items()
    }


def _keys(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(a.rule, a.subject, a.severity) for a in alerts]


def test_healthy_and_missing_sensor_boxes_raise_nothing() -> None:
    assert evaluate(_values(HEALTHY), LIMITS) == []
    assert evaluate(_values(MISSING_SENSORS), LIMITS) == []


def test_device_reported_temperature_limits() -> None:
    alerts = evaluate(_values(OVER_TEMPERATURE), LIMITS)
    assert _keys(alerts) == [
        ("temperature_critical", "hwmon0 coretemp/Core 0", "critical"),  # 99 °C, alarm set
        ("temperature_critical", "hwmon0 coretemp/Package id 0", "critical"),
        ("temperature_critical", "hwmon1 nvme/Composite", "critical"),
    ]
    assert alerts[0].message == "hwmon0 coretemp/Core 0: critical alarm"
    assert (
        alerts[1].message == "hwmon0 coretemp/Package id 0: 101 °C at or above its critical 100 °C"
    )


def test_smart_nvme_and_edac_rules() -> None:
    assert _keys(evaluate(_values(SMART_FAILING), LIMITS)) == [
        ("smart_failing", "sda", "critical"),
        ("smart_prefail", "sda", "warning"),
    ]
    assert _keys(evaluate(_values(NVME_CRITICAL), LIMITS)) == [
        ("nvme_critical_warning", "nvme0", "critical"),
        ("nvme_spare_low", "nvme0", "critical"),
        ("smart_failing", "nvme0", "critical"),
    ]
    (edac,) = evaluate(_values(EDAC_ERRORS), LIMITS)
    assert (edac.rule, edac.subject, edac.message) == (
        "edac_uncorrectable",
        "mc1",
        "mc1: 2 uncorrectable memory errors",
    )  # mc0's 12 corrected errors are not an alert


def test_filesystem_memory_and_probe_thresholds() -> None:
    def alerts(**values: float | str | None) -> list[tuple[str, str, str]]:
        names = {"free": "Disk/State/Free Percent", "mem": "Memory/Used Percent"}
        return _keys(evaluate({names.get(k, k): v for k, v in values.items()}, LIMITS))

    assert alerts(free=5.0, mem=90.0) == []
    assert alerts(free=4.9) == [("filesystem_free", "state", "warning")]
    assert alerts(free=2.9) == [("filesystem_free", "state", "critical")]
    assert alerts(mem=90.5) == [("memory_high", "memory", "warning")]
    assert alerts(**{"Probe/disks/OK": 0.0, "Probe/disks/Errors": "timed out"}) == [
        ("probe_failed", "disks", "warning")
    ]
    assert alerts(free=None, mem="garbage") == []


def test_offline_alert_after_the_configured_time() -> None:
    limits = Thresholds(offline_alert_after_s=300)
    assert offline_alert(None, None, 10_000_000, limits) is None
    assert offline_alert(0, "NDEATH", 299_000, limits) is None
    alert = offline_alert(0, "NDEATH", 300_000, limits)
    assert alert is not None and alert.message == "offline for 300 s (NDEATH)"


def test_tracker_fires_once_resolves_and_escalates() -> None:
    tracker = AlertTracker()
    warm = Alert("filesystem_free", "state", "warning", "4% free")
    full = Alert("filesystem_free", "state", "critical", "2% free")
    hot = Alert("temperature_critical", "cpu", "critical", "hot")
    assert [(e.state, e.alert) for e in tracker.update("b", [warm, hot], 1)] == [
        ("firing", warm),
        ("firing", hot),
    ]
    assert tracker.update("b", [warm, hot], 2) == []  # still firing: no new event
    events = tracker.update("b", [full], 3)
    assert [(e.state, e.alert.rule, e.alert.severity) for e in events] == [
        ("resolved", "temperature_critical", "critical"),
        ("resolved", "filesystem_free", "warning"),
        ("firing", "filesystem_free", "critical"),
    ]
    assert [(e.state, e.alert) for e in tracker.update("b", [], 4)] == [("resolved", full)]
    assert tracker.active("b") == []


def test_tracker_restored_from_the_store_does_not_fire_again() -> None:
    row = AlertRow("b", "smart_failing", "sda", "critical", "disk sda: SMART failing", 1, None)
    tracker = AlertTracker([row])
    again = Alert("smart_failing", "sda", "critical", "disk sda: SMART failing")
    assert tracker.update("b", [again], 2) == []
    assert [e.state for e in tracker.update("b", [], 3)] == ["resolved"]
