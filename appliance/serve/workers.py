"""One queue, a small pool of model contexts, and adapter swaps between requests.

Requests wait in a FIFO queue; each context has a worker thread that takes the next one.
The global adapter to serve is a target the edge service sets at any time; a worker compares
it with what its context holds only when it takes a request, so a swap never happens in the
middle of a generation, and the request learns the version it is served with before its
first token (it goes into the response header). The worker talks to the HTTP side through
the request's asyncio queue: `start`, then `text` pieces, then `done` or `error`.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.llm.runtime import Adapter, Generation, PromptError, Runtime
from appliance.llm.streaming import ChatTemplateError, chat_prompt, stream
from appliance.serve.errors import ApiError, bad_request, server_error
from appliance.serve.metrics import ServeMetrics
from appliance.serve.priority import Activity
from appliance.serve.protocol import CompletionRequest, GenerationRequest

log = logging.getLogger(__name__)

BASE = "base"
Event = tuple[str, object]


@dataclass(frozen=True)
class AdapterTarget:
    """The adapter requests should be served with: a global version and its file."""

    version: int | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        """What the response header says: the version number, or `base`."""
        return BASE if self.version is None else str(self.version)


@dataclass(eq=False)
class Job:
    """One request on its way through the queue."""

    request: GenerationRequest
    messages: list[tuple[str, str]] | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)

    def send(self, kind: str, payload: object = None) -> None:
        """Hand an event to the request's handler (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled.set()


@dataclass(eq=False)
class _Context:
    index: int
    runtime: Runtime
    target: AdapterTarget = AdapterTarget()
    adapter: Adapter | None = None
    refused: AdapterTarget | None = None


class Pool:
    """The queue and the contexts that serve it."""

    def __init__(
        self,
        runtimes: Sequence[Runtime],
        *,
        max_queue: int,
        default_max_tokens: int,
        chat_template_fallback: str | None,
        metrics: ServeMetrics,
        activity: Activity | None = None,
    ) -> None:
        self._contexts = [_Context(i, r) for i, r in enumerate(runtimes)]
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._max_queue = max_queue
        self._default_max_tokens = default_max_tokens
        self._fallback = chat_template_fallback
        self._metrics = metrics
        self._activity = activity
        self._target = AdapterTarget()
        self._lock = threading.Lock()
        self._pending = 0
        self._running = 0
        self._in_flight: set[Job] = set()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, args=(c,), name=f"serve-{c.index}", daemon=True)
            for c in self._contexts
        ]

    @property
    def context_tokens(self) -> int:
        """Context size of the served model."""
        return self._contexts[0].runtime.context_tokens

    @property
    def target(self) -> AdapterTarget:
        """The adapter the next request will be served with."""
        return self._target

    def use(self, target: AdapterTarget) -> None:
        """Serve `target` from the next request each context takes."""
        if target != self._target:
            self._target = target
            log.info("inference API: next requests use adapter %s", target.label)

    def depth(self) -> tuple[int, int]:
        """(waiting, running) requests."""
        with self._lock:
            return self._pending - self._running, self._running

    def start(self) -> None:
        """Start one worker per context."""
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request; 503 when `max_queue` are already waiting or running."""
        with self._lock:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", "server_error", code="shutdown")
            if self._pending >= self._max_queue:
                raise ApiError(
                    503,
                    f"the server is busy: {self._pending} requests are waiting or running "
                    f"(limit {self._max_queue}); retry later",
                    "server_error",
                    code="overloaded",
                )
            self._pending += 1
        if self._activity is not None:
            self._activity.begin()
        self._queue.put(job)

    def stop(self) -> None:
        """Refuse new requests, cancel the running ones, stop the workers, free the models."""
        with self._lock:
            self._stopping = True
            for running in self._in_flight:
                running.cancelled.set()  # the worker stops at its next token
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.send("error", ApiError(503, "the server is shutting down", "server_error"))
                self._finished()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        for context in self._contexts:
            context.runtime.close()

    # -- worker ---------------------------------------------------------------------------

    def _work(self, context: _Context) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._running += 1
                self._in_flight.add(job)
            try:
                if self._stopping or job.cancelled.is_set():
                    job.send("error", ApiError(499, "the client went away", "cancelled"))
                else:
                    self._serve(context, job)
            except ApiError as exc:
                job.send("error", exc)
            except Exception as exc:
                log.exception("inference request failed")
                job.send("error", server_error(f"generation failed: {exc}"))
            finally:
                with self._lock:
                    self._running -= 1
                    self._in_flight.discard(job)
                self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1
        if self._activity is not None:
            self._activity.end()

    def _serve(self, context: _Context, job: Job) -> None:
        runtime = context.runtime
        prompt, max_tokens = self._admit(runtime, job)
        self._switch(context)
        job.send("start", context.target.label)
        started = time.monotonic()
        try:
            finish: Generation = stream(
                runtime,
                prompt,
                job.request.sampling(max_tokens),
                lambda text: job.send("text", text),
                job.cancelled.is_set,
            )
        except PromptError as exc:
            raise bad_request(str(exc), code="context_length_exceeded") from None
        end, first = time.monotonic(), finish.first_token_at
        self._metrics.generation(
            wait_s=started - job.arrived,
            first_token_s=None if first is None else first - job.arrived,
            total_s=end - job.arrived,
            tokens=(finish.prompt_tokens, finish.completion_tokens),
            decode_s=0.0 if first is None else end - first,
        )
        job.send("done", finish)

    def _admit(self, runtime: Runtime, job: Job) -> tuple[str, int]:
        """The prompt text and the token budget, or a 400 before anything is sent."""
        request = job.request
        if job.messages is not None:
            try:
                prompt = chat_prompt(runtime, job.messages, self._fallback)
            except ChatTemplateError as exc:
                raise bad_request(str(exc), param="messages", code="no_chat_template") from None
        else:
            assert isinstance(request, CompletionRequest)
            prompt = request.prompt_text()
        used = len(runtime.prompt_tokens(prompt))
        room = runtime.context_tokens - used
        asked = request.requested_tokens()
        if room <= 0 or (asked is not None and asked > room):
            wanted = f"; max_tokens asks for {asked} more" if asked is not None else ""
            raise bad_request(
                f"this model's context holds {runtime.context_tokens} tokens; the prompt has "
                f"{used}{wanted}",
                param="max_tokens" if asked is not None and room > 0 else "prompt",
                code="context_length_exceeded",
            )
        return prompt, asked if asked is not None else min(self._default_max_tokens, room)

    def _switch(self, context: _Context) -> None:
        """Bring the context to the current target (between requests only)."""
        target = self._target
        if target in (context.target, context.refused):
            return
        runtime, old = context.runtime, context.adapter
        new: Adapter | None = None
        try:
            if target.path is not None:
                new = runtime.load_adapter(target.path)
            runtime.set_adapters([(new, 1.0)] if new is not None else [])
        except (ApplianceError, OSError) as exc:
            if new is not None:
                runtime.free_adapter(new)
            context.refused = target
            log.error(
                "inference context %d: cannot switch to adapter %s, still serving %s: %s",
                context.index,
                target.label,
                context.target.label,
                exc,
            )
            return
        if old is not None:
            runtime.free_adapter(old)
        context.adapter, context.target, context.refused = new, target, None
        self._metrics.swapped()
        log.info("inference context %d now serves adapter %s", context.index, target.label)
