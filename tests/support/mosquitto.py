"""A real Mosquitto broker for tests: own config, own directory, free loopback port.

    broker = Mosquitto(tmp_path / "broker", max_packet_size=2_000_000, persistence=True)
    broker.start()          # returns once the port accepts connections
    broker.restart()        # same port, same persistence directory
    broker.stop()           # SIGTERM (Mosquitto saves its persistence file), then waits

Use it as a context manager, or through a fixture that calls `stop()`, so the process is always
killed at teardown, even when a test fails. The broker log is in `broker.log_file`.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")
START_TIMEOUT_S = 20.0


def _command(config_file: Path) -> list[str]:
    """Mosquitto, killed by the kernel if the test process dies (`setpriv --pdeathsig`)."""
    command = [MOSQUITTO, "-c", str(config_file)]
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    """TLS on the listener; with `require_certificate`, clients must present a cert."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False


@dataclass
class Mosquitto:
    """One broker process; configuration is fixed at construction, the port across restarts."""

    directory: Path
    port: int = field(default_factory=free_port)
    max_packet_size: int | None = None
    persistence: bool = False
    tls: BrokerTls | None = None
    acl_file: Path | None = None
    allow_anonymous: bool = True
    extra_config: tuple[str, ...] = ()
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file = self.directory / "mosquitto.conf"
        self.log_file = self.directory / "mosquitto.log"
        self.persistence_dir = self.directory / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.config_file.write_text(self._config())

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            "user root" if os.geteuid() == 0 else "",  # else Mosquitto drops to 'mosquitto'
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"log_dest file {self.log_file}",
            "log_type all",
            "log_timestamp_format %H:%M:%S",
            "max_queued_messages 100000",
            "max_inflight_messages 20",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                # as the plant broker (packaging/mosquitto/appliance.conf): save at each change
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                "use_identity_as_username "
                + ("true" if self.tls.use_identity_as_username else "false"),
            ]
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines += list(self.extra_config)
        return "\n".join(line for line in lines if line) + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "Mosquitto":
        """Start the broker and wait until its port accepts TCP connections."""
        if self.running:
            raise RuntimeError("broker already running")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                _command(self.config_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()[-4000:]}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (persistence is written on the way out); SIGKILL if it does not exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without saving anything."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
