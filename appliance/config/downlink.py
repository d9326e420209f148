"""How the aggregator sends a new global adapter down to the boxes."""

from typing import Literal

from pydantic import Field

from appliance.config.base import Section


class DownlinkSettings(Section):
    """Global adapters as deltas to the version a box has, or as whole files."""

    mode: Literal["delta", "full"] = Field(
        default="delta",
        description="`delta`: the new global travels as the int8 step of B from the round's "
        "base version (A is frozen; the aggregator defines the new global as exactly what the "
        "boxes rebuild), a whole file only to a box that lacks that version or asks for it; "
        "`full`: every box gets the whole fp32 file (and the global is not quantized).",
    )
    block: int = Field(default=64, ge=8, le=4096, description="Values per int8 scale in a delta.")
