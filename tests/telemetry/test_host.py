"""The aggregator as Sparkplug primary host, against a real Mosquitto and real SQLite."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.telemetry.host import PrimaryHost
from appliance.telemetry.sparkplug import (
    BDSEQ,
    REBIRTH,
    DataType,
    Metric,
    Payload,
    by_name,
    decode_state,
    encode,
    state_topic,
)
from appliance.telemetry.store import FleetStore, HostRow
from appliance.transport.client import MqttClient
from tests.support.mosquitto import Mosquitto
from tests.telemetry.configs import aggregator_config, edge_config
from tests.telemetry.conftest import GROUP
from tests.telemetry.observer import Observer
from tests.telemetry.trees import HEALTHY
from tests.transport.waiting import wait_for

D, B, I64 = DataType.DOUBLE, DataType.BOOLEAN, DataType.INT64
T0 = int(time.time() * 1000)  # recent: older samples would be folded into rollups at once
HostFactory = Callable[..., PrimaryHost]


def topic(message_type: str, node: str = "box9") -> str:
    return f"spBv1.0/{GROUP}/{message_type}/{node}"


def birth(bdseq: int = 3, temperature: float = 40.0, seq: int = 0) -> bytes:
    return encode(
        Payload(
            T0,
            seq,
            (
                Metric(BDSEQ, I64, bdseq),
                Metric(REBIRTH, B, False),
                Metric("Thermal/cpu/Temperature C", D, temperature, alias=1),
                Metric("Thermal/cpu/Crit C", D, 100.0, alias=2),
                Metric("Memory/Used Percent", D, 20.0, alias=3),
            ),
        )
    )


def data(seq: int, temperature: float, *, historical: bool = False, ts: int = T0 + 2_000) -> bytes:
    metric = Metric(None, D, temperature, alias=1, timestamp_ms=ts, is_historical=historical)
    return encode(Payload(ts, seq, (metric,)), datatypes=False)


def death(bdseq: int) -> bytes:
    return encode(Payload(T0 + 3_000, None, (Metric(BDSEQ, I64, bdseq),)))


class Reader:
    """Reads the host's store through its own read-only connection (committed state)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> FleetStore:
        return FleetStore(self.path, read_only=True)

    def online(self, node: str) -> bool | None:
        rows = {row.node: row for row in self().nodes()}
        return rows[node].online if node in rows else None

    def latest(self, node: str) -> dict[str, float | str | None]:
        return self().latest(node)


@pytest.fixture
def reader(tmp_path: Path) -> Reader:
    return Reader(tmp_path / "scada.sqlite")


@pytest.fixture
def box(raw_clients: Callable[[str], MqttClient]) -> MqttClient:
    """A hand-driven box (our own client: it sends whatever a test wants)."""
    return raw_clients("box9")


def test_birth_and_data_are_stored(
    hosts: HostFactory, box: MqttClient, reader: Reader, observer: Observer
) -> None:
    host = hosts()
    observer.wait(1, "host STATE", topic=state_topic("scada"))
    box.publish(topic("NBIRTH"), birth(), qos=0)
    box.publish(topic("NDATA"), data(1, 41.0), qos=0)
    box.publish(topic("NDATA"), data(2, 39.0, historical=True, ts=T0 + 1_500), qos=0)
    wait_for(lambda: host.received == 3, "three messages")
    wait_for(lambda: reader.online("box9"), "box online in the store")
    # the historical 39.0 goes into history only, never into the latest value
    wait_for(lambda: reader.latest("box9").get("Thermal/cpu/Temperature C") == 41.0, "latest")
    samples = reader().samples("box9", "Thermal/cpu/Temperature C")
    assert samples == [(T0, 40.0), (T0 + 1_500, 39.0), (T0 + 2_000, 41.0)]
    assert host.rejected == {}


def test_state_is_retained_online_and_the_will_says_offline(
    tmp_path: Path, broker: Mosquitto, observer: Observer
) -> None:
    """Host STATE (Sparkplug 3.0 host rules): JSON, QoS 1, retained; the Will has the same
    timestamp and online false, published when the host process is killed."""
    path, _ = aggregator_config(tmp_path, broker.port, "metrics_port = 0")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.telemetry.fleet_host", "--config", str(path)],
        stderr=subprocess.PIPE,
    )
    try:
        online = observer.wait(1, "STATE online", topic=state_topic("scada"))[0]
        assert (online.qos, online.retain) == (1, True)
        up, stamp = decode_state(online.payload)
        assert up is True
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        offline = observer.wait(2, "STATE offline (Will)", topic=state_topic("scada"))[1]
        assert (offline.qos, decode_state(offline.payload)) == (1, (False, stamp))
    finally:
        process.kill()
        process.wait()
    with Observer(broker.port) as late:  # retained: a later subscriber sees offline
        retained = late.wait(1, "retained STATE", topic=state_topic("scada"))[0]
        assert retained.retain and decode_state(retained.payload) == (False, stamp)


def test_seq_gap_and_replay_are_dropped_and_answered_with_rebirth(
    hosts: HostFactory, box: MqttClient, reader: Reader, observer: Observer
) -> None:
    host = hosts()
    box.publish(topic("NBIRTH"), birth(), qos=0)
    box.publish(topic("NDATA"), data(1, 41.0), qos=0)
    box.publish(topic("NDATA"), data(5, 99.0), qos=0)  # gap
    box.publish(topic("NDATA"), data(1, 98.0), qos=0)  # replayed / out of order
    rebirth = observer.wait(1, "NCMD rebirth", topic=topic("NCMD"))[0]
    assert (rebirth.qos, rebirth.retain) == (0, False)
    command = by_name(rebirth.decode().metrics)[REBIRTH]
    assert command.value is True and command.datatype == B
    wait_for(lambda: host.rejected["seq"] == 2, "both out-of-order messages rejected")
    wait_for(lambda: reader.latest("box9").get("Thermal/cpu/Temperature C") == 41.0, "commit")
    assert [v for _, v in reader().samples("box9", "Thermal/cpu/Temperature C")] == [40.0, 41.0]
    box.publish(topic("NBIRTH"), birth(temperature=50.0), qos=0)  # the box answers
    box.publish(topic("NDATA"), data(1, 51.0), qos=0)
    wait_for(lambda: reader.latest("box9").get("Thermal/cpu/Temperature C") == 51.0, "resync")


def test_bad_messages_are_rejected_with_a_reason_and_the_host_carries_on(
    hosts: HostFactory,
    box: MqttClient,
    reader: Reader,
    observer: Observer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = hosts(max_payload_bytes=2048)
    bad_birth = encode(Payload(1, 0, (Metric("x", D, 1.0),)))
    wrong_type = encode(Payload(2, 1, (Metric(None, B, True, alias=3),)))
    wrong_field = encode(Payload(2, 1, (Metric(None, B, True, alias=3),)), datatypes=False)
    nan = encode(Payload(2, 1, (Metric(None, D, float("nan"), alias=1),)), datatypes=False)
    unknown_alias = encode(Payload(2, 1, (Metric(None, D, 1.0, alias=77),)), datatypes=False)
    cases = [
        (topic("NDATA", "ghost"), data(1, 1.0), "unborn"),
        (topic("NBIRTH"), b"\x08\x96\x01\x12\xff\xff", "nbirth"),  # truncated
        (topic("NBIRTH"), b"not protobuf at all \xff\xfe", "nbirth"),
        (topic("NBIRTH"), bad_birth, "nbirth"),  # no bdSeq
        (topic("NBIRTH"), birth(seq=7), "nbirth"),
        (
            topic("NBIRTH"),
            birth() + encode(Payload(1, None, (Metric("p", DataType.STRING, "x" * 4000),))),
            "nbirth",
        ),
        (f"spBv1.0/{GROUP}/NFOO/box9", birth(), "topic"),
        (topic("NDEATH"), b"\xff", "ndeath"),
    ]
    with caplog.at_level(logging.WARNING, "appliance.telemetry.host"):
        for where, payload, _ in cases:
            box.publish(where, payload, qos=0)
        expected: dict[str, int] = {}
        for _, _, kind in cases:
            expected[kind] = expected.get(kind, 0) + 1
        wait_for(lambda: dict(host.rejected) == expected, f"rejections {expected}")
        box.publish(topic("NBIRTH"), birth(), qos=0)
        for payload in (wrong_type, wrong_field, nan, unknown_alias):
            box.publish(topic("NDATA"), payload, qos=0)
        box.publish(topic("NDATA"), data(2, 42.0), qos=0)  # the NaN one had seq 1
        wait_for(lambda: reader.latest("box9").get("Thermal/cpu/Temperature C") == 42.0, "valid")
    assert host.rejected["ndata"] == 3 and host.rejected["nonfinite"] == 1
    messages = "\n".join(record.getMessage() for record in caplog.records)
    for fragment in (
        "NDATA from ghost without a current NBIRTH",
        "rejected NBIRTH from box9: not a Sparkplug B payload",
        "rejected NBIRTH from box9: no bdSeq metric",
        "rejected NBIRTH from box9: NBIRTH seq is 7, must be 0",
        "rejected NBIRTH from box9: payload is",
        "ignored message on 'spBv1.0/plant1/NFOO/box9': unknown Sparkplug message type",
        "rejected NDATA from box9: metric 0 (alias 3): datatype BOOLEAN, but the birth said DOUBLE",
        "rejected NDATA from box9: metric 0 (alias 3): DOUBLE value sent in boolean_value",
        "box9: metric 'Thermal/cpu/Temperature C' is nan; not stored",
        "rejected NDATA from box9: metric 0 (alias 77): no datatype, and none declared in the birth",
    ):
        assert fragment in messages, fragment
    assert observer.wait(1, "rebirth asked of the unborn box", topic=topic("NCMD", "ghost"))


def test_only_the_current_sessions_ndeath_takes_a_box_offline(
    hosts: HostFactory, box: MqttClient, reader: Reader
) -> None:
    hosts()
    box.publish(topic("NBIRTH"), birth(bdseq=5), qos=0)
    wait_for(lambda: reader.online("box9"), "online")
    box.publish(topic("NDEATH"), death(4), qos=1)  # an older session's Will, delivered late
    box.publish(topic("NDATA"), data(1, 41.0), qos=0)
    wait_for(lambda: reader.latest("box9").get("Thermal/cpu/Temperature C") == 41.0, "data")
    assert reader.online("box9") is True
    box.publish(topic("NDEATH"), death(5), qos=1)
    wait_for(lambda: reader.online("box9") is False, "offline on the matching NDEATH")
    assert reader().nodes()[0].offline_reason == "NDEATH"


class Clock:
    """A settable clock for the host (silence and offline durations without waiting)."""

    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def test_silence_marks_offline_and_long_offline_raises_an_alert(
    hosts: HostFactory, box: MqttClient, reader: Reader, observer: Observer
) -> None:
    from appliance.telemetry.alerts import Thresholds

    clock = Clock()
    hosts(clock=clock, offline_after_s=60, thresholds=Thresholds(offline_alert_after_s=120))
    box.publish(topic("NBIRTH"), birth(), qos=0)
    wait_for(lambda: reader.online("box9"), "online")
    clock.ms += 61_000
    wait_for(lambda: reader.online("box9") is False, "offline after silence")
    assert reader().nodes()[0].offline_reason == "silent for 61 s"
    assert reader().active_alerts() == []
    clock.ms += 121_000
    wait_for(lambda: reader().active_alerts(), "box_offline alert")
    (alert,) = reader().active_alerts()
    assert (alert.node, alert.rule, alert.severity) == ("box9", "box_offline", "critical")
    box.publish(topic("NBIRTH"), birth(bdseq=4), qos=0)
    wait_for(lambda: not reader().active_alerts(), "alert resolved when the box is back")

    def alert_events() -> list[dict[str, str]]:
        seen = observer.where(topic=f"appliance/v1/{GROUP}/alert/scada/box9")
        return [json.loads(message.payload) for message in seen]

    # the store is updated before the resolved event reaches the observer through the broker
    wait_for(lambda: len(alert_events()) >= 2, "the resolved event")
    assert [(e["rule"], e["state"]) for e in alert_events()] == [
        ("box_offline", "firing"),
        ("box_offline", "resolved"),
    ]


def test_killed_edge_reporter_goes_offline_through_its_will(
    tmp_path: Path, broker: Mosquitto, hosts: HostFactory, reader: Reader, observer: Observer
) -> None:
    """A real reporter process, SIGKILLed: the broker publishes its NDEATH Will (QoS 1, the
    session's bdSeq) and the host marks the box offline; restarted, it is born again with
    the next bdSeq (persisted)."""
    hosts()
    path, _ = edge_config(tmp_path, broker.port, "box1", HEALTHY)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance.telemetry.reporter", "--config", str(path)],
            stderr=subprocess.DEVNULL,
        )

    process = start()
    try:
        wait_for(lambda: reader.online("box1"), "reporter born and online")
        first = observer.where(topic=topic("NBIRTH", "box1"))[-1].decode()
        wait_for(lambda: "Inventory/Model" in reader.latest("box1"), "probe metrics stored")
        process.send_signal(signal.SIGKILL)
        process.wait()
        will = observer.wait(1, "NDEATH Will", topic=topic("NDEATH", "box1"))[0]
        assert (will.qos, will.retain) == (1, False)
        bdseq = by_name(first.metrics)[BDSEQ].value
        assert by_name(will.decode().metrics)[BDSEQ].value == bdseq
        wait_for(lambda: reader.online("box1") is False, "offline through the Will")
        assert reader().nodes()[0].offline_reason == "NDEATH"
        process = start()
        wait_for(lambda: reader.online("box1"), "born again")
        again = observer.where(topic=topic("NBIRTH", "box1"))[-1].decode()
        assert by_name(again.metrics)[BDSEQ].value == bdseq + 1  # type: ignore[operator]
    finally:
        process.kill()
        process.wait()


def test_a_restarted_host_asks_live_boxes_for_a_rebirth(
    tmp_path: Path, settings: Any, edge_nodes: Callable[..., Any], reader: Reader
) -> None:
    """After a host restart the boxes' sessions are unknown: their next NDATA is answered
    with an NCMD Rebirth, the edge node re-births, and the box is online again."""
    from tests.telemetry.test_edge_node import VALUES

    node = edge_nodes("box1")
    node.update(VALUES)
    first = PrimaryHost(settings, "scada", GROUP, FleetStore(tmp_path / "scada.sqlite"))
    first.start()
    assert first.announced.wait(60)
    node.update({**VALUES, "Memory/Used Percent": (D, 76.0)})  # the box was born before
    wait_for(lambda: reader.online("box1"), "online with the first host, after a rebirth")
    first.stop()
    second = PrimaryHost(settings, "scada", GROUP, FleetStore(tmp_path / "scada.sqlite"))
    second.start()
    try:
        assert second.announced.wait(60)
        assert reader.online("box1") is True  # as the first host left it, until silence
        node.update({**VALUES, "Memory/Used Percent": (D, 77.0)})
        wait_for(lambda: second.rejected["unborn"] >= 1, "NDATA from a box unknown to it")
        wait_for(
            lambda: reader.latest("box1").get("Memory/Used Percent") == 77.0,
            "the rebirth carries the current value",
        )
        assert reader.online("box1") is True
    finally:
        second.stop()


def test_the_host_stores_its_heartbeat_and_when_it_last_heard_from_a_box(
    hosts: HostFactory, box: MqttClient, reader: Reader
) -> None:
    """Every tick refreshes the heartbeat (with the broker connection); any NBIRTH, NDATA or
    NDEATH of the current session sets the box's last seen to the host's clock."""
    clock = Clock()
    hosts(clock=clock)
    wait_for(lambda: reader().host() == HostRow("scada", T0, True, None), "heartbeat")
    box.publish(topic("NBIRTH"), birth(bdseq=5), qos=0)
    wait_for(lambda: reader.online("box9"), "online")
    clock.ms += 5_000
    box.publish(topic("NDATA"), data(1, 41.0), qos=0)
    wait_for(lambda: reader().nodes()[0].last_seen_ms == T0 + 5_000, "last seen on NDATA")
    clock.ms += 5_000
    box.publish(topic("NDEATH"), death(5), qos=1)
    wait_for(lambda: reader.online("box9") is False, "offline on NDEATH")
    assert reader().nodes()[0].last_seen_ms == T0 + 10_000
    assert reader().host() == HostRow("scada", T0 + 10_000, True, None)
