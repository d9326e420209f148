"""How the aggregator runs federated rounds."""

from typing import Self

from pydantic import Field, model_validator

from appliance.config.base import Section


class RoundSettings(Section):
    """When a round closes and what an update may weigh."""

    min_updates: int = Field(
        default=2, ge=1, description="A round closes as soon as this many updates arrived."
    )
    min_updates_at_deadline: int = Field(
        default=1,
        ge=1,
        description="At the deadline a round is aggregated with at least this many updates; "
        "with fewer it is extended once, then abandoned.",
    )
    deadline_s: int = Field(
        default=3600, ge=10, description="Time from a round's announcement to its deadline."
    )
    reannounce_s: float = Field(
        default=60.0,
        gt=0,
        description="The open round is announced again at this interval, for boxes that "
        "connected after it opened (boxes ignore announcements they already acted on).",
    )
    max_update_mb: int = Field(
        default=64, ge=1, le=4096, description="Updates larger than this are rejected."
    )

    @model_validator(mode="after")
    def _deadline_minimum_fits(self) -> Self:
        if self.min_updates_at_deadline > self.min_updates:
            raise ValueError(
                f"min_updates_at_deadline ({self.min_updates_at_deadline}) must not exceed "
                f"min_updates ({self.min_updates})"
            )
        return self
