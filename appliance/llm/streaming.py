"""Generation text for the inference API as it grows, and chat prompts from the model's template.

`stream` runs `Runtime.texts`, the sampling loop `Runtime.generate` runs too, and hands the
text out piece by piece, so an HTTP client sees its first token as soon as it exists. What
it adds is one rule about text that must never reach a client and be taken back: text that
could be the beginning of a stop string is held back until it is not. (Text ending in an
incomplete UTF-8 sequence is already left out by the loop until the sequence completes.)
"""

from collections.abc import Callable, Sequence

from appliance.errors import ModelError
from appliance.llm.runtime import Generation, Runtime, Sampling, drain
from appliance.llm.texts import apply_chat_template


class ChatTemplateError(ModelError):
    """The model has no usable chat template."""


def stream(
    runtime: Runtime,
    prompt: str,
    sampling: Sampling,
    emit: Callable[[str], None],
    cancelled: Callable[[], bool] = lambda: False,
) -> Generation:
    """Generate, calling `emit` with each new piece of text; returns how it ended.

    The pieces join to the generation's text. `PromptError` as in `Runtime.texts`.
    """
    release = _Release(sampling.stop, emit)
    result = drain(runtime.texts(prompt, sampling, cancelled), release.hold_stop_prefix)
    release.send(result.text)
    return result


class _Release:
    """Sends the growth of a text to a client, never anything it would have to take back."""

    def __init__(self, stop: Sequence[str], emit: Callable[[str], None]) -> None:
        self._stop = stop
        self._emit = emit
        self._sent = ""

    def hold_stop_prefix(self, text: str) -> None:
        """Send `text` so far, except an end that may grow into a stop string."""
        self.send(text[: len(text) - _stop_prefix_length(text, self._stop)])

    def send(self, text: str) -> None:
        """Send what `text` adds to what was sent (nothing if it does not extend it)."""
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._emit(text[len(self._sent) :])
            self._sent = text


def _stop_prefix_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


def chat_prompt(runtime: Runtime, messages: Sequence[tuple[str, str]], fallback: str | None) -> str:
    """The prompt for `messages` (role, content) in the model's chat format.

    Rendered by llama.cpp's `llama_chat_apply_template` with the template from the GGUF
    (the same function that renders training records, so served prompts match what
    adapters learned), with the assistant's turn opened. `fallback` names a llama.cpp
    built-in template for models without one; without it such a model refuses chat.
    """
    template = runtime.chat_template or fallback
    if not template:
        raise ChatTemplateError(
            "the model has no chat template; use /v1/completions, or set "
            "serve.chat_template_fallback (e.g. chatml)"
        )
    rendered = apply_chat_template(template, messages)
    if rendered is None:
        raise ChatTemplateError("llama.cpp does not know this model's chat template")
    return rendered
