"""The receiver's on-disk state across restarts, without a broker."""

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config.mqtt import MqttSettings
from appliance.errors import ApplianceError
from appliance.identity import NodeKey, TrustStore
from tests.transport.nodes import transport_node


def test_stray_files_from_a_crash_are_removed_on_start(
    tmp_path: Path, keys: Callable[[str], NodeKey], trust: TrustStore
) -> None:
    state = tmp_path / "state"
    transfers = state / "transfers"
    for directory in ("partial", "inbox"):
        (transfers / directory).mkdir(parents=True)
    stray_partial = transfers / "partial" / f"box1.{'ab' * 16}.part"
    stray_inbox = transfers / "inbox" / f"box1.{'cd' * 16}.update"
    stray_partial.write_bytes(b"renamed away, row never committed")
    stray_inbox.write_bytes(b"moved to the inbox, crash before the commit")
    node = transport_node(keys("agg"), trust, MqttSettings(), state)  # never started
    try:
        assert node.next_event() is None  # a file without its row is not an artifact
    finally:
        node.stop()
    assert not stray_partial.exists()
    assert not stray_inbox.exists()


def test_transfer_state_that_cannot_be_opened_is_reported_to_the_operator(
    tmp_path: Path, keys: Callable[[str], NodeKey], trust: TrustStore
) -> None:
    (tmp_path / "state" / "transfers" / "transfers.sqlite").mkdir(parents=True)
    with pytest.raises(ApplianceError, match=r"transfer state unreadable: .*transfers\.sqlite"):
        transport_node(keys("agg"), trust, MqttSettings(), tmp_path / "state")
