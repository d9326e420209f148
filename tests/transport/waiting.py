"""Wait for a condition with a generous deadline: no test asserts on durations."""

import time
from collections.abc import Callable

DEFAULT_TIMEOUT_S = 60.0


def wait_for(
    condition: Callable[[], object], what: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> None:
    """Poll `condition` until it is truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
