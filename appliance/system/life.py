"""A daemon's life under systemd: start-up, readiness, watchdog, status, stop and reload.

The watchdog is fed only by the main loop calling `tick()`: if the loop hangs, the pings stop
and systemd restarts the service. (A timer thread that pings on its own would hide a hang.)
Signals only set flags; the main loop acts on them at a safe point: SIGTERM stops taking new
work and leaves the loop, SIGHUP asks for the configuration to be read again.
"""

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from appliance.errors import ConfigError
from appliance.system.notify import Notifier, watchdog_interval_s

log = logging.getLogger(__name__)
T = TypeVar("T")


class DaemonLife:
    """What the main loop of `appliance edge run` / `aggregator run` reports and obeys."""

    def __init__(
        self, notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self._notify = notifier or Notifier()
        self._clock = clock
        self._interval = watchdog_interval_s()
        self._last_ping = float("-inf")
        self._status = ""
        self.stopping = False
        self.reload_requested = False

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT -> stop; SIGHUP -> reload (handled by the main loop)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the current step, then stopping", signal.Signals(signum).name
        )
        self.stopping = True

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_requested = True

    def loading(self, what: str, expected_s: float) -> None:
        """Tell systemd that start-up goes on (EXTEND_TIMEOUT_USEC) and why."""
        self._notify.send(EXTEND_TIMEOUT_USEC=int(expected_s * 1_000_000), STATUS=what)
        log.info("%s", what)

    def ready(self, status: str) -> None:
        """Start-up is done: READY=1 with a first status line."""
        self._status = status
        self._notify.send(READY=1, STATUS=status)
        self._last_ping = self._clock()

    def tick(self, status: str | None = None) -> None:
        """Called by each turn of the main loop: feeds the watchdog, updates the status line."""
        now = self._clock()
        fields: dict[str, str | int] = {}
        if status is not None and status != self._status:
            self._status = status
            fields["STATUS"] = status
        if self._interval is not None and now - self._last_ping >= self._interval:
            fields["WATCHDOG"] = 1
            self._last_ping = now
        if fields:
            self._notify.send(**fields)

    def stopping_now(self, status: str) -> None:
        """STOPPING=1 with what is being finished."""
        self._notify.send(STOPPING=1, STATUS=status)
        log.info("%s", status)

    def take_reload(self, load: Callable[[], T], current: T) -> T:
        """On a pending SIGHUP, load the config again; keep `current` if the new one is bad."""
        if not self.reload_requested:
            return current
        self.reload_requested = False
        self._notify.send(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1_000_000))
        try:
            fresh = load()
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            fresh = current
        else:
            log.info("configuration reloaded")
        self._notify.send(READY=1, STATUS=self._status)
        return fresh
