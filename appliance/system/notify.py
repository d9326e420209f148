"""The systemd notification protocol (sd_notify), spoken directly over the socket.

It is one datagram per message to `$NOTIFY_SOCKET`, so we do not need libsystemd for it; when
the variable is absent (not under systemd, or in a test) every call is a no-op.
"""

import os
import socket


class Notifier:
    """Sends `KEY=value` lines to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]  # abstract namespace

    @property
    def enabled(self) -> bool:
        """True under a service manager that listens."""
        return bool(self._address)

    def send(self, **fields: str | int) -> bool:
        """Send fields (`send(READY=1, STATUS="...")`); False when nobody listens."""
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError:
                return False
        return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's `WatchdogSec` for this process, or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
