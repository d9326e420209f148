"""How a box fine-tunes its LoRA adapter."""

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from appliance.config.base import Section

WINDOW_QUANTUM_TOKENS = 256
"""llama.cpp pads a training context to a multiple of 256 tokens, and every training window
must fill the context exactly, so window lengths are multiples of 256."""


DEFAULT_TARGETS = ("attn_q", "attn_v")
"""The query and value projections: `targets`' default, which on a model that fuses Q/K/V
means the fused matrix (appliance/llm/architectures.py, resolve_targets)."""


class TrainingSettings(Section):
    """LoRA hyper-parameters, resources of the trainer worker and precision of its base copy."""

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
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="Optimizer.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0, description="Initial learning rate.")
    lr_decay: Literal["none", "linear"] = Field(
        default="none", description="`linear` decays the learning rate to zero over the run."
    )
    epochs: int = Field(default=1, ge=1, le=1000, description="Passes over the training data.")
    max_steps: int = Field(
        default=0, ge=0, description="Stop after this many optimizer steps; 0 = no limit."
    )
    window_tokens: int = Field(
        default=256,
        description="Tokens per training window: a multiple of 256 (llama.cpp pads training "
        "contexts to 256), at most 8192.",
    )
    stride_tokens: int = Field(
        default=0,
        ge=0,
        description="Distance between the starts of two windows; 0 = `window_tokens` (no overlap).",
    )
    validation_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Share of the box's records kept out of training for evaluation.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for adapter initialisation and shuffling.")
    freeze_a: bool = Field(
        default=True,
        description="Derive A from (seed, tensor name, shape) and train only B, so A never "
        "travels and boxes' updates add up exactly.",
    )
    base_precision: Literal["same", "q8_0", "f32"] = Field(
        default="same",
        description="Precision the base model is trained in: `same` trains on the served file "
        "(as fast as a copy on the project's llama.cpp build, docs/benchmarks.md); `q8_0` or "
        "`f32` make a training copy once, cached in the state directory.",
    )
    threads: int = Field(default=0, ge=0, le=1024, description="Training threads; 0 = all cores.")
    nice: int = Field(default=10, ge=0, le=19, description="Nice level of the trainer worker.")
    memory_limit_mb: int = Field(
        default=2048,
        ge=128,
        description="The trainer refuses to start when its estimate exceeds this.",
    )

    @field_validator("rank")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not (1 <= value <= 256 and value & (value - 1) == 0):
            raise ValueError(f"must be a power of two between 1 and 256 (got {value})")
        return value

    @field_validator("window_tokens")
    @classmethod
    def _window_quantum(cls, value: int) -> int:
        if value <= 0 or value % WINDOW_QUANTUM_TOKENS or value > 8192:
            raise ValueError(
                f"must be a positive multiple of {WINDOW_QUANTUM_TOKENS} up to 8192 (got {value})"
            )
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

    @model_validator(mode="after")
    def _stride_within_window(self) -> Self:
        if self.stride_tokens > self.window_tokens:
            raise ValueError(
                f"stride_tokens ({self.stride_tokens}) must not exceed window_tokens "
                f"({self.window_tokens}): tokens between windows would never be trained on"
            )
        return self
