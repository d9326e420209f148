"""The aggregator's fleet-health side: primary host, store and `/metrics`, from the config.

The aggregator daemon embeds `FleetHealthService`; `python -m appliance.telemetry.fleet_host
--config aggregator.toml` runs it alone (for the benchmark, and for tests that kill it).
"""

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from appliance.config.loading import load_config
from appliance.config.roles import AggregatorConfig
from appliance.errors import ConfigError
from appliance.system.logs import setup_logging
from appliance.telemetry.alerts import Thresholds
from appliance.telemetry.fleet import store_path
from appliance.telemetry.host import PrimaryHost, Retention
from appliance.telemetry.prometheus import MetricsServer
from appliance.telemetry.store import FleetStore


class FleetHealthService:
    """Primary host plus the optional Prometheus endpoint, configured from `[health]`."""

    def __init__(self, config: AggregatorConfig) -> None:
        health = config.health
        self.host = PrimaryHost(
            config.mqtt,
            health.host_id or config.identity.node_id,
            config.identity.plant_id,
            FleetStore(store_path(config)),
            thresholds=Thresholds(
                filesystem_warning_free_percent=health.filesystem_warning_free_percent,
                filesystem_critical_free_percent=health.filesystem_critical_free_percent,
                memory_warning_used_percent=health.memory_warning_used_percent,
                offline_alert_after_s=health.offline_alert_after_s,
            ),
            offline_after_s=health.offline_after_s,
            retention=Retention(
                raw_keep_ms=health.raw_retention_h * 3600 * 1000,
                bucket_ms=health.rollup_bucket_s * 1000,
                rollup_keep_ms=health.rollup_retention_days * 86400 * 1000,
            ),
            max_payload_bytes=health.max_payload_bytes,
        )
        self.metrics = (
            MetricsServer(store_path(config), health.metrics_listen, health.metrics_port)
            if health.metrics_port
            else None
        )

    def start(self) -> None:
        self.host.start()
        if self.metrics is not None:
            self.metrics.start()

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self.host.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Watch the fleet's health (Sparkplug host).")
    parser.add_argument("--config", required=True, help="aggregator config file (TOML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging("debug" if args.verbose else "info")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not isinstance(config, AggregatorConfig):
        print(f'appliance: error: {args.config}: role: must be "aggregator"', file=sys.stderr)
        return 2
    service = FleetHealthService(config)
    stopped = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service.start()
    stopped.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
