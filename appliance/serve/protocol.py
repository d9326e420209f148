"""OpenAI request bodies, checked strictly, and the response and stream-chunk shapes.

Requests are parsed as JSON (Python's reader lets `NaN` and `Infinity` through; validation
refuses them as non-finite, naming the parameter), then validated by pydantic in strict
mode: `"temperature": "0.5"` is an error, not a silent conversion, and a parameter this API
does not implement is refused by name rather than ignored, so a client never believes it got
behaviour it did not get.
"""

import json
import math
import secrets
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from appliance.llm.runtime import Generation, Sampling
from appliance.serve.errors import bad_request

MAX_STOP_STRINGS = 4
SEED_RANGE = 2**63
_Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


BodyT = TypeVar("BodyT", bound=_Body)


class StreamOptions(_Body):
    """`stream_options`: only `include_usage` is meaningful here."""

    include_usage: bool = False


class GenerationRequest(_Body):
    """Parameters shared by both endpoints."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: _Probability | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: int | None = Field(default=None, ge=-SEED_RANGE, lt=SEED_RANGE)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and not value:
            raise ValueError("must not be an empty string")
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} strings")
        return value

    def stops(self) -> tuple[str, ...]:
        """Stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_tokens(self) -> int | None:
        """The completion length the client asked for, if it did."""
        return self.max_tokens

    def sampling(self, max_tokens: int) -> Sampling:
        """Sampler settings; no seed means a fresh random one."""
        seed = secrets.randbits(32) if self.seed is None else self.seed % 2**32
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=seed,
            stop=self.stops(),
        )

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    """`POST /v1/completions`."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        """The one prompt (a list of exactly one string is accepted as OpenAI allows)."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(_Body):
    """One text part of a message's content."""

    type: Literal["text"]
    text: str


class Message(_Body):
    """A chat message; `developer` is treated as `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_pair(self) -> tuple[str, str]:
        """(role, text) for the chat template."""
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return ("system" if self.role == "developer" else self.role, text)


class ChatRequest(GenerationRequest):
    """`POST /v1/chat/completions`."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_tokens(self) -> int | None:
        """`max_completion_tokens` (the current name) or `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object from the request body; `ApiError` 400 says what is wrong with it."""
    if not raw.strip():
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, not {_kind(value)}")
    return value


def validate(model: type[BodyT], body: dict[str, Any]) -> BodyT:
    """Validate a parsed body; the first problem becomes a 400 naming the parameter."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first)
        raise bad_request(_describe(first, param), param=param or None) from None


def _no_constants(name: str) -> float:
    """NaN and ±Infinity are not JSON; read them so validation can name the parameter."""
    return float(name)


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _param(error: ErrorDetails) -> str:
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif part not in {"str", "list[str]", "list[TextPart]", "int", "float"} and not (
            str(part).startswith(("list[", "function-", "constrained-"))
        ):
            parts.append(str(part))
    return ".".join(parts)


def _describe(error: ErrorDetails, param: str) -> str:
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"unsupported parameter: {param}"
    if kind == "missing":
        return f"missing required parameter: {param}"
    if kind == "finite_number" or (isinstance(given, float) and not math.isfinite(given)):
        return f"{param}: must be a finite number"
    message = error["msg"].removeprefix("Value error, ")
    shown = json.dumps(given)[:60] if _jsonable(given) else type(given).__name__
    if kind == "less_than_equal" and param == "n":
        return "n: only 1 choice per request is supported"
    prefix = "" if message.startswith(param) or not param else f"{param}: "
    return f"{prefix}{message} (got {shown})"


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- responses -------------------------------------------------------------------------------


class Responder:
    """Builds the bodies and stream chunks of one response."""

    def __init__(self, chat: bool, model_id: str) -> None:
        self.chat = chat
        self.model_id = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self._object = "chat.completion" if chat else "text_completion"
        self._chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_id}

    @staticmethod
    def usage(finish: Generation) -> dict[str, int]:
        """Token counts."""
        return {
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        }

    def whole(self, finish: Generation) -> dict[str, Any]:
        """The non-streamed response."""
        reason = _reason(finish)
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": finish.text},
                "logprobs": None,
                "finish_reason": reason,
            }
            if self.chat
            else {"index": 0, "text": finish.text, "logprobs": None, "finish_reason": reason}
        )
        return {**self._head(self._object), "choices": [choice], "usage": self.usage(finish)}

    def opening(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant role; completions have no opening chunk."""
        if not self.chat:
            return None
        return self.chunk({"role": "assistant", "content": ""}, None)

    def piece(self, text: str) -> dict[str, Any]:
        """A chunk carrying new text."""
        return self.chunk({"content": text} if self.chat else text, None)

    def closing(self, finish: Generation) -> dict[str, Any]:
        """The chunk that carries the finish reason."""
        return self.chunk({} if self.chat else "", _reason(finish))

    def usage_chunk(self, finish: Generation) -> dict[str, Any]:
        """With `stream_options.include_usage`: no choices, the usage."""
        return {**self._head(self._chunk_object), "choices": [], "usage": self.usage(finish)}

    def chunk(self, delta: dict[str, str] | str, reason: str | None) -> dict[str, Any]:
        """One stream chunk."""
        choice: dict[str, Any] = (
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            if self.chat
            else {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
        )
        return {**self._head(self._chunk_object), "choices": [choice]}


def _reason(finish: Generation) -> str:
    return "length" if finish.finish_reason == "cancelled" else finish.finish_reason


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
