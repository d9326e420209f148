"""An in-process inference API on the tiny model, and the official OpenAI client for it."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from appliance.config.model import ModelSettings
from appliance.config.serve import ServeSettings
from appliance.llm.runtime import Runtime, Sampling
from appliance.llm.streaming import stream
from appliance.serve.priority import TrainingPauses
from appliance.serve.server import InferenceServer

CONTEXT = 512

StartServer = Callable[..., InferenceServer]


def model_settings(path: Path) -> ModelSettings:
    return ModelSettings.model_validate(
        {"path": str(path), "context_tokens": CONTEXT, "threads": 1}
    )


@pytest.fixture
def start_server(tiny_f32: Path) -> Iterator[StartServer]:
    """Start servers with `[serve]` overrides; all are stopped after the test."""
    started: list[InferenceServer] = []

    def start(pauses: TrainingPauses | None = None, **overrides: Any) -> InferenceServer:
        settings = ServeSettings.model_validate({"enabled": True, "port": 0, **overrides})
        server = InferenceServer(settings, model_settings(tiny_f32), pauses)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> InferenceServer:
    """Default settings, with the chatml template for the template-less tiny model."""
    return start_server(chat_template_fallback="chatml")


def client(server: InferenceServer, api_key: str = "unused") -> openai.OpenAI:
    """The official client, without its automatic retries (tests see every refusal)."""
    return openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_models: dict) -> Iterator[Runtime]:
    """A separate runtime on the same model: what a fresh run produces."""
    runtime = Runtime(tiny_models["f32"], context_tokens=CONTEXT, threads=1)
    yield runtime
    runtime.close()


def fresh_text(runtime: Runtime, prompt: str, **sampling: Any) -> str:
    """Text of one generation on `runtime` as it is (its adapters as set)."""
    settings = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": 0, **sampling}
    settings["stop"] = tuple(settings.get("stop", ()))
    return stream(runtime, prompt, Sampling(**settings), lambda _piece: None).text
