"""The box's local inference API: an OpenAI-compatible HTTP endpoint for plant applications."""

from pydantic import Field

from appliance.config.base import SecretFile, Section


class ServeSettings(Section):
    """`/v1/completions`, `/v1/chat/completions` and `/v1/models` on the box.

    Off by default: serving loads a second context of the base model next to the one the
    daemon evaluates adapters with (the weights are memory-mapped and shared; the context and
    its KV cache are not), and several boxes of a demo share one host and its ports.
    """

    enabled: bool = Field(default=False, description="Serve the OpenAI-compatible API.")
    listen: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the API binds to; localhost only by default (exposing it is an "
        "explicit choice, and then `token_file` should be set).",
    )
    port: int = Field(
        default=8080, ge=0, le=65535, description="TCP port; 0 picks a free one (logged)."
    )
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Model name clients pass as `model` and `/v1/models` lists; absent = the "
        "base model file's name without `.gguf`.",
    )
    token_file: SecretFile | None = Field(
        default=None,
        description="File holding the bearer token clients must send (`Authorization: Bearer "
        "...`; mode 0600); absent = no authentication.",
    )
    contexts: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Model contexts serving requests in parallel (each has its own KV cache); "
        "requests beyond them wait in one queue, in order.",
    )
    max_queue: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Requests waiting or running; more are refused with 503 until one ends.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body; larger ones are refused with 413 unread.",
    )
    rate_limit_per_minute: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per client address (token bucket); 0 = no limit.",
    )
    rate_limit_burst: int = Field(
        default=60, ge=1, description="Requests a client may send at once before the limit."
    )
    default_max_tokens: int = Field(
        default=256,
        ge=1,
        le=131072,
        description="Tokens generated when a request gives no `max_tokens` (cut to what the "
        "context leaves after the prompt).",
    )
    chat_template_fallback: str | None = Field(
        default=None,
        min_length=1,
        description="llama.cpp built-in chat template name (e.g. `chatml`) used when the model "
        "has no chat template of its own; absent = chat requests to such a model are refused "
        "with a clear error (completions still work).",
    )
    pause_training: bool = Field(
        default=True,
        description="Freeze the training worker (SIGSTOP) while requests are served; it "
        "resumes (SIGCONT) once the API has been idle for `training_resume_after_s` and the "
        "health gate allows.",
    )
    training_resume_after_s: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Idle time after the last request before training resumes (avoids "
        "stopping and continuing the worker between requests that follow each other).",
    )
