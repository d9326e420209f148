"""Adapter swaps while requests stream in: every request completes, and each one's text is
exactly what a fresh run with the adapter version named in its header produces."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance.llm.runtime import Runtime
from appliance.serve.server import InferenceServer
from tests.lora_helpers import attention_shapes, write_random_adapter
from tests.serve.conftest import CONTEXT, StartServer, client, fresh_text

PROMPTS = [("Bearing 7 on line 2", 11), ("Pressure drop at", 12), ("Weld seam", 13)]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two small adapters for the tiny model that change its output."""
    folder = tmp_path_factory.mktemp("adapters")
    shapes = attention_shapes(64, 32, 2)
    return {
        version: write_random_adapter(folder / f"global-v{version}.gguf", shapes, seed=version)
        for version in (1, 2)
    }


@pytest.fixture(scope="module")
def expected(tiny_models: dict, adapters: dict[int, Path]) -> dict[str, dict[str, str]]:
    """Header label -> prompt -> text of a fresh runtime with that adapter (or none)."""
    runtime = Runtime(tiny_models["f32"], context_tokens=CONTEXT, threads=1)
    table: dict[str, dict[str, str]] = {}
    try:
        for label, path in (("base", None), ("1", adapters[1]), ("2", adapters[2])):
            loaded = runtime.load_adapter(path) if path else None
            runtime.set_adapters([(loaded, 1.0)] if loaded else [])
            table[label] = {
                prompt: fresh_text(runtime, prompt, max_tokens=MAX_TOKENS, seed=seed)
                for prompt, seed in PROMPTS
            }
            runtime.clear_adapters()
            if loaded:
                runtime.free_adapter(loaded)
    finally:
        runtime.close()
    for prompt, _seed in PROMPTS:  # otherwise matching a version would prove nothing
        assert len({table[label][prompt] for label in table}) == 3
    return table


def ask(server: InferenceServer, prompt: str, seed: int, stream: bool) -> tuple[str, str]:
    """(adapter header, text) of one request through the openai client."""
    raw = client(server).completions.with_raw_response.create(
        model="tiny-f32", prompt=prompt, max_tokens=MAX_TOKENS, seed=seed, stream=stream
    )
    label = raw.headers["X-Appliance-Adapter-Version"]
    parsed = raw.parse()
    if stream:
        return label, "".join(chunk.choices[0].text for chunk in parsed if chunk.choices)
    return label, parsed.choices[0].text


def test_a_swap_waits_for_the_request_in_flight(
    start_server: StartServer, adapters: dict[int, Path], expected: dict[str, dict[str, str]]
) -> None:
    server = start_server()
    server.use_adapter(1, adapters[1])
    prompt, seed = PROMPTS[0]
    assert ask(server, prompt, seed, stream=False) == ("1", expected["1"][prompt])
    # Hold the context's lock: the next request is taken (its header is sent) but cannot
    # generate yet; the swap to v2 is requested while it is in flight.
    context_lock = server.pool._contexts[0].runtime._lock
    context_lock.acquire()
    try:
        raw = client(server).completions.with_raw_response.create(
            model="tiny-f32", prompt=prompt, max_tokens=MAX_TOKENS, seed=seed, stream=True
        )
        assert raw.headers["X-Appliance-Adapter-Version"] == "1"
        server.use_adapter(2, adapters[2])
    finally:
        context_lock.release()
    streamed = "".join(c.choices[0].text for c in raw.parse() if c.choices)
    assert streamed == expected["1"][prompt]  # served to the end by v1
    assert ask(server, prompt, seed, stream=True) == ("2", expected["2"][prompt])


def test_concurrent_requests_during_swaps_each_match_their_version(
    start_server: StartServer, adapters: dict[int, Path], expected: dict[str, dict[str, str]]
) -> None:
    server = start_server(contexts=2)
    targets = [(1, adapters[1]), (2, adapters[2]), (None, None), (2, adapters[2])]
    jobs = [(prompt, seed, i % 2 == 0) for i in range(6) for prompt, seed in PROMPTS]
    results: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def one(job: tuple[str, int, bool]) -> None:
        prompt, seed, stream = job
        label, text = ask(server, prompt, seed, stream)
        with lock:
            results.append((prompt, label, text))
            done = len(results)
        if done % 5 == 0:  # swap from the clients' side while others are queued or running
            version, path = targets[(done // 5) % len(targets)]
            server.use_adapter(version, path)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(one, jobs))
    assert len(results) == len(jobs)
    for prompt, label, text in results:
        assert text == expected[label][prompt], (prompt, label)
    assert len({label for _p, label, _t in results}) >= 2
