"""The llama.cpp runtime on tiny models of each quantisation: generation, NLL, adapters."""

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from appliance.errors import AdapterError
from appliance.llm.runtime import PromptError, Runtime
from appliance.llm.tiny import TINY_QUANTS, TinyQuant
from tests.lora_helpers import attention_shapes, write_random_adapter

TEXT = "the quick brown fox jumps over the lazy dog and the cat sat on the mat " * 2
PROMPT = "the quick brown"


@pytest.fixture(scope="module", params=TINY_QUANTS)
def runtime(
    request: pytest.FixtureRequest, tiny_models: dict[TinyQuant, Path]
) -> Iterator[Runtime]:
    with Runtime(tiny_models[request.param], context_tokens=256, threads=2) as rt:
        yield rt


@pytest.fixture(scope="module")
def adapters(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    shapes = attention_shapes(runtime.info.embedding_length, 32, runtime.info.layers)
    return {
        "one": write_random_adapter(folder / "one.gguf", shapes, seed=1),
        "two": write_random_adapter(folder / "two.gguf", shapes, seed=2),
        "zero_b": write_random_adapter(folder / "zero.gguf", shapes, seed=3, b_scale=0.0),
    }


def last_logits(runtime: Runtime, text: str = PROMPT) -> np.ndarray:
    return runtime.logits(runtime.tokenize(text))[-1]


def greedy(runtime: Runtime) -> str:
    return runtime.generate(PROMPT, max_tokens=12, temperature=0.0, seed=0).text


def reference_nll(model: Path, tokens: list[int]) -> float:
    """NLL from logits that llama-cpp-python computes on its own (logits_all), in numpy."""
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=256, logits_all=True, verbose=False)
    try:
        llm.eval(tokens)
        scores = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    peak = scores.max(axis=1, keepdims=True)
    log_probs = scores - peak - np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(tokens) - 1), tokens[1:]].sum())


def test_generation_is_reproducible_with_a_seed(runtime: Runtime) -> None:
    first = runtime.generate(PROMPT, max_tokens=16, temperature=1.0, seed=42)
    runtime.generate("something else entirely", max_tokens=4, seed=7)
    again = runtime.generate(PROMPT, max_tokens=16, temperature=1.0, seed=42)
    other = runtime.generate(PROMPT, max_tokens=16, temperature=1.0, seed=43)
    assert first.text == again.text
    assert first.completion_tokens > 0
    assert other.text != first.text


def test_stop_strings_end_generation(runtime: Runtime) -> None:
    seed, free = next(
        (seed, text)
        for seed in range(50)
        if len(text := runtime.generate(PROMPT, max_tokens=24, temperature=1.0, seed=seed).text) > 4
    )
    stop = free[2:4]
    stopped = runtime.generate(PROMPT, max_tokens=24, temperature=1.0, seed=seed, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_generation_samples_what_llama_cpp_python_samples(runtime: Runtime) -> None:
    """Same tokens as create_completion with the same sampler settings and seed, except that
    `max_tokens` is a hard limit where create_completion samples on to complete a character."""
    plain = llama_cpp.Llama(
        model_path=str(runtime.info.path),
        n_ctx=256,
        n_batch=256,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )
    exact = 0
    try:
        for seed, temperature in [(0, 0.0), *((seed, 1.0) for seed in range(6))]:
            ours = runtime.generate(PROMPT, max_tokens=16, temperature=temperature, seed=seed)
            theirs = plain.create_completion(
                PROMPT, max_tokens=16, temperature=temperature, top_p=0.95, seed=seed
            )
            text, tokens = theirs["choices"][0]["text"], theirs["usage"]["completion_tokens"]
            assert text.startswith(ours.text)
            assert ours.completion_tokens == min(tokens, 16)
            if tokens <= 16:
                assert (ours.text, ours.finish_reason) == (
                    text,
                    theirs["choices"][0]["finish_reason"],
                )
                exact += temperature > 0
    finally:
        plain.close()
    assert exact >= 2  # sampled runs compared in full, not only as prefixes


def test_without_a_seed_each_generation_draws_its_own(runtime: Runtime) -> None:
    texts = {runtime.generate(PROMPT, max_tokens=16, temperature=1.0).text for _ in range(3)}
    assert len(texts) == 3


def test_a_prompt_that_fills_the_context_is_refused(runtime: Runtime) -> None:
    with pytest.raises(PromptError, match="the context holds 256"):
        runtime.generate(TEXT * 20, max_tokens=4, seed=0)


def test_nll_is_finite_and_equals_a_reference_from_the_logits(runtime: Runtime) -> None:
    result = runtime.nll([TEXT])
    tokens = runtime.tokenize(TEXT)
    assert result.tokens == len(tokens) - 1
    assert np.isfinite(result.total_nll)
    assert result.total_nll == pytest.approx(
        reference_nll(Path(runtime.info.path), tokens), rel=1e-5
    )
    assert result.perplexity == pytest.approx(np.exp(result.mean_nll))


def test_nll_sums_over_texts(runtime: Runtime) -> None:
    both = runtime.nll([TEXT, PROMPT])
    assert both.total_nll == pytest.approx(
        runtime.nll([TEXT]).total_nll + runtime.nll([PROMPT]).total_nll
    )


def test_text_longer_than_the_context_is_scored_in_windows(runtime: Runtime) -> None:
    long_text = TEXT * 6
    tokens = runtime.tokenize(long_text)
    assert len(tokens) > runtime.context_tokens
    result = runtime.nll([long_text])
    windows = -(-(len(tokens) - 1) // runtime.context_tokens)
    assert result.tokens == len(tokens) - windows
    assert np.isfinite(result.mean_nll)


def test_adapter_with_nonzero_b_changes_the_output(
    runtime: Runtime, adapters: dict[str, Path]
) -> None:
    base = last_logits(runtime)
    adapter = runtime.load_adapter(adapters["one"])
    try:
        runtime.set_adapters([(adapter, 1.0)])
        assert np.abs(last_logits(runtime) - base).max() > 1e-2
        assert runtime.nll([TEXT]).total_nll != pytest.approx(runtime_base_nll(runtime, adapter))
    finally:
        runtime.clear_adapters()
        runtime.free_adapter(adapter)


def runtime_base_nll(runtime: Runtime, adapter: object) -> float:
    active = runtime.active_adapters
    runtime.clear_adapters()
    value = runtime.nll([TEXT]).total_nll
    runtime.set_adapters(active)
    return value


def test_zero_b_adapter_gives_the_base_output(runtime: Runtime, adapters: dict[str, Path]) -> None:
    base = last_logits(runtime)
    adapter = runtime.load_adapter(adapters["zero_b"])
    runtime.set_adapters([(adapter, 1.0)])
    try:
        np.testing.assert_array_equal(last_logits(runtime), base)
    finally:
        runtime.clear_adapters()
        runtime.free_adapter(adapter)


def test_scale_zero_and_clearing_restore_the_base_exactly(
    runtime: Runtime, adapters: dict[str, Path]
) -> None:
    base_logits, base_text = last_logits(runtime), greedy(runtime)
    adapter = runtime.load_adapter(adapters["one"])
    try:
        runtime.set_adapters([(adapter, 1.0)])
        changed = last_logits(runtime)
        runtime.set_adapters([(adapter, 0.0)])
        np.testing.assert_array_equal(last_logits(runtime), base_logits)
        runtime.set_adapters([(adapter, 1.0)])
        np.testing.assert_array_equal(last_logits(runtime), changed)
        runtime.clear_adapters()
        np.testing.assert_array_equal(last_logits(runtime), base_logits)
        assert greedy(runtime) == base_text
    finally:
        runtime.clear_adapters()
        runtime.free_adapter(adapter)


def test_swapping_repeatedly_matches_loading_each_fresh(
    runtime: Runtime, adapters: dict[str, Path]
) -> None:
    fresh = {}
    for name in ("one", "two"):
        with Runtime(runtime.info.path, context_tokens=256, threads=2) as other:
            other.set_adapters([(other.load_adapter(adapters[name]), 1.0)])
            fresh[name] = (last_logits(other), greedy(other))
    assert not np.array_equal(fresh["one"][0], fresh["two"][0])
    loaded = {name: runtime.load_adapter(adapters[name]) for name in ("one", "two")}
    try:
        for name in ("one", "two", "one", "two", "two", "one"):
            runtime.set_adapters([(loaded[name], 1.0)])
            np.testing.assert_allclose(last_logits(runtime), fresh[name][0], rtol=0, atol=1e-5)
            assert greedy(runtime) == fresh[name][1]
    finally:
        runtime.clear_adapters()
        for adapter in loaded.values():
            runtime.free_adapter(adapter)


def test_adapter_in_use_cannot_be_freed(runtime: Runtime, adapters: dict[str, Path]) -> None:
    adapter = runtime.load_adapter(adapters["one"])
    runtime.set_adapters([(adapter, 1.0)])
    with pytest.raises(AdapterError, match="adapter is active"):
        runtime.free_adapter(adapter)
    runtime.clear_adapters()
    runtime.free_adapter(adapter)
    with pytest.raises(AdapterError, match="freed or not loaded"):
        runtime.set_adapters([(adapter, 1.0)])
