"""The Sparkplug B codec: round trips through the project's schema, and refusals."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.telemetry import sparkplug_b_pb2 as pb
from appliance.telemetry.sparkplug import (
    DataType,
    Metric,
    Payload,
    SparkplugError,
    decode,
    decode_state,
    encode,
    encode_state,
    parse_topic,
)

RANGES = {
    DataType.INT8: (-128, 127),
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT8: (0, 255),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}


@pytest.mark.parametrize("datatype", list(RANGES), ids=lambda d: d.name)
def test_integers_round_trip_at_their_limits(datatype: DataType) -> None:
    for value in RANGES[datatype]:
        metric = Metric("m", datatype, value, alias=1)
        (back,) = decode(encode(Payload(1, 0, (metric,)))).metrics
        assert back.value == value and back.datatype == datatype
    with pytest.raises(SparkplugError, match="does not fit"):
        encode(Payload(1, 0, (Metric("m", datatype, RANGES[datatype][1] + 1),)))


@given(st.floats(allow_nan=False), st.text(max_size=50), st.booleans())
def test_scalars_round_trip(number: float, text: str, flag: bool) -> None:
    metrics = (
        Metric("d", DataType.DOUBLE, number, alias=1, timestamp_ms=5, is_historical=True),
        Metric("s", DataType.STRING, text, alias=2),
        Metric("b", DataType.BOOLEAN, flag, alias=3),
        Metric("n", DataType.DOUBLE, None, alias=4),
        Metric("raw", DataType.BYTES, b"\x00\x01", alias=5),
    )
    assert decode(encode(Payload(7, 3, metrics))) == Payload(7, 3, metrics)


def test_data_messages_may_leave_out_datatypes_declared_in_the_birth() -> None:
    data = encode(Payload(1, 4, (Metric(None, DataType.INT16, -5, alias=9),)), datatypes=False)
    message = pb.Payload.FromString(data)
    assert not message.metrics[0].HasField("datatype") and not message.metrics[0].HasField("name")
    assert decode(data, known={9: DataType.INT16}).metrics[0].value == -5
    with pytest.raises(SparkplugError, match=r"metric 0 \(alias 9\): no datatype"):
        decode(data)


def test_refusals_name_the_problem() -> None:
    def refused(data: bytes, match: str, **kwargs: object) -> None:
        with pytest.raises(SparkplugError, match=match):
            decode(data, **kwargs)  # type: ignore[arg-type]

    refused(b"\x00" * 20, "over the 10-byte limit", max_bytes=10)
    refused(b"\x0a\x05abc", "not a Sparkplug B payload")
    refused(encode(Payload(1, 0, ())) + b"\x18\x80\x02", r"seq 256 is outside 0\.\.255")
    no_name = pb.Payload(metrics=[pb.Payload.Metric(datatype=10, double_value=1.0)])
    refused(no_name.SerializeToString(), "neither a name nor an alias")
    template = pb.Payload(metrics=[pb.Payload.Metric(name="t", datatype=19)])
    refused(template.SerializeToString(), "unsupported datatype 19")
    wrong = pb.Payload(metrics=[pb.Payload.Metric(name="x", datatype=10, string_value="hot")])
    refused(wrong.SerializeToString(), "DOUBLE value sent in string_value")
    big = pb.Payload(metrics=[pb.Payload.Metric(name="x", datatype=1, int_value=200)])
    refused(big.SerializeToString(), "out of range for a 8-bit integer")


def test_topics_and_state() -> None:
    topic = parse_topic("spBv1.0/plant1/NDATA/box1")
    assert (topic.group, topic.message_type, topic.edge_node, topic.device) == (
        "plant1",
        "NDATA",
        "box1",
        None,
    )
    assert parse_topic("spBv1.0/plant1/DDATA/box1/dev").device == "dev"
    for bad in (
        "spBv1.0/plant1/NDATA",
        "spAv1.0/p/NDATA/b",
        "spBv1.0/p/NDATA/b/extra",
        "spBv1.0/p/DDATA/b",
        "spBv1.0//NDATA/b",
    ):
        with pytest.raises(SparkplugError):
            parse_topic(bad)
    assert decode_state(encode_state(True, 5)) == (True, 5)
    for bad_state in (b"{", b"[]", b'{"online": "yes", "timestamp": 1}', b'{"online": true}'):
        with pytest.raises(SparkplugError):
            decode_state(bad_state)
