"""The official OpenAI client against the running API on the tiny model: what works and
every kind of refusal."""

import os
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from appliance.errors import ConfigError
from appliance.llm.runtime import Runtime
from appliance.llm.texts import apply_chat_template
from appliance.serve.server import InferenceServer
from tests.serve.conftest import CONTEXT, StartServer, client, fresh_text

PROMPT = "The pump on line 3"


def test_models_lists_the_served_model(server: InferenceServer) -> None:
    api = client(server)
    models = api.models.list()
    assert [m.id for m in models.data] == [server.model_id] == ["tiny-f32"]
    assert api.models.retrieve("tiny-f32").id == "tiny-f32"
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        api.models.retrieve("gpt-4o")


def test_completion_matches_a_fresh_run_and_names_the_adapter(
    server: InferenceServer, reference: Runtime
) -> None:
    raw = client(server).completions.with_raw_response.create(
        model="tiny-f32", prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.9, seed=42
    )
    assert raw.headers["X-Appliance-Adapter-Version"] == "base"
    completion = raw.parse()
    expected = fresh_text(reference, PROMPT, max_tokens=12, temperature=0.9, top_p=0.9, seed=42)
    assert completion.choices[0].text == expected
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == len(reference.prompt_tokens(PROMPT))
    assert completion.choices[0].finish_reason == "length"
    other = client(server).completions.create(
        model="tiny-f32", prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.9, seed=43
    )
    assert other.choices[0].text != expected  # the seed matters, so the check above can fail


def test_stop_string_ends_the_text_before_it(server: InferenceServer, reference: Runtime) -> None:
    free = fresh_text(reference, PROMPT, max_tokens=40, seed=5)
    stop = free[10:12]  # a string the unconstrained run produces
    completion = client(server).completions.create(
        model="tiny-f32", prompt=PROMPT, max_tokens=40, seed=5, stop=[stop]
    )
    text = completion.choices[0].text
    assert stop not in text
    assert free.startswith(text) and len(text) <= 10
    assert completion.choices[0].finish_reason == "stop"


def test_streamed_completion_is_the_same_text_in_pieces(server: InferenceServer) -> None:
    api = client(server)
    whole = api.completions.create(model="tiny-f32", prompt=PROMPT, max_tokens=30, seed=9)
    chunks = list(
        api.completions.create(
            model="tiny-f32",
            prompt=PROMPT,
            max_tokens=30,
            seed=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 30


def test_chat_uses_the_template_and_streams(server: InferenceServer, reference: Runtime) -> None:
    messages = [
        {"role": "system", "content": "You are a maintenance assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Why does pump 3 vibrate?"}]},
    ]
    api = client(server)
    raw = api.chat.completions.with_raw_response.create(
        model="tiny-f32", messages=messages, max_completion_tokens=10, seed=3
    )
    assert raw.headers["X-Appliance-Adapter-Version"] == "base"
    answer = raw.parse().choices[0].message
    prompt = apply_chat_template(
        "chatml",
        [("system", "You are a maintenance assistant."), ("user", "Why does pump 3 vibrate?")],
    )
    assert prompt is not None and prompt.endswith("<|im_start|>assistant\n")
    assert answer.role == "assistant"
    assert answer.content == fresh_text(reference, prompt, max_tokens=10, seed=3)
    stream = api.chat.completions.create(
        model="tiny-f32", messages=messages, max_tokens=10, seed=3, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_without_a_template_is_refused_clearly(start_server: StartServer) -> None:
    plain = start_server()  # no fallback; the tiny model has no template
    with pytest.raises(openai.BadRequestError, match="no chat template") as caught:
        client(plain).chat.completions.create(
            model="tiny-f32", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "no_chat_template"
    # completions still work
    assert client(plain).completions.create(model="tiny-f32", prompt="x", max_tokens=2)


@pytest.mark.parametrize(
    ("arguments", "param", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": -5}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": CONTEXT + 1}, "max_tokens", "context holds 512 tokens"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"max_tokens": 4.0}, "max_tokens", "valid integer"),
        ({"seed": "7"}, "seed", "valid integer"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": ""}, "stop", "empty"),
        ({"n": 2}, "n", "only 1 choice"),
        ({"logprobs": 3}, "logprobs", "unsupported parameter"),
        ({"extra_body": {"mirostat": 2}}, "mirostat", "unsupported parameter"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(
    server: InferenceServer, arguments: dict, param: str | None, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).completions.create(model="tiny-f32", prompt=PROMPT, **arguments)
    assert words in caught.value.message
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


def test_a_prompt_longer_than_the_context_is_refused(server: InferenceServer) -> None:
    with pytest.raises(openai.BadRequestError, match="context holds 512") as caught:
        client(server).completions.create(model="tiny-f32", prompt="pump " * 600, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"


def test_unknown_model_is_404(server: InferenceServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).completions.create(model="gpt-4o", prompt=PROMPT)
    assert caught.value.code == "model_not_found"
    assert "'tiny-f32'" in caught.value.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b"", "body is empty"),
        (b'{"model": "tiny-f32", "prompt": "\xff"}', "not UTF-8"),
        (b'{"model": "tiny-f32", "prompt": "x"', "not valid JSON"),  # truncated
    ],
)
def test_malformed_bodies_get_openai_shaped_errors(
    server: InferenceServer, body: bytes, words: str
) -> None:
    response = httpx.post(
        f"{server.url}/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(server: InferenceServer, number: str) -> None:
    """The openai client refuses to send NaN; other clients (and Python's json) do not."""
    body = f'{{"model": "tiny-f32", "prompt": "x", "temperature": {number}}}'.encode()
    response = httpx.post(f"{server.url}/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "temperature"
    assert "finite number" in error["message"]


def test_oversized_body_is_refused_unread(start_server: StartServer) -> None:
    small = start_server(max_body_bytes=2048)
    with pytest.raises(openai.APIStatusError) as caught:
        client(small).completions.create(model="tiny-f32", prompt="x" * 4096)
    assert caught.value.status_code == 413
    assert "limit is 2048" in caught.value.message

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 1024

    response = httpx.post(f"{small.url}/completions", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_bearer_token_is_required_when_configured(
    start_server: StartServer, tmp_path: Path
) -> None:
    token = tmp_path / "api.token"
    token.write_text("s3cret-token\n")
    os.chmod(token, 0o600)
    guarded = start_server(token_file=str(token))
    assert client(guarded, "s3cret-token").models.list().data
    for wrong in ("wrong", "s3cret-token-2", "s3cret"):
        with pytest.raises(openai.AuthenticationError) as caught:
            client(guarded, wrong).completions.create(model="tiny-f32", prompt="x")
        assert caught.value.code == "invalid_api_key"
    unsent = httpx.post(f"{guarded.url}/completions", json={"model": "tiny-f32", "prompt": "x"})
    assert unsent.status_code == 401
    assert "missing bearer token" in unsent.json()["error"]["message"]
    assert httpx.get(guarded.url.removesuffix("/v1") + "/metrics").status_code == 401
    assert httpx.get(guarded.url.removesuffix("/v1") + "/health").status_code == 200


def test_token_file_problems_stop_the_start(start_server: StartServer, tmp_path: Path) -> None:
    missing = tmp_path / "none.token"
    with pytest.raises(ConfigError, match="does not exist"):
        start_server(token_file=str(missing))
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(ConfigError, match="one token"):
        start_server(token_file=str(empty))


def test_rate_limit_answers_429_with_retry_after(start_server: StartServer) -> None:
    limited = start_server(rate_limit_per_minute=1, rate_limit_burst=2)
    api = client(limited)
    api.models.list()
    api.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        api.models.list()
    assert caught.value.response.headers["Retry-After"] == "60"
    assert caught.value.code == "rate_limit_exceeded"


def test_port_in_use_fails_the_start(start_server: StartServer, server: InferenceServer) -> None:
    with pytest.raises(ConfigError, match="cannot listen"):
        start_server(port=server.port)


def test_unknown_routes_and_methods_are_json_errors(server: InferenceServer) -> None:
    response = httpx.get(f"{server.url}/engines")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert httpx.get(f"{server.url}/completions").status_code == 405


def test_metrics_show_requests_latency_and_queue(server: InferenceServer) -> None:
    api = client(server)
    api.completions.create(model="tiny-f32", prompt=PROMPT, max_tokens=5, seed=1)
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="tiny-f32", prompt=PROMPT, max_tokens=0)
    text = httpx.get(server.url.removesuffix("/v1") + "/metrics").text
    assert 'appliance_inference_requests_total{endpoint="completions",status="200"} 1' in text
    assert 'appliance_inference_requests_total{endpoint="completions",status="400"} 1' in text
    assert "appliance_inference_time_to_first_token_seconds_count 1" in text
    assert "appliance_inference_tokens_per_second_count 1" in text
    assert "appliance_inference_completion_tokens_total 5" in text
    assert "appliance_inference_queue_depth 0" in text
    assert "appliance_inference_adapter_version -1" in text


def test_a_replayed_request_gets_the_same_answer(server: InferenceServer) -> None:
    """Requests have no side effects: the same body twice gives the same text."""
    body = {"model": "tiny-f32", "prompt": PROMPT, "max_tokens": 12, "seed": 77}
    first = httpx.post(f"{server.url}/completions", json=body).json()
    second = httpx.post(f"{server.url}/completions", json=body).json()
    assert first["choices"] == second["choices"]
    assert first["id"] != second["id"]


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_next(
    server: InferenceServer, reference: Runtime
) -> None:
    api = client(server)
    stream = api.completions.create(
        model="tiny-f32", prompt=PROMPT, max_tokens=400, seed=1, stream=True
    )
    next(iter(stream))
    stream.close()  # hang up after the first piece
    after = api.completions.create(model="tiny-f32", prompt=PROMPT, max_tokens=12, seed=8)
    assert after.choices[0].text == fresh_text(reference, PROMPT, max_tokens=12, seed=8)
