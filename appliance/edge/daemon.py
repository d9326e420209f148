"""`appliance edge run`: the box's daemon (foreground; systemd runs this)."""

from pathlib import Path

from appliance.config import EdgeConfig
from appliance.edge.service import EdgeService
from appliance.system.daemon import run_daemon


def run(config_path: Path) -> int:
    """Run until SIGTERM (training stops at a step boundary); 0 after a clean stop."""
    return run_daemon(config_path, EdgeConfig, EdgeService, "loading the model")
