"""The receiver's on-disk state across restarts, without a broker."""

from collections.abc import Callable
from pathlib import Path

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import TransferSettings
from appliance.identity import NodeKey, TrustStore
from appliance.transport.client import MqttClient
from appliance.transport.receiver import Receiver
from appliance.transport.topics import Topics


def test_stray_files_from_a_crash_are_removed_on_start(
    tmp_path: Path, keys: Callable[[str], NodeKey], trust: TrustStore
) -> None:
    state = tmp_path / "state"
    for directory in ("partial", "inbox"):
        (state / directory).mkdir(parents=True)
    stray_partial = state / "partial" / f"box1.{'ab' * 16}.part"
    stray_inbox = state / "inbox" / f"box1.{'cd' * 16}.update"
    stray_partial.write_bytes(b"renamed away, row never committed")
    stray_inbox.write_bytes(b"moved to the inbox, crash before the commit")
    client = MqttClient(MqttSettings(), "agg")  # never started: no broker needed
    receiver = Receiver(
        client,
        lambda artifact: None,
        key=keys("agg"),
        trust=trust,
        topics=Topics("plant1"),
        settings=TransferSettings(),
        state_dir=state,
    )
    receiver.close()
    assert not stray_partial.exists()
    assert not stray_inbox.exists()
