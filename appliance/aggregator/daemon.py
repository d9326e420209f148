"""`appliance aggregator run`: the aggregator's daemon (foreground; systemd runs this)."""

from pathlib import Path

from appliance.aggregator.service import AggregatorService
from appliance.config import AggregatorConfig
from appliance.system.daemon import run_daemon


def run(config_path: Path) -> int:
    """Run until SIGTERM (round state is always on disk); 0 after a clean stop."""
    return run_daemon(
        config_path, AggregatorConfig, AggregatorService, "reading the base model and rounds"
    )
