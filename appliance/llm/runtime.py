"""A loaded model: generate, score (NLL) and hot-swap LoRA adapters on the live context.

One `Runtime` owns one llama.cpp model and one context. Adapters are loaded next to the
model and switched on the context with `llama_set_adapters_lora`, so a new global adapter
takes effect in milliseconds without reloading the base model. The KV cache is cleared after
every switch: what it holds was computed with the previous adapters.

Generation has one sampling loop, `Runtime.texts`: `generate` runs it to the end and the
inference API (`appliance.llm.streaming`) shows its text as it grows. Its rules:
- the prompt is evaluated from an empty KV cache every time: reusing a cached prefix
  evaluates in other batch shapes, whose rounding differs enough to change samples;
- text ending in an incomplete UTF-8 sequence is not part of the text until it completes;
- stop strings are enforced on the decoded text (the first one found ends the generation);
- `max_tokens` is a hard limit on sampled tokens, cut to what the context leaves.
"""

import contextlib
import ctypes
import io
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config.model import ModelSettings
from appliance.errors import AdapterError, ModelError
from appliance.llm.adapters import AdapterFile, check_adapter_fits, read_adapter
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import (
    ModelInfo,
    file_sha256,
    open_gguf,
    read_model_info,
    tensor_shapes,
)
from appliance.llm.licenses import LicensePolicy
from appliance.llm.native import bridge, lib, llama_cpp
from appliance.llm.texts import CHAT_TEMPLATE_KEY

log = logging.getLogger(__name__)

NLL_BATCH_TOKENS = 256

# The sampler chain around what a request chooses (temperature, top_p): llama-cpp-python's
# create_completion defaults, which generation has always used here. The only copy.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0

SEED_BITS = 32  # llama.cpp's sampler seed is a uint32


class PromptError(ModelError):
    """The prompt cannot be generated from: empty, or leaves no room in the context."""


@dataclass(frozen=True)
class Sampling:
    """What one generation asks of the sampler; the rest of the chain is fixed above."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """Text produced for one prompt, and how its generation ended."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float | None = None  # time.monotonic() when the first token was sampled


Texts = Generator[str, None, Generation]
"""A generation under way: its text after each sampled token, then how it ended."""


@dataclass(frozen=True)
class NllResult:
    """Negative log-likelihood of texts under the current model and adapters (nats)."""

    total_nll: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        """Mean NLL per predicted token."""
        return self.total_nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        """exp(mean NLL)."""
        return math.exp(self.mean_nll) if self.tokens else math.nan


@dataclass(eq=False)
class Adapter:
    """A LoRA adapter loaded next to the model (usable on its context until freed)."""

    path: Path
    sha256: str
    file: AdapterFile
    handle: lib.llama_adapter_lora_p | None

    @property
    def rank(self) -> int:
        """LoRA rank."""
        return self.file.rank


class Runtime:
    """One GGUF model and one llama.cpp context."""

    def __init__(
        self,
        model: str | Path,
        *,
        context_tokens: int = 2048,
        threads: int = 0,
        gpu_layers: int = 0,
        policy: LicensePolicy | None = None,
    ) -> None:
        path = resolve_model_path(model)
        self.info: ModelInfo = read_model_info(path, ModelError)
        (policy or LicensePolicy()).check(self.info)
        self._shapes = tensor_shapes(open_gguf(path, ModelError))
        self._lock = threading.RLock()
        self._adapters: list[Adapter] = []
        self._active: list[tuple[Adapter, float]] = []
        self._llm = self._load(path, context_tokens, threads or os.cpu_count() or 1, gpu_layers)
        self.context_tokens = int(lib.llama_n_ctx(self._ctx))
        self.n_vocab = int(self._llm.n_vocab())
        self.chat_template: str | None = self._llm.metadata.get(CHAT_TEMPLATE_KEY) or None
        log.info(
            "loaded model %s (%s, sha256 %s, licence %s)",
            path,
            self.info.file_type,
            self.info.sha256,
            self.info.license or "none",
        )

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> "Runtime":
        """The runtime a node's `[model]` section describes, licence policy included."""
        return cls(
            settings.model_path(),
            context_tokens=settings.context_tokens,
            threads=settings.threads,
            gpu_layers=settings.gpu_layers,
            policy=LicensePolicy.from_settings(settings),
        )

    def _load(self, path: Path, n_ctx: int, threads: int, gpu_layers: int) -> "llama_cpp.Llama":
        mark = bridge.mark()
        try:
            with _python_output_to_log():
                return llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=min(n_ctx, 512),
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=gpu_layers,
                    verbose=True,  # keeps stderr open; our log bridge filters llama.cpp's lines
                )
        except (ValueError, RuntimeError) as exc:
            reason = _with_reasons(f"{path}: llama.cpp could not load the model", mark)
            raise ModelError(reason) from exc

    # llama-cpp-python leaves its context and model handles untyped
    @property
    def _ctx(self) -> lib.llama_context_p:
        return self._llm._ctx.ctx  # type: ignore[no-any-return]

    @property
    def _model(self) -> lib.llama_model_p:
        return self._llm._model.model  # type: ignore[no-any-return]

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text` (with the model's BOS token first when `add_bos`).

        `special` parses chat markers such as `<|im_start|>` as the special tokens they are:
        what training data rendered with the model's chat template needs.
        """
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens a completion of `prompt` evaluates: BOS/EOS as the model's metadata asks.

        create_completion's rule, so a prompt counts the tokens it always has here; chat
        markers in the text are parsed as the special tokens they are.
        """
        model = self._llm._model
        bos = model.token_cls() if model.token_cls() != -1 else self._llm.token_bos()
        sep = model.token_sep()
        head = [bos] if model.add_bos_token() and bos != -1 else []
        tail = [sep if sep != -1 else self._llm.token_eos()]
        if not model.add_eos_token() and sep == -1:
            tail = []
        body = self.tokenize(prompt, add_bos=False, special=True) if prompt else []
        return head + body + tail

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> Generation:
        """Complete `prompt`; the same seed gives the same text on the same model and adapters.

        Without a seed each call draws a fresh one. `PromptError` as in `texts`.
        """
        chosen = secrets.randbits(SEED_BITS) if seed is None else seed
        sampling = Sampling(max_tokens, temperature, top_p, chosen, tuple(stop))
        return drain(self.texts(prompt, sampling))

    def texts(
        self, prompt: str, sampling: Sampling, cancelled: Callable[[], bool] = lambda: False
    ) -> Texts:
        """Sample a completion of `prompt`, yielding the text so far after every token.

        The generator returns the `Generation`; `cancelled` is asked between tokens. It holds
        the runtime's lock from its first step to its end, so run it to the end (or close it)
        on one thread, as `drain` does.
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
            # an empty prompt text starts the completion with BOS, as create_completion does
            lead = [] if prompt else [self._llm.token_bos()]
            self._forget_cache()
            try:
                limit = min(sampling.max_tokens, room)
                return (yield from self._sample(tokens, lead, sampling, limit, cancelled))
            finally:
                self._forget_cache()

    def _sample(
        self,
        prompt: list[int],
        lead: list[int],
        sampling: Sampling,
        limit: int,
        cancelled: Callable[[], bool],
    ) -> Texts:
        llm = self._llm
        vocab = llm._model.vocab
        llm.set_seed(sampling.seed)
        data = bytearray(llm.detokenize(lead))  # grows by one piece per token: no O(n^2)
        text, reason, count = "", "length", 0
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
            count += 1
            data += llm.detokenize([token])
            text = _complete_utf8(_strip_bos_space(data, lead))
            cut = _first_stop(text, sampling.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
                break
            yield text
            if count >= limit:
                break
            if cancelled():
                reason = "cancelled"
                break
        return Generation(text, reason, len(prompt), count, first_token_at)

    def nll(self, texts: Sequence[str], special: bool = False) -> NllResult:
        """NLL of each text's tokens given the ones before it, summed over texts.

        A text longer than the context is scored in consecutive windows of the context
        length; the first token of every window is context only. `special` as in `tokenize`.
        """
        total, count = 0.0, 0
        for text in texts:
            tokens = self.tokenize(text, special=special)
            for start in range(0, max(len(tokens) - 1, 0), self.context_tokens):
                window = tokens[start : start + self.context_tokens]
                if len(window) > 1:
                    total += self._window_nll(window)
                    count += len(window) - 1
        return NllResult(total, count)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after every token of one window: shape (len(tokens), n_vocab), float32."""
        if not 0 < len(tokens) <= self.context_tokens:
            raise ValueError(f"need 1..{self.context_tokens} tokens, got {len(tokens)}")
        with self._lock:
            return np.concatenate(list(self._decode_all_logits(tokens)))

    def _window_nll(self, tokens: Sequence[int]) -> float:
        with self._lock:
            nll, position = 0.0, 0
            for chunk in self._decode_all_logits(tokens):
                targets = tokens[position + 1 : position + 1 + len(chunk)]
                rows = chunk[: len(targets)].astype(np.float64)
                peak = rows.max(axis=1, keepdims=True)
                log_z = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
                nll += float((log_z - rows[np.arange(len(targets)), targets]).sum())
                position += len(chunk)
            return nll

    def _decode_all_logits(self, tokens: Sequence[int]) -> Iterator[np.ndarray]:
        """Decode one window from an empty cache, yielding the logits of each batch."""
        self._forget_cache()
        batch = lib.llama_batch_init(NLL_BATCH_TOKENS, 0, 1)
        try:
            for start in range(0, len(tokens), NLL_BATCH_TOKENS):
                chunk = tokens[start : start + NLL_BATCH_TOKENS]
                _fill_batch(batch, chunk, start)
                if lib.llama_decode(self._ctx, batch) != 0:
                    raise ModelError(f"llama_decode failed on a {len(chunk)}-token batch")
                out = lib.llama_get_logits(self._ctx)
                yield np.ctypeslib.as_array(out, shape=(len(chunk), self.n_vocab)).copy()
        finally:
            lib.llama_batch_free(batch)
            self._forget_cache()

    def _forget_cache(self) -> None:
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        self._llm.reset()  # type: ignore[no-untyped-call]

    # -- adapters ---------------------------------------------------------------------------

    def load_adapter(self, path: Path) -> Adapter:
        """Load an adapter made for this model; `AdapterError` says why one is refused."""
        path = Path(path)
        content = read_adapter(path)
        check_adapter_fits(path, content, self.info.architecture, self._shapes, self.info.sha256)
        mark = bridge.mark()
        with self._lock:
            handle = lib.llama_adapter_lora_init(self._model, str(path).encode())
            if not handle:
                raise AdapterError(_with_reasons(f"{path}: llama.cpp refused the adapter", mark))
            adapter = Adapter(path, file_sha256(path), content, handle)
            self._adapters.append(adapter)
        log.info("loaded adapter %s (rank %d, sha256 %s)", path, adapter.rank, adapter.sha256)
        return adapter

    def set_adapters(self, adapters: Sequence[tuple[Adapter, float]]) -> None:
        """Make exactly these adapters (with their scales) active; clears the KV cache."""
        with self._lock:
            usable = [self._handle(adapter, scale) for adapter, scale in adapters]
            count = len(usable)
            # llama-cpp-python declares a handle as c_void_p, but what llama_adapter_lora_init
            # returns (its restype) is the POINTER(c_void_p) this array holds
            handles = (lib.llama_adapter_lora_p_ctypes * max(count, 1))(*usable)  # type: ignore[misc]
            scales = (ctypes.c_float * max(count, 1))(*[s for _, s in adapters])
            if lib.llama_set_adapters_lora(self._ctx, handles, count, scales) != 0:
                raise AdapterError("llama.cpp could not set the adapters on the context")
            self._active = list(adapters)
            self._forget_cache()

    def _handle(self, adapter: Adapter, scale: float) -> lib.llama_adapter_lora_p:
        """The handle to set `adapter` with at `scale`; `AdapterError` if it cannot be."""
        if adapter.handle is None or adapter not in self._adapters:
            raise AdapterError(f"{adapter.path}: adapter was freed or not loaded here")
        if not math.isfinite(scale):
            raise AdapterError(f"{adapter.path}: scale must be finite (got {scale})")
        return adapter.handle

    def clear_adapters(self) -> None:
        """Serve the base model alone."""
        self.set_adapters([])

    @property
    def active_adapters(self) -> list[tuple[Adapter, float]]:
        """The adapters in effect, with their scales."""
        return list(self._active)

    def free_adapter(self, adapter: Adapter) -> None:
        """Release an adapter's memory; it must not be active."""
        with self._lock:
            if any(a is adapter for a, _ in self._active):
                raise AdapterError(f"{adapter.path}: adapter is active; switch it off first")
            if adapter.handle is not None and adapter in self._adapters:
                lib.llama_adapter_lora_free(adapter.handle)
                self._adapters.remove(adapter)
            adapter.handle = None

    def close(self) -> None:
        """Free adapters, context and model."""
        with self._lock:
            if self._active:
                self.clear_adapters()
            for adapter in list(self._adapters):
                self.free_adapter(adapter)
            self._llm.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def drain(texts: Texts, each: Callable[[str], None] = lambda _text: None) -> Generation:
    """Run a generation to its end, handing `each` its text after every token; how it ended.

    Closes the generator however this ends, which releases the runtime's lock.
    """
    with contextlib.closing(texts):
        while True:
            try:
                text = next(texts)
            except StopIteration as end:
                result: Generation = end.value
                return result
            each(text)


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
    """Where the earliest stop string in `text` begins, if any does."""
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def _fill_batch(batch: "lib.llama_batch", tokens: Sequence[int], first_pos: int) -> None:
    for i, token in enumerate(tokens):
        batch.token[i] = token
        # llama-cpp-python declares pos as an array of arrays; it is one llama_pos per token
        batch.pos[i] = first_pos + i  # type: ignore[call-overload]
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    batch.n_tokens = len(tokens)


def _with_reasons(message: str, mark: int) -> str:
    reasons = bridge.problems_since(mark)
    return f"{message}: {' / '.join(reasons[-3:])}" if reasons else message


@contextlib.contextmanager
def _python_output_to_log() -> Iterator[None]:
    """llama-cpp-python prints diagnostics with print(); send them to the debug log."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
    for line in sink.getvalue().splitlines():
        if line.strip():
            log.debug("llama-cpp-python: %s", line)
