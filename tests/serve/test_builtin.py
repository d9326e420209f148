"""The real model: streamed generation samples exactly what llama-cpp-python's own
completion samples, and chat uses SmolLM2's own chat template from its GGUF."""

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from appliance.config.model import ModelSettings
from appliance.config.serve import ServeSettings
from appliance.llm.runtime import Runtime, Sampling
from appliance.llm.streaming import stream
from appliance.llm.texts import apply_chat_template, chat_template
from appliance.serve.server import InferenceServer
from tests.serve.conftest import client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtimes(builtin_path: Path) -> Iterator[tuple[Runtime, llama_cpp.Llama]]:
    """Our runtime, and llama-cpp-python on the same file with the same context and threads."""
    ours = Runtime(builtin_path, context_tokens=512, threads=2)
    plain = llama_cpp.Llama(
        model_path=str(builtin_path), n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False
    )
    yield ours, plain
    ours.close()
    plain.close()


@pytest.mark.parametrize(
    ("prompt", "temperature", "stop"),
    [
        ("The maintenance log for pump 4 says", 0.8, ()),
        ("List three causes of bearing wear:\n1.", 0.7, ("\n3.",)),
        ("Hello", 0.0, (".",)),
    ],
)
def test_streaming_samples_what_llama_cpp_python_samples(
    runtimes: tuple[Runtime, llama_cpp.Llama], prompt: str, temperature: float, stop: tuple
) -> None:
    ours, plain = runtimes
    pieces: list[str] = []
    finish = stream(ours, prompt, Sampling(40, temperature, 0.95, 11, stop), pieces.append)
    reference = plain.create_completion(
        prompt, max_tokens=40, temperature=temperature, top_p=0.95, stop=list(stop), seed=11
    )
    choice = reference["choices"][0]  # type: ignore[index]
    assert finish.text == choice["text"]
    assert finish.finish_reason == choice["finish_reason"]
    assert "".join(pieces) == finish.text
    generated = ours.generate(
        prompt, max_tokens=40, temperature=temperature, top_p=0.95, stop=stop, seed=11
    )
    # one sampling loop for the API and for `generate`
    assert (generated.text, generated.finish_reason, generated.completion_tokens) == (
        finish.text,
        finish.finish_reason,
        finish.completion_tokens,
    )


def test_chat_uses_the_models_own_template(builtin_path: Path) -> None:
    template = chat_template(builtin_path)
    assert template is not None and "<|im_start|>" in template
    server = InferenceServer(
        ServeSettings.model_validate({"enabled": True, "port": 0}),
        ModelSettings.model_validate({"path": "builtin", "context_tokens": 512, "threads": 2}),
    )
    server.start()
    try:
        reply = client(server).chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": "What is a bearing?"}],
            max_tokens=24,
            temperature=0,
        )
        prompt = apply_chat_template(template, [("user", "What is a bearing?")])
        assert prompt is not None
        expected = stream(
            server.pool._contexts[0].runtime, prompt, Sampling(24, 0.0, 1.0, 0), lambda _p: None
        )
        assert reply.choices[0].message.content == expected.text
        assert "bearing" in expected.text.lower()  # a real answer, not template debris
    finally:
        server.stop()
