"""The built-in open model (SmolLM2-135M-Instruct Q4_1) through the same runtime."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.llm.runtime import Runtime
from tests.lora_helpers import attention_shapes, write_random_adapter
from tests.test_runtime import reference_nll

pytestmark = pytest.mark.slow
PROMPT = "The conveyor belt motor overheats because"


@pytest.fixture(scope="module")
def builtin() -> Iterator[Runtime]:
    with Runtime("builtin", context_tokens=256, threads=2) as rt:
        yield rt


def test_builtin_is_the_documented_open_model(builtin: Runtime) -> None:
    info = builtin.info
    assert (info.architecture, info.license, info.file_type) == ("llama", "apache-2.0", "Q4_1")
    assert (info.layers, info.embedding_length, info.vocab_size) == (30, 576, 49152)
    assert len(info.sha256) == 64


def test_builtin_generation_is_reproducible_with_a_seed(builtin: Runtime) -> None:
    first = builtin.generate(PROMPT, max_tokens=24, temperature=0.8, seed=11)
    again = builtin.generate(PROMPT, max_tokens=24, temperature=0.8, seed=11)
    assert first.text == again.text
    assert first.completion_tokens > 0


def test_builtin_stop_string(builtin: Runtime) -> None:
    text = builtin.generate(PROMPT, max_tokens=24, temperature=0.0).text
    stop = text.split()[2]
    stopped = builtin.generate(PROMPT, max_tokens=24, temperature=0.0, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[: text.index(stop)]


def test_builtin_nll_equals_a_reference_from_the_logits(builtin: Runtime) -> None:
    text = "Check the bearing temperature of pump P-101 before every shift."
    result = builtin.nll([text])
    assert np.isfinite(result.mean_nll)
    tokens = builtin.tokenize(text)
    assert result.total_nll == pytest.approx(
        reference_nll(Path(builtin.info.path), tokens), rel=1e-4
    )


def test_builtin_adapter_changes_output_and_clearing_restores_it(
    builtin: Runtime, tmp_path: Path
) -> None:
    shapes = attention_shapes(576, 192, 30)
    path = write_random_adapter(tmp_path / "a.gguf", shapes, seed=4, b_scale=0.05)
    tokens = builtin.tokenize(PROMPT)
    base = builtin.logits(tokens)[-1]
    adapter = builtin.load_adapter(path)
    try:
        builtin.set_adapters([(adapter, 1.0)])
        assert np.abs(builtin.logits(tokens)[-1] - base).max() > 1e-2
        builtin.clear_adapters()
        np.testing.assert_array_equal(builtin.logits(tokens)[-1], base)
    finally:
        builtin.clear_adapters()
        builtin.free_adapter(adapter)


def test_builtin_swapping_matches_loading_each_fresh(builtin: Runtime, tmp_path: Path) -> None:
    shapes = attention_shapes(576, 192, 30)
    paths = {
        s: write_random_adapter(tmp_path / f"{s}.gguf", shapes, seed=s, b_scale=0.05)
        for s in (1, 2)
    }
    tokens = builtin.tokenize(PROMPT)
    fresh = {}
    for seed, path in paths.items():
        with Runtime("builtin", context_tokens=256, threads=2) as other:
            other.set_adapters([(other.load_adapter(path), 1.0)])
            fresh[seed] = other.logits(tokens)[-1]
    loaded = {seed: builtin.load_adapter(path) for seed, path in paths.items()}
    try:
        for seed in (1, 2, 1, 2):
            builtin.set_adapters([(loaded[seed], 1.0)])
            np.testing.assert_allclose(builtin.logits(tokens)[-1], fresh[seed], rtol=0, atol=1e-4)
    finally:
        builtin.clear_adapters()
        for adapter in loaded.values():
            builtin.free_adapter(adapter)
