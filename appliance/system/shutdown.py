"""Flushing the outbox on SIGTERM, before the daemon disconnects.

Everything in the outbox is already on disk (it is committed before it is sent), so a stop
loses nothing either way. Flushing is about latency: a message queued just before the stop
(an update's announcement, an evaluation, a round's close) should reach the broker now rather
than at the next start. The daemon therefore waits, for a bounded time and only while
connected, until no queued *message* is left. Artifacts are not waited for: they are done only
when every recipient has acknowledged them, which may take hours; they resume on the next
start.
"""

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 15.0
"""Well inside the units' TimeoutStopSec (after up to 120 s for the trainer to stop)."""


class _Outbox(Protocol):
    def messages(self, exclude: set[int], limit: int) -> Sequence[object]: ...


class _Client(Protocol):
    @property
    def connected(self) -> bool: ...


class _Transport(Protocol):
    """What flushing needs of a `TransportNode` (read-only, so any outbox/client fits)."""

    @property
    def outbox(self) -> _Outbox: ...

    @property
    def client(self) -> _Client: ...


def flush_outbox(
    transport: _Transport,
    timeout_s: float = FLUSH_TIMEOUT_S,
    poll_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Wait until the outbox holds no message, the connection is gone or `timeout_s` passed.

    Returns how many messages are left (they stay on disk and go out after the next start).
    """
    deadline = clock() + timeout_s
    while True:
        pending = len(transport.outbox.messages(set(), 1000))
        if pending == 0:
            log.info("outbox flushed")
            return 0
        if not transport.client.connected or clock() >= deadline:
            why = "not connected" if not transport.client.connected else f"{timeout_s:g} s passed"
            log.info(
                "stopping with %d queued message(s) kept on disk for the next start (%s)",
                pending,
                why,
            )
            return pending
        time.sleep(poll_s)
