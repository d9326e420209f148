"""The real edge daemon (`appliance edge run`, tiny model, real broker) under a fake
NOTIFY_SOCKET: loading, READY, WATCHDOG from the main loop, SIGHUP with a bad config keeps the
running one, SIGTERM flushes the outbox and exits 0 with STOPPING=1."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.system.test_life import FakeSystemd, systemd

__all__ = ["systemd"]  # fixture


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def edge_toml(tmp_path: Path, model: Path, port: int, extra: str = "") -> str:
    state = tmp_path / "state"
    (tmp_path / "trust").mkdir(exist_ok=True)
    return f"""role = "edge"
[identity]
plant_id = "plant1"
node_id = "box-7"
private_key_file = "{state}/keys/node.key"
trust_dir = "{tmp_path}/trust"
[model]
path = "{model}"
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_max_delay_s = 1
[paths]
state_dir = "{state}"
spool_dir = "{state}/spool"
[health]
probes = ["memory"]
probe_interval_s = 3600
{extra}"""


def test_edge_daemon_life_under_a_service_manager(
    tmp_path: Path, tiny_f32: Path, broker: Mosquitto, systemd: FakeSystemd
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(edge_toml(tmp_path, tiny_f32, broker.port))
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    env.pop("JOURNAL_STREAM", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "edge", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = systemd.wait_for("READY", "1", timeout=120)
        assert systemd.messages[0]["STATUS"] == "loading the model"
        assert "EXTEND_TIMEOUT_USEC" in systemd.messages[0]
        assert "records" in ready["STATUS"]  # the service's own status line
        systemd.wait_for("WATCHDOG", "1", count=2)

        config.write_text(edge_toml(tmp_path, tiny_f32, broker.port, "[training]\nrank = 3\n"))
        process.send_signal(signal.SIGHUP)
        systemd.wait_for("READY", "1", count=2, timeout=60)
        assert process.poll() is None

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert systemd.wait_for("STOPPING", "1")["STATUS"].startswith("stopping")
    assert process.stderr is not None
    log = process.stderr.read()
    assert "configuration not reloaded, keeping the running one: " in log
    assert "training.rank: must be a power of two" in log
    assert "outbox flushed" in log or "kept on disk for the next start" in log
