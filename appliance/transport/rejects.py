"""Why an inbound message was refused, and how often.

Every refusal has a short stable reason (`bad_signature`, `replay`, ...) that is both the
counter name and the first words of the log line, so an operator can grep the journal for
what the counters show.
"""

import logging
import threading
from collections import Counter


class RejectedError(Exception):
    """An inbound message failed a check; `reason` is the counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Counters:
    """Thread-safe named counters (rejections, drops, deliveries) for tests and telemetry."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def record_rejection(
    log: logging.Logger, counters: Counters, what: str, topic: str, exc: RejectedError
) -> None:
    """Log one warning line naming the reason, then count it as `rejected.<reason>`."""
    log.warning("rejected %s on %s: %s: %s", what, topic, exc.reason, exc.detail)
    counters.inc(f"rejected.{exc.reason}")
