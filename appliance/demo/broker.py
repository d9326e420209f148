"""A private Mosquitto for the demo: loopback only, its own config and port."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from appliance.errors import ApplianceError

START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start Mosquitto on a free loopback port; (process, port)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise ApplianceError("the demo needs Mosquitto: apt-get install mosquitto")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "user root" if os.geteuid() == 0 else "",
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                f"log_dest file {directory / 'mosquitto.log'}",
                "max_packet_size 2000000",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise ApplianceError(f"Mosquitto did not start; see {directory / 'mosquitto.log'}")
