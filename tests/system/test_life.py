"""Daemon life without systemd as PID 1: a fake NOTIFY_SOCKET listens to a real process."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG = 'role = "edge"\n[identity]\nplant_id = "p"\nnode_id = "{node}"\n'


class FakeSystemd:
    """Collects sd_notify datagrams like systemd's notify socket does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def collect(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, value: str, timeout: float = 30, count: int = 1) -> dict[str, str]:
        """The `count`-th message holding key=value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if m.get(key) == value]
            if len(found) >= count:
                return found[count - 1]
            self.collect(time.monotonic() + 0.2)
        raise AssertionError(f"no {key}={value} (x{count}) in {self.messages}")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


@pytest.fixture
def daemon(
    tmp_path: Path, systemd: FakeSystemd
) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    config = tmp_path / "edge.toml"
    config.write_text(CONFIG.format(node="box-1"))
    hang = tmp_path / "hang"
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.system.fake_daemon", str(config), str(hang)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process, config, hang
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_ready_status_and_watchdog_in_order(systemd: FakeSystemd, daemon) -> None:
    systemd.wait_for("WATCHDOG", "1")
    systemd.collect(time.monotonic() + 0.5)
    kinds = [next(iter(m)) for m in systemd.messages]
    assert kinds[0] == "EXTEND_TIMEOUT_USEC"
    assert systemd.messages[0]["STATUS"] == "loading model"
    assert systemd.messages[1] == {"READY": "1", "STATUS": "ready: box-1"}
    assert any(m.get("STATUS", "").startswith("node box-1, turn") for m in systemd.messages[2:])
    assert sum("WATCHDOG" in m for m in systemd.messages) >= 2


def test_a_hung_main_loop_stops_feeding_the_watchdog(systemd: FakeSystemd, daemon) -> None:
    process, _, hang = daemon
    systemd.wait_for("WATCHDOG", "1")
    hang.touch()
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "hanging"
    systemd.collect(time.monotonic() + 0.3)  # anything already in flight
    before = len(systemd.messages)
    systemd.collect(time.monotonic() + 1.5)  # ~15 watchdog intervals of a healthy loop
    assert systemd.messages[before:] == []


def test_sigterm_stops_cleanly_with_exit_0(systemd: FakeSystemd, daemon) -> None:
    process, _, _ = daemon
    systemd.wait_for("READY", "1")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert systemd.wait_for("STOPPING", "1")["STATUS"] == "stopping: outbox flushed"


def test_sighup_with_a_bad_config_keeps_the_running_one(systemd: FakeSystemd, daemon) -> None:
    process, config, _ = daemon
    systemd.wait_for("READY", "1")
    config.write_text(CONFIG.format(node="box-1") + "[training]\nrank = 3\n")
    process.send_signal(signal.SIGHUP)
    systemd.wait_for("READY", "1", count=2)  # sent once the reload attempt is over
    config.write_text(CONFIG.format(node="box-2"))
    process.send_signal(signal.SIGHUP)
    systemd.wait_for("READY", "1", count=3)
    deadline = time.monotonic() + 30
    while not any(m.get("STATUS", "").startswith("node box-2") for m in systemd.messages):
        assert time.monotonic() < deadline, systemd.messages
        systemd.collect(time.monotonic() + 0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    log = process.stderr.read()
    assert "configuration not reloaded, keeping the running one: " in log
    assert "training.rank: must be a power of two between 1 and 256 (got 3)" in log
    assert "configuration reloaded" in log
