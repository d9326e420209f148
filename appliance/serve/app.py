"""The HTTP routes (Starlette): OpenAI's `/v1/models`, `/v1/completions`,
`/v1/chat/completions` (with server-sent events when `stream` is true), plus `/metrics`
and an unauthenticated `/health` for liveness checks.

Every refusal is a JSON error in OpenAI's shape. A streamed response sends its headers
(with the adapter version) once a context has taken the request, then one event per piece of
text; an error after that point arrives as an event with an `error` object, which OpenAI
clients raise as an exception.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from appliance.llm.runtime import Generation
from appliance.serve.errors import ApiError
from appliance.serve.guard import RateLimiter, check_token, read_body
from appliance.serve.metrics import ServeMetrics
from appliance.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    Responder,
    parse_body,
    sse,
    validate,
)
from appliance.serve.workers import Job, Pool

log = logging.getLogger(__name__)

ADAPTER_HEADER = "X-Appliance-Adapter-Version"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ApiSettings:
    """What the routes need besides the pool."""

    model_id: str
    token: str | None
    max_body_bytes: int
    limiter: RateLimiter
    created: int
    gauges: Callable[[], dict[str, tuple[str, float]]]


def build_app(pool: Pool, settings: ApiSettings, metrics: ServeMetrics) -> Starlette:
    """The Starlette application."""
    api = _Api(pool, settings, metrics)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error},  # type: ignore[dict-item]
    )


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped error."""
    return JSONResponse(exc.body(), exc.status, headers={**(exc.headers or {}), **(headers or {})})


async def _api_error(_request: Request, exc: ApiError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in {404, 405}
        else str(exc.detail)
    )
    return error_response(ApiError(exc.status_code, message, code="unknown_url"))


class _Api:
    def __init__(self, pool: Pool, settings: ApiSettings, metrics: ServeMetrics) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics

    def _guard(self, request: Request) -> None:
        client = request.client.host if request.client else "unknown"
        self.settings.limiter.check(client)
        check_token(request, self.settings.token)

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        self._guard(request)
        return PlainTextResponse(self.metrics.render(self.settings.gauges), media_type=METRICS_TYPE)

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model_id,
            "object": "model",
            "created": self.settings.created,
            "owned_by": "appliance",
        }

    async def models(self, request: Request) -> Response:
        self._guard(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._guard(request)
        wanted = request.path_params["model_id"]
        if wanted != self.settings.model_id:
            raise self._unknown_model(wanted, "model")
        return JSONResponse(self._model_card())

    def _unknown_model(self, wanted: str, param: str) -> ApiError:
        return ApiError(
            404,
            f"the model {wanted!r} does not exist here; this server serves "
            f"{self.settings.model_id!r} (see /v1/models)",
            param=param,
            code="model_not_found",
        )

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        try:
            self._guard(request)
            raw = await read_body(request, self.settings.max_body_bytes)
            body: GenerationRequest = validate(
                ChatRequest if chat else CompletionRequest, parse_body(raw)
            )
            if body.model != self.settings.model_id:
                raise self._unknown_model(body.model, "model")
            messages = (
                [m.as_pair() for m in body.messages] if isinstance(body, ChatRequest) else None
            )
            job = Job(body, messages, asyncio.get_running_loop())
            self.pool.submit(job)
            response = await self._respond(job, body, Responder(chat, self.settings.model_id))
        except ApiError as exc:
            self.metrics.request_done(endpoint, exc.status)
            return error_response(exc)
        self.metrics.request_done(endpoint, response.status_code)
        return response

    async def _respond(self, job: Job, body: GenerationRequest, responder: Responder) -> Response:
        try:
            kind, payload = await job.events.get()
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        if kind == "error":
            assert isinstance(payload, ApiError)
            raise payload
        headers = {ADAPTER_HEADER: str(payload)}
        if body.stream:
            return StreamingResponse(
                _events(job, responder, body.include_usage),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        try:
            finish = await _collect(job)
        except ApiError as exc:
            return error_response(exc, headers)
        finally:
            job.cancelled.set()  # no effect once done; stops the worker if we were cancelled
        return JSONResponse(responder.whole(finish), headers=headers)


async def _collect(job: Job) -> Generation:
    while True:
        kind, payload = await job.events.get()
        if kind == "done":
            assert isinstance(payload, Generation)
            return payload
        if kind == "error":
            assert isinstance(payload, ApiError)
            raise payload


async def _events(job: Job, responder: Responder, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body; the worker stops at the next token if the client goes away."""
    try:
        if (opening := responder.opening()) is not None:
            yield sse(opening)
        while True:
            kind, payload = await job.events.get()
            if kind == "text":
                yield sse(responder.piece(str(payload)))
            elif kind == "done":
                assert isinstance(payload, Generation)
                yield sse(responder.closing(payload))
                if include_usage:
                    yield sse(responder.usage_chunk(payload))
                yield sse("[DONE]")
                return
            elif kind == "error":
                assert isinstance(payload, ApiError)
                yield sse(payload.body())
                return
    finally:
        job.cancelled.set()
