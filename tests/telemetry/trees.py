"""Recorded sysfs/procfs trees (node_exporter style) that the probes read as their root."""

from pathlib import Path

TREES = Path(__file__).parent / "trees"
HEALTHY = TREES / "healthy"
OVER_TEMPERATURE = TREES / "over_temperature"
SMART_FAILING = TREES / "smart_failing"
NVME_CRITICAL = TREES / "nvme_critical"
EDAC_ERRORS = TREES / "edac_errors"
MISSING_SENSORS = TREES / "missing_sensors"
UNREADABLE = TREES / "unreadable"
ALL = (HEALTHY, OVER_TEMPERATURE, SMART_FAILING, NVME_CRITICAL, EDAC_ERRORS, MISSING_SENSORS)
