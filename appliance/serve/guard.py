"""What a request must pass before the model sees it: rate limit, bearer token, body size.

Checked in that order: the rate limit also slows down anyone guessing tokens, and the body
is read (and counted as it arrives) only for a client that may send one.
"""

import hmac
import math
import threading
import time
from pathlib import Path

from starlette.requests import Request

from appliance.serve.errors import ApiError

MAX_TRACKED_CLIENTS = 4096


class TokenFileError(ValueError):
    """The configured token file cannot serve as a token."""


def read_token(path: Path) -> str:
    """The bearer token in `path` (surrounding white space ignored)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenFileError("serve.token_file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"serve.token_file cannot be read: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise TokenFileError("serve.token_file must hold one token without white space")
    return token


def check_token(request: Request, token: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` (when one is set)."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            code="invalid_api_key",
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")


class RateLimiter:
    """A token bucket per client address: `per_minute` refill, `burst` capacity."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str, now: float | None = None) -> None:
        """429 with `Retry-After` when `client` has used its allowance."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            level, last = self._buckets.get(client, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[client] = (level, now)
                wait = math.ceil((1.0 - level) / self.rate)
                raise ApiError(
                    429,
                    f"rate limit reached for {client}: at most {self.rate * 60:g} requests per "
                    f"minute; retry in {wait} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(wait)},
                )
            self._buckets[client] = (level - 1.0, now)
            if len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [
            c
            for c, (level, last) in self._buckets.items()
            if level + (now - last) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body is too large ({size} bytes or more; the limit is {limit})",
        code="request_too_large",
    )
