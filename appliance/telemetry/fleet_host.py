"""The aggregator's fleet-health side: primary host, store and `/metrics`, from the config.

The aggregator daemon embeds `FleetHealthService`; `python -m appliance.telemetry.fleet_host
--config aggregator.toml` runs it alone (for the benchmark, and for tests that kill it).
"""

from collections.abc import Sequence

from appliance.config.roles import AggregatorConfig
from appliance.system.daemon import run_part_alone
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
    """`python -m appliance.telemetry.fleet_host --config FILE`."""
    return run_part_alone(
        argv, "Watch the fleet's health (Sparkplug host).", AggregatorConfig, FleetHealthService
    )


if __name__ == "__main__":
    raise SystemExit(main())
