"""Sparkplug B 3.0 wire format: topics, STATE messages and protobuf payloads.

Only this module touches the generated `sparkplug_b_pb2`; everything else works with the
plain `Metric`/`Payload` dataclasses below. Decoding is defensive because any client on the
broker can publish into `spBv1.0/...`: oversized, truncated or non-protobuf payloads,
datatypes we do not carry, a value in the wrong field for its datatype and out-of-range
integers all raise `SparkplugError` with a message saying which, never anything else.
"""

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from appliance.telemetry import sparkplug_b_pb2 as pb

_PbMetric = Any  # protoc's generated classes carry no static types

NAMESPACE = "spBv1.0"
NODE_MESSAGES = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
DEVICE_MESSAGES = ("DBIRTH", "DDEATH", "DDATA", "DCMD")
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
Value = int | float | bool | str | bytes | None


class SparkplugError(ValueError):
    """A topic or payload that is not valid Sparkplug B as this node understands it."""


class DataType(IntEnum):
    """Metric datatype codes of the specification (section 6.4.16)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    BYTES = 17
    FILE = 18


_INT_BITS = {
    DataType.INT8: (8, True),
    DataType.INT16: (16, True),
    DataType.INT32: (32, True),
    DataType.INT64: (64, True),
    DataType.UINT8: (8, False),
    DataType.UINT16: (16, False),
    DataType.UINT32: (32, False),
    DataType.UINT64: (64, False),
    DataType.DATETIME: (64, False),
}
_FIELD = {
    **{kind: "int_value" for kind, (bits, _) in _INT_BITS.items() if bits <= 32},
    **{kind: "long_value" for kind, (bits, _) in _INT_BITS.items() if bits == 64},
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.BOOLEAN: "boolean_value",
    DataType.STRING: "string_value",
    DataType.TEXT: "string_value",
    DataType.UUID: "string_value",
    DataType.BYTES: "bytes_value",
    DataType.FILE: "bytes_value",
}


class Metric(NamedTuple):
    """One metric value; `name` is sent in births, `alias` alone in data messages.

    A named tuple rather than a frozen dataclass: the host builds one per value received,
    tens of thousands a second, and tuple construction is several times cheaper.
    """

    name: str | None
    datatype: DataType
    value: Value
    alias: int | None = None
    timestamp_ms: int | None = None
    is_historical: bool = False


class Payload(NamedTuple):
    """A decoded payload; `seq` is None only in NDEATH."""

    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class Topic:
    """`spBv1.0/<group>/<message_type>/<edge_node>[/<device>]`."""

    group: str
    message_type: str
    edge_node: str
    device: str | None = None


def node_topic(group: str, message_type: str, edge_node: str) -> str:
    return f"{NAMESPACE}/{group}/{message_type}/{edge_node}"


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        raise SparkplugError(f"not a Sparkplug B node or device topic: {topic!r}")
    _, group, message_type, edge_node, *device = parts
    if message_type not in NODE_MESSAGES + DEVICE_MESSAGES:
        raise SparkplugError(f"unknown Sparkplug message type {message_type!r} in {topic!r}")
    if (message_type in DEVICE_MESSAGES) != bool(device):
        raise SparkplugError(f"{message_type} topic with the wrong number of levels: {topic!r}")
    if not group or not edge_node or any(not part for part in device):
        raise SparkplugError(f"empty topic level in {topic!r}")
    return Topic(group, message_type, edge_node, device[0] if device else None)


# ----------------------------------------------------------------- STATE (JSON)
def encode_state(online: bool, timestamp_ms: int) -> bytes:
    return json.dumps({"online": online, "timestamp": timestamp_ms}).encode()


def decode_state(data: bytes) -> tuple[bool, int]:
    """`(online, timestamp_ms)` of a host application STATE message."""
    try:
        state = json.loads(data)
    except ValueError as exc:
        raise SparkplugError(f"STATE payload is not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise SparkplugError("STATE payload is not a JSON object")
    online, timestamp = state.get("online"), state.get("timestamp")
    if not isinstance(online, bool):
        raise SparkplugError(f"STATE 'online' must be a boolean (got {online!r})")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        raise SparkplugError(f"STATE 'timestamp' must be a non-negative integer ({timestamp!r})")
    return online, timestamp


# ----------------------------------------------------------------- payloads
def encode(payload: Payload, *, datatypes: bool = True) -> bytes:
    """Serialize; `datatypes=False` leaves them out (the spec's advice for NDATA and NCMD)."""
    message = pb.Payload()  # type: ignore[attr-defined]
    if payload.timestamp_ms is not None:
        message.timestamp = payload.timestamp_ms
    if payload.seq is not None:
        message.seq = payload.seq
    for metric in payload.metrics:
        _encode_metric(message.metrics.add(), metric, datatypes)
    return bytes(message.SerializeToString())


def _encode_metric(out: _PbMetric, metric: Metric, datatypes: bool) -> None:
    if metric.name is not None:
        out.name = metric.name
    if metric.alias is not None:
        out.alias = metric.alias
    if metric.timestamp_ms is not None:
        out.timestamp = metric.timestamp_ms
    if datatypes:
        out.datatype = int(metric.datatype)
    if metric.is_historical:
        out.is_historical = True
    if metric.value is None:
        out.is_null = True
        return
    value = metric.value
    if metric.datatype in _INT_BITS:
        bits, signed = _INT_BITS[metric.datatype]
        value = _to_wire_int(int(value), bits, signed, metric)
    setattr(out, _FIELD[metric.datatype], value)


def _to_wire_int(value: int, bits: int, signed: bool, metric: Metric) -> int:
    low, high = _int_range(bits, signed)
    if not low <= value <= high:
        raise SparkplugError(f"metric {metric.name!r}: {value} does not fit {metric.datatype.name}")
    return value & ((1 << (32 if bits <= 32 else 64)) - 1)  # two's complement on the wire


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


Known = Mapping[int | str, DataType]
"""Datatypes declared in a birth, by alias and by name: data messages may omit theirs."""


def decode(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, known: Known | None = None
) -> Payload:
    """Decode and check a payload; raises SparkplugError naming the first problem.

    A metric without a datatype takes the one `known` holds for its alias (or name); with
    no such entry it is an error, as is a value carried in the wrong field for its type.
    """
    if len(data) > max_bytes:
        raise SparkplugError(f"payload is {len(data)} bytes, over the {max_bytes}-byte limit")
    message = pb.Payload()  # type: ignore[attr-defined]
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise SparkplugError(f"not a Sparkplug B payload (protobuf: {exc})") from None
    seq = message.seq if message.HasField("seq") else None
    if seq is not None and seq > 255:
        raise SparkplugError(f"seq {seq} is outside 0..255")
    metrics = tuple(
        _decode_metric(index, metric, known or {}) for index, metric in enumerate(message.metrics)
    )
    timestamp = message.timestamp if message.HasField("timestamp") else None
    return Payload(timestamp, seq, metrics)


def _decode_metric(index: int, metric: _PbMetric, known: Known) -> Metric:
    name = metric.name if metric.HasField("name") else None
    alias = metric.alias if metric.HasField("alias") else None
    if name is None and alias is None:
        raise SparkplugError(f"metric {index} has neither a name nor an alias")
    where = f"metric {index} ({name if name is not None else f'alias {alias}'})"
    datatype = _datatype(metric, name, alias, known, where)
    field = metric.WhichOneof("value")
    value: Value = None
    if not metric.is_null and field is not None:
        if field != _FIELD[datatype]:
            raise SparkplugError(f"{where}: {datatype.name} value sent in {field}")
        value = getattr(metric, field)
        if datatype in _INT_BITS:
            value = _from_wire_int(int(value), *_INT_BITS[datatype], where)
    return Metric(
        name=name,
        datatype=datatype,
        value=value,
        alias=alias,
        timestamp_ms=metric.timestamp if metric.HasField("timestamp") else None,
        is_historical=metric.is_historical,
    )


def _datatype(
    metric: _PbMetric, name: str | None, alias: int | None, known: Known, where: str
) -> DataType:
    declared = known.get(alias) if alias is not None else None
    if declared is None and name is not None:
        declared = known.get(name)
    if not metric.HasField("datatype"):
        if declared is None:
            raise SparkplugError(f"{where}: no datatype, and none declared in the birth")
        return declared
    try:
        datatype = DataType(metric.datatype)
    except ValueError:
        raise SparkplugError(f"{where}: unsupported datatype {metric.datatype}") from None
    if declared is not None and datatype != declared:
        raise SparkplugError(
            f"{where}: datatype {datatype.name}, but the birth said {declared.name}"
        )
    return datatype


def _from_wire_int(raw: int, bits: int, signed: bool, where: str) -> int:
    width = 32 if bits <= 32 else 64
    value = raw - (1 << width) if signed and raw >= 1 << (width - 1) else raw
    low, high = _int_range(bits, signed)
    if not low <= value <= high:
        raise SparkplugError(f"{where}: {value} is out of range for a {bits}-bit integer")
    return value


def is_finite(metric: Metric) -> bool:
    """False for NaN or infinite floats (never stored or compared against thresholds)."""
    return not (isinstance(metric.value, float) and not math.isfinite(metric.value))


def by_name(metrics: Iterable[Metric]) -> dict[str, Metric]:
    return {metric.name: metric for metric in metrics if metric.name is not None}
