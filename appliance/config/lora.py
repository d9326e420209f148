"""The shape of a LoRA adapter: one model shared by the config, the round plan and the
initial global adapter."""

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_TARGETS = ("attn_q", "attn_v")
"""The query and value projections: `targets`' default, which on a model that fuses Q/K/V
means the fused matrix (appliance/llm/architectures.py, resolve_targets)."""


class LoraSpec(BaseModel):
    """The shape of a LoRA adapter, defined once: the `[training]` section holds these fields,
    a round's plan carries them to every box (`TrainingPlan.lora`), and the initial global
    adapter is derived from them, under the same names everywhere."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False, validate_default=True
    )

    rank: int = Field(default=8, description="LoRA rank r: a power of two between 1 and 256.")
    alpha: float = Field(
        default=16.0, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha / r."
    )
    targets: list[str] = Field(
        default=list(DEFAULT_TARGETS),
        min_length=1,
        description="Linear weights that get adapters, by their GGUF name inside a block "
        "(`attn_q`, `attn_k`, `attn_v`, `attn_output`, `ffn_gate`, `ffn_up`, `ffn_down`).",
    )
    top_layers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Put adapters only on the top N blocks (0 = every block). ggml computes "
        "no backward pass below the lowest adapted block, so training is faster and needs "
        "less memory, but learns less per step.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for adapter initialisation and shuffling.")
    freeze_a: bool = Field(
        default=True,
        description="Derive A from (seed, tensor name, shape) and train only B, so A never "
        "travels and boxes' updates add up exactly.",
    )

    @field_validator("rank")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not (1 <= value <= 256 and value & (value - 1) == 0):
            raise ValueError(f"must be a power of two between 1 and 256 (got {value})")
        return value

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"not a weight name inside a block (got {name!r})")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a target twice (got {value})")
        return value

    def lora_spec(self) -> "LoraSpec":
        """Just the LoRA shape (what a round's plan carries), without any other settings."""
        return LoraSpec.model_validate(self.model_dump(include=set(LoraSpec.model_fields)))
