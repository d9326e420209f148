"""Where a node keeps its state and, on a box, where plant data is dropped."""

from pathlib import Path

from pydantic import Field

from appliance.config.base import ConfigPath, Section


class PathSettings(Section):
    """Directories owned by the daemon (systemd's StateDirectory by default)."""

    state_dir: ConfigPath = Field(
        default=Path("/var/lib/appliance"),
        description="Databases, adapters, outbox and caches. Must be writable by the daemon.",
    )
    cache_dir: ConfigPath | None = Field(
        default=None,
        description="Edge only: training copies of the base model (see "
        "`training.base_precision`); absent = `<state_dir>/cache`. Daemons on one host may "
        "share it.",
    )
    spool_dir: ConfigPath = Field(
        default=Path("/var/lib/appliance/spool"),
        description="Edge only: plant data is dropped here as JSON Lines files "
        '(`{"text": ...}` or `{"prompt": ..., "completion": ...}`).',
    )
