"""Token-by-token generation for the inference API, and chat prompts from the model's template.

`StreamingRuntime.stream` samples exactly as `Runtime.generate` does (same prompt tokens,
same sampler chain and seed, an empty KV cache at the start of every request) but hands out
the text as it grows, so an HTTP client sees its first token as soon as it exists. Two rules
of its own, both about text that must never reach a client and be taken back:
- text ending in an incomplete UTF-8 sequence is held back until the sequence completes;
- text that could be the beginning of a stop string is held back until it is not.
Stop strings are enforced on the decoded text (the first one found ends the generation), and
`max_tokens` is a hard limit on sampled tokens.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.errors import ModelError
from appliance.llm.native import llama_cpp
from appliance.llm.runtime import Runtime
from appliance.llm.texts import apply_chat_template

log = logging.getLogger(__name__)

# create_completion's sampler defaults, which Runtime.generate uses
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0


class PromptError(ModelError):
    """The prompt cannot be generated from: empty, or leaves no room in the context."""


class ChatTemplateError(ModelError):
    """The model has no usable chat template."""


@dataclass(frozen=True)
class Sampling:
    """What a request asks of the sampler."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finish:
    """How a generation ended."""

    reason: str  # "stop", "length" or "cancelled"
    text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float | None = None  # time.monotonic() when the first token was sampled


class StreamingRuntime(Runtime):
    """A `Runtime` whose generations can be streamed and cancelled between tokens."""

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens create_completion evaluates for `prompt` (BOS/EOS as the model wants)."""
        model = self._llm._model
        bos = model.token_cls() if model.token_cls() != -1 else self._llm.token_bos()
        sep = model.token_sep()
        head = [bos] if model.add_bos_token() and bos != -1 else []
        tail = [sep if sep != -1 else self._llm.token_eos()]
        if not model.add_eos_token() and sep == -1:
            tail = []
        body = self.tokenize(prompt, add_bos=False, special=True) if prompt else []
        return head + body + tail

    def stream(
        self,
        prompt: str,
        sampling: Sampling,
        emit: Callable[[str], None],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Finish:
        """Generate, calling `emit` with each new piece of text; returns how it ended.

        `PromptError` when the prompt is empty for this model or fills the context;
        `max_tokens` is cut to what the context leaves after the prompt.
        """
        with self._lock:
            tokens = self.prompt_tokens(prompt)
            if not tokens:
                raise PromptError("the prompt is empty and this model has no BOS token")
            room = self.context_tokens - len(tokens)
            if room <= 0:
                raise PromptError(
                    f"the prompt is {len(tokens)} tokens; the context holds {self.context_tokens}"
                )
            limit = min(sampling.max_tokens, room)
            # an empty prompt text starts the completion with BOS, as create_completion does
            lead = [] if prompt else [self._llm.token_bos()]
            self._forget_cache()
            try:
                return self._sample(
                    tokens, lead, sampling, limit=limit, emit=emit, cancelled=cancelled
                )
            finally:
                self._forget_cache()

    def _sample(
        self,
        prompt: list[int],
        lead: list[int],
        sampling: Sampling,
        *,
        limit: int,
        emit: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Finish:
        llm = self._llm
        vocab = llm._model.vocab
        llm.set_seed(sampling.seed)
        completion = list(lead)
        data = bytearray(llm.detokenize(lead))  # grows by one piece per token: no O(n^2)
        sent, reason, stopped_at = "", "length", None
        first_token_at: float | None = None
        for token in llm.generate(
            prompt,
            top_k=TOP_K,
            top_p=sampling.top_p,
            min_p=MIN_P,
            typical_p=TYPICAL_P,
            temp=sampling.temperature,
            repeat_penalty=REPEAT_PENALTY,
        ):
            if first_token_at is None:
                first_token_at = time.monotonic()
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                reason = "stop"
                break
            completion.append(token)
            data += llm.detokenize([token])
            text = _complete_utf8(_strip_bos_space(data, lead))
            cut = _first_stop(text, sampling.stop)
            if cut is not None:
                stopped_at, reason = text[:cut], "stop"
                break
            safe = len(text) - _stop_prefix_length(text, sampling.stop)
            if safe > len(sent) and text.startswith(sent):
                emit(text[len(sent) : safe])
                sent = text[:safe]
            if len(completion) - len(lead) >= limit:
                break
            if cancelled():
                reason = "cancelled"
                break
        if stopped_at is not None:
            text = stopped_at
        else:
            text = _strip_bos_space(data, lead).decode("utf-8", errors="ignore")
            cut = _first_stop(text, sampling.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
        if len(text) > len(sent) and text.startswith(sent):
            emit(text[len(sent) :])
        return Finish(reason, text, len(prompt), len(completion) - len(lead), first_token_at)

    # -- chat -------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[tuple[str, str]], fallback: str | None) -> str:
        """The prompt for `messages` (role, content) in the model's chat format.

        Rendered by llama.cpp's `llama_chat_apply_template` with the template from the GGUF
        (the same function that renders training records, so served prompts match what
        adapters learned), with the assistant's turn opened. `fallback` names a llama.cpp
        built-in template for models without one; without it such a model refuses chat.
        """
        template = self._llm.metadata.get("tokenizer.chat_template") or fallback
        if not template:
            raise ChatTemplateError(
                "the model has no chat template; use /v1/completions, or set "
                "serve.chat_template_fallback (e.g. chatml)"
            )
        rendered = apply_chat_template(template, messages)
        if rendered is None:
            raise ChatTemplateError("llama.cpp does not know this model's chat template")
        return rendered


def _strip_bos_space(data: bytearray, lead: list[int]) -> bytes:
    """llama-cpp-python drops a leading space after a leading BOS (its `detokenize`)."""
    return bytes(data[1:] if lead and data[:1] == b" " else data)


def _complete_utf8(data: bytes) -> str:
    """Decode `data` without a trailing incomplete UTF-8 sequence (it may still complete)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte >= 0xF0 else 1
        if need > back:
            data = data[:-back]
        break
    return data.decode("utf-8", errors="ignore")


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def _stop_prefix_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest
