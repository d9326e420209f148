"""Sparkplug payloads, STATE messages, config files, spool lines and adapter GGUF files: any
mutation or random input is parsed into a valid value or refused with the parser's own error
(`SparkplugError`, `ConfigError`, `ValueError`/`DataError`, `AdapterError`) naming the
problem. Nothing else escapes."""

import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config.loading import load_config
from appliance.data.records import DataError, parse_record, read_records
from appliance.errors import AdapterError, ConfigError
from appliance.llm.adapters import read_adapter, write_adapter
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
from tests.fuzz.mutations import EXAMPLES, hostile, json_values, mutated

WORK = Path(tempfile.mkdtemp(prefix="fuzz-files-"))

# --------------------------------------------------------------------- Sparkplug B
BIRTH = encode(
    Payload(
        1_700_000_000_000,
        0,
        (
            Metric("bdSeq", DataType.INT64, 3),
            Metric("Memory/Used Percent", DataType.DOUBLE, 42.5, alias=1),
            Metric("Appliance/Training State", DataType.STRING, "idle", alias=2),
            Metric("SMART/sda/Failing", DataType.BOOLEAN, False, alias=3),
            Metric("Disk/Count", DataType.UINT32, 4, alias=4, timestamp_ms=1_700_000_000_001),
        ),
    )
)
KNOWN = {1: DataType.DOUBLE, 2: DataType.STRING, 3: DataType.BOOLEAN, 4: DataType.UINT32}


@given(hostile(BIRTH), st.booleans())
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_sparkplug_payloads(data: bytes, with_known: bool) -> None:
    try:
        payload = decode(data, max_bytes=4096, known=KNOWN if with_known else None)
    except SparkplugError as exc:
        assert str(exc)
        return
    assert payload.seq is None or 0 <= payload.seq <= 255
    for metric in payload.metrics:
        assert isinstance(metric.datatype, DataType)


@given(st.one_of(mutated(encode_state(True, 1_700_000_000_000)), json_values.map(repr).map(str.encode)))
@settings(max_examples=EXAMPLES, deadline=None)
def test_sparkplug_state(data: bytes) -> None:
    try:
        online, timestamp = decode_state(data)
    except SparkplugError:
        return
    assert isinstance(online, bool) and timestamp >= 0


@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ["spBv1.0", "plant", "NBIRTH", "NDATA", "NDEATH", "NCMD", "DDATA", "STATE", "box", "", "+"]
), max_size=6).map("/".join))
@settings(max_examples=EXAMPLES, deadline=None)
def test_sparkplug_topics(topic: str) -> None:
    with contextlib.suppress(SparkplugError):
        parse_topic(topic)


# --------------------------------------------------------------------- config files
CONFIG = f"""role = "edge"
[identity]
plant_id = "plant-1"
node_id = "box-1"
private_key_file = "{WORK}/box.key"
trust_dir = "{WORK}/trust"
[training]
rank = 8
targets = ["attn_q", "attn_v"]
[privacy]
enabled = true
clip_norm = 0.5
noise_multiplier = 1.1
epsilon_budget = 8.0
[mqtt]
host = "localhost"
port = 1883
""".encode()


def test_the_valid_config_loads() -> None:
    path = WORK / "valid.toml"
    path.write_bytes(CONFIG)
    assert load_config(path).privacy.enabled  # type: ignore[union-attr]


@given(hostile(CONFIG))
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_config_files(data: bytes) -> None:
    path = WORK / "config.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


# --------------------------------------------------------------------- spool lines
LINES = [b'{"text": "pump 3 bearing temperature 81 C, replaced seal"}\n',
         b'{"prompt": "Why did line 2 stop?", "completion": "Jammed feeder."}\n']


@given(st.sampled_from(LINES).flatmap(hostile))
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_spool_lines(raw: bytes) -> None:
    try:
        record = parse_record(raw, 1)
    except ValueError as exc:
        assert str(exc)
        return
    assert (record.text or "").strip() or (record.prompt and record.completion)


@given(st.lists(st.sampled_from(LINES).flatmap(hostile), max_size=8))
@settings(max_examples=EXAMPLES // 2, deadline=None)
def test_spool_files(lines: list[bytes]) -> None:
    path = WORK / "spool.jsonl"
    path.write_bytes(b"".join(lines))
    try:
        result = read_records(path)
    except DataError as exc:
        assert "no usable record" in str(exc)
        return
    assert result.records


# --------------------------------------------------------------------- adapter GGUF files
def _adapter() -> bytes:
    rng = np.random.default_rng(3)
    factors = {
        f"blk.{i}.attn_q.weight": (
            rng.normal(size=(2, 16)).astype(np.float32),
            rng.normal(size=(16, 2)).astype(np.float32),
        )
        for i in range(2)
    }
    path = write_adapter(WORK / "valid.gguf", factors, 4.0, "llama", {"appliance.round": "r1"})
    return path.read_bytes()


ADAPTER = _adapter()


@given(hostile(ADAPTER))
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_adapter_files(data: bytes) -> None:
    path = WORK / "adapter.gguf"
    path.write_bytes(data)
    try:
        adapter = read_adapter(path)
    except AdapterError as exc:
        assert str(exc).startswith(str(path))
        return
    assert adapter.alpha > 0 and math.isfinite(adapter.alpha)
    for a, b in adapter.factors.values():
        assert np.isfinite(a).all() and np.isfinite(b).all()
        assert a.shape[0] == b.shape[1]
