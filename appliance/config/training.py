"""How a box fine-tunes its LoRA adapter."""

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from appliance.config.base import Section
from appliance.config.lora import LoraSpec

WINDOW_QUANTUM_TOKENS = 256
"""llama.cpp pads a training context to a multiple of 256 tokens, and every training window
must fill the context exactly, so window lengths are multiples of 256."""


class TrainingSettings(Section, LoraSpec):
    """LoRA hyper-parameters, resources of the trainer worker and precision of its base copy."""

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
    base_precision: Literal["same", "q8_0", "f32"] = Field(
        default="same",
        description="Precision the base model is trained in: `same` trains on the served file "
        "(as fast as a copy on the project's llama.cpp build, docs/benchmarks.md); `q8_0` or "
        "`f32` make a training copy once, cached in the state directory.",
    )
    threads: int = Field(default=0, ge=0, le=1024, description="Training threads; 0 = all cores.")
    gpu_layers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Layers offloaded to a GPU while training, when llama.cpp was built with "
        "one (Vulkan, CUDA); 0 = CPU only. Ops the GPU backend lacks run on the CPU.",
    )
    nice: int = Field(default=10, ge=0, le=19, description="Nice level of the trainer worker.")
    memory_limit_mb: int = Field(
        default=2048,
        ge=128,
        description="The trainer refuses to start when its estimate exceeds this.",
    )

    @field_validator("window_tokens")
    @classmethod
    def _window_quantum(cls, value: int) -> int:
        if value <= 0 or value % WINDOW_QUANTUM_TOKENS or value > 8192:
            raise ValueError(
                f"must be a positive multiple of {WINDOW_QUANTUM_TOKENS} up to 8192 (got {value})"
            )
        return value

    @model_validator(mode="after")
    def _stride_within_window(self) -> Self:
        if self.stride_tokens > self.window_tokens:
            raise ValueError(
                f"stride_tokens ({self.stride_tokens}) must not exceed window_tokens "
                f"({self.window_tokens}): tokens between windows would never be trained on"
            )
        return self
