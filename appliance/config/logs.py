"""How much the daemon writes to its log (journald under systemd)."""

from typing import Literal

from pydantic import Field

from appliance.config.base import Section


class LoggingSettings(Section):
    """Log verbosity for the daemon and for llama.cpp's own messages."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level written to the log."
    )
    llama_level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning",
        description="Lowest level of llama.cpp's own messages passed on to the log.",
    )
