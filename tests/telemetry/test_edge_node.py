"""Sparkplug B 3.0 edge-node conformance, against a real Mosquitto.

Each test names the normative statements (the specification's `tck-id-...` assertions) it
checks. Messages are observed with `mosquitto_sub` (independent of the project's client)
and decoded with the project's schema.
"""

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.telemetry.bdseq import BdSeqFile
from appliance.telemetry.edge_node import EdgeNode
from appliance.telemetry.sparkplug import (
    BDSEQ,
    REBIRTH,
    DataType,
    Metric,
    Payload,
    by_name,
    encode,
    encode_state,
    state_topic,
)
from appliance.transport.client import MqttClient
from tests.support.mosquitto import Mosquitto
from tests.telemetry.conftest import GROUP
from tests.telemetry.observer import Observer, Seen
from tests.transport.waiting import wait_for

NodeFactory = Callable[..., EdgeNode]
D, B, S = DataType.DOUBLE, DataType.BOOLEAN, DataType.STRING
VALUES = {
    "Thermal/cpu/Temperature C": (D, 45.0),
    "Memory/Used Percent": (D, 25.0),
    "Appliance/Training State": (S, "idle"),
    "SMART/sda/Failing": (B, False),
}
NBIRTH = f"spBv1.0/{GROUP}/NBIRTH/box1"
NDATA = f"spBv1.0/{GROUP}/NDATA/box1"
NDEATH = f"spBv1.0/{GROUP}/NDEATH/box1"
NCMD = f"spBv1.0/{GROUP}/NCMD/box1"


def _known(birth: Seen) -> dict[int | str, DataType]:
    known: dict[int | str, DataType] = {}
    for metric in birth.decode().metrics:
        if metric.alias is not None:
            known[metric.alias] = metric.datatype
    return known


def _names(birth: Seen) -> dict[int, str]:
    return {m.alias: m.name for m in birth.decode().metrics if m.alias is not None and m.name}


def _birth_with(observer: Observer, values: dict[str, object]) -> Seen:
    """The first NBIRTH that declares all of `values` (an earlier one may have had none)."""

    def found() -> Seen | None:
        for seen in observer.where(topic=NBIRTH):
            if set(values) <= set(by_name(seen.decode().metrics)):
                return seen
        return None

    wait_for(found, "an NBIRTH with the metrics")
    seen = found()
    assert seen is not None
    return seen


def _rebirth_command() -> bytes:
    return encode(Payload(1, None, (Metric(REBIRTH, DataType.BOOLEAN, True),)))


def test_nbirth_contents(edge_nodes: NodeFactory, observer: Observer) -> None:
    """tck-id-topics-nbirth-topic, -nbirth-qos (0), -nbirth-retained (false),
    tck-id-payloads-nbirth-seq (0), -nbirth-bdseq, -nbirth-rebirth-req,
    tck-id-payloads-nbirth-timestamp, tck-id-payloads-metric-datatype-req,
    tck-id-payloads-alias-uniqueness, tck-id-payloads-name-requirement."""
    node = edge_nodes("box1")
    node.update(VALUES)
    birth = _birth_with(observer, VALUES)
    assert (birth.qos, birth.retain) == (0, False)
    payload = birth.decode()
    assert payload.seq == 0 and payload.timestamp_ms is not None
    metrics = by_name(payload.metrics)
    assert metrics[BDSEQ].datatype == DataType.INT64 and metrics[BDSEQ].value == 0
    assert (metrics[REBIRTH].datatype, metrics[REBIRTH].value) == (DataType.BOOLEAN, False)
    for name, (datatype, value) in VALUES.items():
        assert (metrics[name].datatype, metrics[name].value) == (datatype, value)
        assert metrics[name].timestamp_ms is not None
    aliases = [m.alias for m in payload.metrics if m.alias is not None]
    assert len(aliases) == len(set(aliases)) == len(VALUES)


def test_nbirth_follows_ncmd_subscription_and_clean_start(
    edge_nodes: NodeFactory, observer: Observer, broker: Mosquitto
) -> None:
    """tck-id-message-flow-edge-node-ncmd-subscribe (NCMD subscribed before NBIRTH),
    tck-id-principles-persistence-clean-session-50 (Clean Start), tck-id-topics-ndeath-will
    (NDEATH registered as the Will, QoS 1, not retained); read from the broker's log."""
    edge_nodes("box1")
    observer.wait(1, "NBIRTH", topic=NBIRTH)
    log = broker.log_text()
    assert "as box1-sparkplug (p5, c1, k5)" in log  # MQTT 5, Clean Start
    will = log.split("as box1-sparkplug (p5, c1, k5).\n", 1)[1].splitlines()[:2]
    assert will[0].endswith("(r0, q1).") and will[1].endswith(NDEATH)  # Will: QoS 1, no retain
    subscribed = log.index(f"\t{NCMD} (QoS 1)")
    born = log.index(f"Received PUBLISH from box1-sparkplug (d0, q0, r0, m0, '{NBIRTH}'")
    assert subscribed < born


def test_ndata_by_exception_with_deadbands(edge_nodes: NodeFactory, observer: Observer) -> None:
    """tck-id-topics-ndata-qos (0), -ndata-retained (false), tck-id-payloads-ndata-seq-inc,
    report by exception: unchanged values and moves within the deadband send nothing;
    NDATA carries aliases without names or datatypes (tck-id-payloads-metric-datatype-not-req)."""
    node = edge_nodes("box1", deadbands={"Thermal/": 1.0})
    node.update(VALUES)
    birth = _birth_with(observer, VALUES)
    names = _names(birth)
    node.update(VALUES)  # unchanged
    node.update({**VALUES, "Thermal/cpu/Temperature C": (D, 45.9)})  # within 1.0
    node.update(
        {**VALUES, "Thermal/cpu/Temperature C": (D, 45.9), "Memory/Used Percent": (D, 26.0)}
    )
    first = observer.wait(1, "first NDATA", topic=NDATA)[0]
    assert (first.qos, first.retain) == (0, False)
    payload = first.decode(_known(birth))
    assert payload.seq == 1
    assert [(names[m.alias], m.value) for m in payload.metrics] == [("Memory/Used Percent", 26.0)]
    raw = first.decode(_known(birth)).metrics[0]
    assert raw.name is None
    node.update(
        {**VALUES, "Thermal/cpu/Temperature C": (D, 47.5), "Memory/Used Percent": (D, 26.0)}
    )
    second = observer.wait(2, "second NDATA", topic=NDATA)[1].decode(_known(birth))
    assert second.seq == 2  # nothing was sent in between
    assert [(names[m.alias], m.value) for m in second.metrics] == [
        ("Thermal/cpu/Temperature C", 47.5)
    ]


def test_seq_wraps_from_255_to_0(edge_nodes: NodeFactory, observer: Observer) -> None:
    """tck-id-payloads-sequence-num-incrementing: seq grows by one per message, 255 -> 0."""
    node = edge_nodes("box1")
    node.update(VALUES)
    _birth_with(observer, VALUES)
    for step in range(1, 262):
        node.update({**VALUES, "Memory/Used Percent": (D, float(step))})
    data = observer.wait(261, "261 NDATA", topic=NDATA)
    seqs = [seen.decode({1: D, 2: D, 3: B, 4: S}).seq for seen in data]
    assert seqs == [*range(1, 256), *range(0, 6)]


def test_ncmd_rebirth_is_answered_with_a_new_birth(
    edge_nodes: NodeFactory, observer: Observer, raw_clients: Callable[[str], MqttClient]
) -> None:
    """tck-id-operational-behavior-edge-node-rebirth (NCMD Node Control/Rebirth => NBIRTH with
    the same bdSeq, seq 0, current values); bad NCMDs are logged and change nothing."""
    node = edge_nodes("box1", max_payload_bytes=1024)
    node.update(VALUES)
    first = _birth_with(observer, VALUES).decode()
    node.update({**VALUES, "Memory/Used Percent": (D, 30.0)})
    observer.wait(1, "NDATA", topic=NDATA)
    host = raw_clients("scada")
    for bad in (
        b"\xff\xff\xff garbage",
        encode(Payload(1, None, (Metric(REBIRTH, DataType.STRING, "yes"),))),
        encode(Payload(1, None, (Metric("Node Control/Reboot", DataType.BOOLEAN, True),))),
        encode(Payload(1, None, (Metric(REBIRTH, B, True), Metric("pad", S, "x" * 2000)))),
    ):
        host.publish(NCMD, bad, qos=0)
    births_before = len(observer.where(topic=NBIRTH))
    host.publish(NCMD, _rebirth_command(), qos=0)
    births = observer.wait(births_before + 1, "second NBIRTH", topic=NBIRTH)
    assert len(births) == births_before + 1  # the bad commands caused none
    again = births[-1].decode()
    assert again.seq == 0
    assert by_name(again.metrics)[BDSEQ].value == by_name(first.metrics)[BDSEQ].value
    assert by_name(again.metrics)["Memory/Used Percent"].value == 30.0
    node.update({**VALUES, "Memory/Used Percent": (D, 31.0)})
    after = observer.wait(2, "NDATA after rebirth", topic=NDATA)[-1].decode(_known(births[-1]))
    assert after.seq == 1


def test_state_gating_and_historical_replay(
    edge_nodes: NodeFactory,
    observer: Observer,
    raw_clients: Callable[[str], MqttClient],
    broker: Mosquitto,
) -> None:
    """tck-id-operational-behavior-edge-node-intial-establishment (no NBIRTH before the
    primary host is online), host offline => NDEATH, disconnect and a new session (next
    bdSeq), a STATE older than the last seen is ignored; store and forward: kept data
    replayed with is_historical after the next NBIRTH."""
    node = edge_nodes("box1", primary_host_id="scada")
    host = raw_clients("scada")
    node.update(VALUES)
    node.update({**VALUES, "Memory/Used Percent": (D, 40.0)})
    wait_for(lambda: len(node._history) == 1, "data kept while no host is online")
    assert observer.where(topic=NBIRTH) == []
    host.publish(state_topic("scada"), encode_state(True, 1000), retain=True)
    birth = observer.wait(1, "NBIRTH after STATE online", topic=NBIRTH)[0]
    known, names = _known(birth), _names(birth)
    replay = observer.wait(1, "historical NDATA", topic=NDATA)[0].decode(known)
    assert replay.seq == 1
    # never reported before, so every metric was kept, with the value of that moment
    assert {names[m.alias]: (m.value, m.is_historical) for m in replay.metrics} == {
        **{name: (value, True) for name, (_, value) in VALUES.items()},
        "Memory/Used Percent": (40.0, True),
    }
    assert replay.metrics[0].timestamp_ms is not None
    assert replay.metrics[0].timestamp_ms < birth.decode().timestamp_ms  # type: ignore[operator]

    host.publish(state_topic("scada"), encode_state(False, 2000), retain=True)
    death = observer.wait(1, "NDEATH when the host goes offline", topic=NDEATH)[0]
    first_bdseq = by_name(birth.decode().metrics)[BDSEQ].value
    assert isinstance(first_bdseq, int)
    assert by_name(death.decode().metrics)[BDSEQ].value == first_bdseq
    wait_for(
        lambda: broker.log_text().count("as box1-sparkplug (p5, c1, k5)") == 2, "a new session"
    )
    host.publish(state_topic("scada"), encode_state(True, 1500), retain=True)  # stale: ignored
    node.update({**VALUES, "Memory/Used Percent": (D, 50.0)})
    wait_for(lambda: len(node._history) == 1, "data kept while the host is offline")
    assert len(observer.where(topic=NBIRTH)) == 1
    host.publish(state_topic("scada"), encode_state(True, 3000), retain=True)
    births = observer.wait(2, "NBIRTH after the host returned", topic=NBIRTH)
    assert by_name(births[-1].decode().metrics)[BDSEQ].value == first_bdseq + 1
    data = observer.wait(2, "second replay", topic=NDATA)
    again = data[-1].decode(_known(births[-1]))
    assert again.seq == 1 and again.metrics[0].is_historical and again.metrics[0].value == 50.0


def test_bdseq_increments_per_connect_and_matches_the_will(
    edge_nodes: NodeFactory, observer: Observer, broker: Mosquitto, tmp_path: Path
) -> None:
    """tck-id-payloads-ndeath-bdseq / -nbirth-bdseq-repeat: every new CONNECT has the next
    bdSeq, and its NBIRTH carries the same; the broker publishes the NDEATH Will (QoS 1,
    not retained) when the connection drops."""
    edge_nodes("box1").update(VALUES)
    _birth_with(observer, VALUES)
    broker.kill()
    broker.start()
    with Observer(broker.port) as fresh:
        birth = fresh.wait(1, "NBIRTH after reconnect", topic=NBIRTH)[-1].decode()
    bdseq = by_name(birth.metrics)[BDSEQ].value
    assert isinstance(bdseq, int) and bdseq >= 1
    assert (tmp_path / "box1" / "sparkplug-bdseq").read_text() == f"{bdseq + 1}\n"


def test_bdseq_file_survives_restarts_and_wraps(tmp_path: Path) -> None:
    """tck-id-payloads-bdseq: 0..255, +1 per connect, wraps; the file survives restarts;
    an unreadable or corrupt file starts again at 0 (logged)."""
    path = tmp_path / "sparkplug-bdseq"
    assert [BdSeqFile(path).next() for _ in range(3)] == [0, 1, 2]
    path.write_text("254\n")
    counter = BdSeqFile(path)
    assert [counter.next() for _ in range(3)] == [254, 255, 0]
    path.write_text("banana")
    assert BdSeqFile(path).next() == 0
    assert path.read_text() == "1\n"


def test_new_metric_set_is_announced_with_a_rebirth(
    edge_nodes: NodeFactory, observer: Observer
) -> None:
    """tck-id-payloads-ndata: NDATA may only carry metrics declared in the NBIRTH, so a new
    metric (a disk plugged in) triggers a new NBIRTH with the same bdSeq."""
    node = edge_nodes("box1")
    node.update(VALUES)
    _birth_with(observer, VALUES)
    node.update({**VALUES, "SMART/sdb/Failing": (B, False)})
    _birth_with(observer, {**VALUES, "SMART/sdb/Failing": None})
    assert observer.where(topic=NDATA) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_at_the_probe_model(value: float) -> None:
    """The edge never sends NaN: probe readings with NaN/inf fail validation (see runner)."""
    from appliance.telemetry.readings import READING

    with pytest.raises(ValueError, match="finite"):
        READING.validate_python(
            {
                "probe": "cpu",
                "load_1m": value,
                "load_5m": 0,
                "load_15m": 0,
                "cpu_count": 1,
                "freq_mhz": [],
                "core_throttle_count": None,
                "package_throttle_count": None,
                "errors": [],
            }
        )


def test_graceful_stop_publishes_the_ndeath_itself(
    edge_nodes: NodeFactory, observer: Observer
) -> None:
    """A clean DISCONNECT discards the Will, so a stopping node publishes its NDEATH first
    (tck-id-operational-behavior-edge-node-termination); NDEATH carries no seq."""
    node = edge_nodes("box1")
    node.update(VALUES)
    birth = _birth_with(observer, VALUES).decode()
    node.stop()
    death = observer.wait(1, "NDEATH on stop", topic=NDEATH)[0]
    payload = death.decode()
    assert (death.qos, payload.seq) == (1, None)
    assert by_name(payload.metrics)[BDSEQ].value == by_name(birth.metrics)[BDSEQ].value
