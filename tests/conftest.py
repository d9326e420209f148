"""Shared fixtures: tiny GGUF models of each quantisation and the built-in model."""

from pathlib import Path

import pytest

from appliance.llm.builtin import builtin_model_path
from appliance.llm.tiny import TINY_QUANTS, TinyQuant, make_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[TinyQuant, Path]:
    """One tiny random llama GGUF per supported quantisation."""
    folder = tmp_path_factory.mktemp("tiny-models")
    return {quant: make_tiny_model(folder / f"tiny-{quant}.gguf", quant) for quant in TINY_QUANTS}


@pytest.fixture(scope="session")
def tiny_f32(tiny_models: dict[TinyQuant, Path]) -> Path:
    """The F32 tiny model."""
    return tiny_models["f32"]


@pytest.fixture(scope="session")
def builtin_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1; the set-up script installs it, so its absence fails."""
    return builtin_model_path()
