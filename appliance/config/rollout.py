"""Staged rollout (aggregator) and federated evaluation (box).

The aggregator first sends a new global adapter to canary boxes only; they evaluate it on
their held-out data against the adapter they serve and report back, and the adapter reaches
the other boxes only when no canary got worse by more than the configured tolerance. With no
canaries configured (the default) every new global adapter goes to every box at once.
"""

import re
from typing import Self

from pydantic import Field, field_validator, model_validator

from appliance.config.base import Section, TopicSafeId


class RolloutSettings(Section):
    """Which boxes see a new global adapter first, and what counts as a regression."""

    canaries: list[TopicSafeId] = Field(
        default=[],
        description="Boxes that receive every new global adapter first. Empty together with "
        "`canary_fraction = 0`: no staged rollout (every box gets it at once).",
    )
    canary_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Used when `canaries` is empty: this share of a round's participants "
        "(rounded up, at least one) is picked as canaries, the same boxes every time "
        "(ordered by a hash of their id). 0 = off.",
    )
    max_nll_increase: float = Field(
        default=0.0,
        ge=0,
        description="A canary regresses when the candidate's held-out NLL exceeds that of "
        "the adapter it serves by more than this (nats per token).",
    )
    max_task_drop: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="A canary regresses when the candidate's task metric (exact-match rate "
        "on prompt/completion records) is lower than its current adapter's by more than this.",
    )
    canary_timeout_s: float = Field(
        default=1800.0,
        ge=1,
        description="Decide this long after sending a candidate even if not every canary "
        "reported: on the reports that arrived, and reject when none did.",
    )

    @model_validator(mode="after")
    def _unique_canaries(self) -> Self:
        if len(set(self.canaries)) != len(self.canaries):
            raise ValueError(f"canaries lists a box twice (got {self.canaries})")
        return self

    @property
    def enabled(self) -> bool:
        """Whether new global adapters go to canaries first."""
        return bool(self.canaries) or self.canary_fraction > 0


class EvaluationSettings(Section):
    """How a box scores a global adapter on its held-out records."""

    label_pattern: str | None = Field(
        default=None,
        description="Regular expression with one group: the task metric compares the group "
        "found in the reference completion with the one found in the generated text (e.g. "
        '"means (.+?)\\\\." for a cause). Absent: the completion\'s first line must match '
        "exactly.",
    )
    max_task_records: int = Field(
        default=32,
        ge=0,
        le=10_000,
        description="Held-out prompt/completion records scored by generation per adapter "
        "(0 = no task metric, NLL only).",
    )
    max_new_tokens: int = Field(
        default=48, ge=1, le=1024, description="Tokens generated per prompt for the task metric."
    )
    solo_baseline: bool = Field(
        default=False,
        description="Also train a local-only adapter each round, continuing the box's own "
        "previous one and never the global, and report it beside the global (shows what "
        "federating buys; doubles training time; never sent).",
    )

    @field_validator("label_pattern")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups != 1:
            raise ValueError(f"needs exactly one group (has {compiled.groups})")
        return value
