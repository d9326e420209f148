"""Differential privacy of a box's updates: clipping, local Gaussian noise, epsilon budget."""

from typing import Self

from pydantic import Field, model_validator

from appliance.config.base import Section


class PrivacySettings(Section):
    """Box-level DP on every update the box sends (see docs/privacy.md for what it covers)."""

    enabled: bool = Field(
        default=False,
        description="Clip each update to `clip_norm` and add Gaussian noise before it leaves "
        "the box; track epsilon and refuse rounds beyond `epsilon_budget`.",
    )
    clip_norm: float = Field(
        default=1.0,
        gt=0,
        le=1e6,
        description="S: L2 bound on one round's whole update (all tensors together; B only "
        "under frozen A).",
    )
    noise_multiplier: float = Field(
        default=1.0,
        ge=0.1,
        le=1000,
        description="z: the noise std is z * S per coordinate.",
    )
    target_delta: float = Field(
        default=1e-5,
        gt=0,
        lt=0.1,
        description="delta of the (epsilon, delta) guarantee; well below 1 / number of boxes.",
    )
    epsilon_budget: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="Total epsilon this box may spend over its life; it declines a round that "
        "would go beyond it.",
    )

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.enabled and self.epsilon_budget > 100:
            raise ValueError("an epsilon_budget above 100 promises nothing; lower it")
        return self
