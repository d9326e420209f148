"""The update blob: `APUP` magic, format version, a JSON header, then the compressed body.

The header names every tensor with its shape, value count and byte length, the codec
parameters and the sample count, so a receiver can check everything against the global
adapter before it decodes a single value, and reject with a precise reason.

Body, per tensor in header order: for top-k, uint32 flat indices (sorted, unique); then the
values: float32, float16, or (int8) one float32 scale per block followed by int8 codes.
"""

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.federation.codec.compression import (
    Compression,
    CompressionError,
    compress,
    decompress,
)
from appliance.federation.codec.quantize import int8_decode, int8_encode, top_k_indices
from appliance.federation.privacy_claim import DpReport
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter

MAGIC = b"APUP"
FORMAT_VERSION: Literal[1] = 1
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1 << 20


class DecodeError(ValueError):
    """An update blob was refused; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class CodecSpec(_Strict):
    """How values are coded: precision, block size, sparsity, lossless compression."""

    values: Literal["fp32", "fp16", "int8"] = Field(default="int8", description="Value coding.")
    block: int = Field(default=64, ge=8, le=4096, description="Values per int8 scale.")
    top_k_fraction: float | None = Field(
        default=None, gt=0, le=1, description="Send only this share of largest values."
    )
    compression: Compression = Field(default="zstd", description="Lossless pass on top.")


class TensorEntry(_Strict):
    """One factor in the body."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+\.lora_[ab]$", max_length=200)
    shape: tuple[int, int]
    count: int = Field(ge=0)
    nbytes: int = Field(ge=0)


class UpdateHeader(_Strict):
    """Everything about an update except its values."""

    format: Literal[1]
    node_id: str = Field(min_length=1, max_length=64)
    round_id: str = Field(min_length=1, max_length=64)
    base_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    global_version: int = Field(ge=0)
    sample_count: int = Field(ge=1)
    frozen_a: bool
    codec: CodecSpec
    tensors: list[TensorEntry] = Field(min_length=1, max_length=100_000)
    body_bytes: int = Field(ge=0)
    body_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    privacy: DpReport | None = Field(
        default=None, description="The box's DP mechanism and epsilon (None: DP off)."
    )

    @model_validator(mode="after")
    def _body_adds_up(self) -> Self:
        if sum(t.nbytes for t in self.tensors) != self.body_bytes:
            raise ValueError("tensor byte lengths do not add up to body_bytes")
        return self


@dataclass(frozen=True)
class EncodedUpdate:
    """A blob ready to send, what the aggregator will reconstruct from it, and its size."""

    blob: bytes
    sent: dict[str, Delta]
    dense_fp32_bytes: int

    @property
    def ratio(self) -> float:
        """How many times smaller than the dense fp32 values."""
        return self.dense_fp32_bytes / len(self.blob)


@dataclass(frozen=True)
class RoundContext:
    """Which round, base model and global version an update belongs to."""

    node_id: str
    round_id: str
    base_sha256: str
    global_version: int


def encode_update(
    deltas: dict[str, Delta],
    sample_count: int,
    spec: CodecSpec,
    context: RoundContext,
    privacy: DpReport | None = None,
) -> EncodedUpdate:
    """Encode deltas (only B where A is frozen) into a blob; `privacy` goes in the header."""
    frozen = all(d.a is None for d in deltas.values())
    entries, segments, sent, dense = [], [], {}, 0
    for name, delta in deltas.items():
        parts = {"lora_b": delta.b} if frozen else {"lora_a": delta.a, "lora_b": delta.b}
        decoded = {}
        for part, array in parts.items():
            assert array is not None
            segment, count, decoded[part] = _encode_values(np.asarray(array, np.float32), spec)
            entries.append(
                TensorEntry(
                    name=f"{name}.{part}", shape=array.shape, count=count, nbytes=len(segment)
                )
            )
            segments.append(segment)
            dense += array.size * 4
        sent[name] = Delta(decoded.get("lora_a"), decoded["lora_b"])
    body = b"".join(segments)
    header = UpdateHeader(
        format=FORMAT_VERSION,
        node_id=context.node_id,
        round_id=context.round_id,
        base_sha256=context.base_sha256,
        global_version=context.global_version,
        sample_count=sample_count,
        frozen_a=frozen,
        codec=spec,
        tensors=entries,
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        privacy=privacy,
    )
    # without DP the header stays byte-identical to the one before the field existed
    text = header.model_dump_json(exclude={"privacy"} if privacy is None else None)
    header_bytes = text.encode()
    blob = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    return EncodedUpdate(blob + compress(body, spec.compression), sent, dense)


def _encode_values(array: np.ndarray, spec: CodecSpec) -> tuple[bytes, int, np.ndarray]:
    """One factor -> (segment bytes, value count, what the receiver will decode)."""
    flat = array.ravel()
    if not np.isfinite(flat).all():
        raise ValueError("update holds NaN or infinite values; refusing to send it")
    if spec.values == "fp16" and flat.size and np.abs(flat).max() > np.finfo(np.float16).max:
        raise ValueError("update values exceed the fp16 range; use int8 or fp32")
    index = top_k_indices(flat, spec.top_k_fraction) if spec.top_k_fraction else None
    values = flat if index is None else flat[index]
    coded, restored = _code(values, spec)
    reconstruction = restored if index is None else _scatter(index, restored, flat.size)
    prefix = b"" if index is None else index.astype("<u4").tobytes()
    return prefix + coded, values.size, reconstruction.reshape(array.shape)


def _code(values: np.ndarray, spec: CodecSpec) -> tuple[bytes, np.ndarray]:
    if spec.values == "fp32":
        return values.astype("<f4").tobytes(), values.astype(np.float32)
    if spec.values == "fp16":
        half = values.astype("<f2")
        return half.tobytes(), half.astype(np.float32)
    codes, scales = int8_encode(values, spec.block)
    return scales.astype("<f4").tobytes() + codes.tobytes(), int8_decode(codes, scales, spec.block)


def _scatter(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.float32)
    out[index] = values
    return out


def segment_bytes(count: int, spec: CodecSpec) -> int:
    """Byte length of a segment holding `count` values under `spec`."""
    index = 4 * count if spec.top_k_fraction else 0
    if spec.values == "int8":
        return index + 4 * math.ceil(count / spec.block) + count
    return index + count * (4 if spec.values == "fp32" else 2)


def decode_update(
    blob: bytes, base: GlobalAdapter, max_bytes: int
) -> tuple[UpdateHeader, ClientUpdate]:
    """Check an update blob against the global adapter and decode it, or raise `DecodeError`."""
    if len(blob) > max_bytes:
        raise DecodeError(f"update is {len(blob)} bytes, over the limit of {max_bytes}")
    header, offset = _read_header(blob)
    _check_tensors(header, base)
    try:
        body = decompress(blob[offset:], header.codec.compression, header.body_bytes)
    except CompressionError as exc:
        raise DecodeError(str(exc)) from None
    if hashlib.sha256(body).hexdigest() != header.body_sha256:
        raise DecodeError("body sha256 does not match the header")
    deltas = _decode_body(header, body)
    meta: dict[str, str | int | float] = {
        "round_id": header.round_id,
        "global_version": header.global_version,
    }
    if header.privacy is not None:
        meta["dp_epsilon"] = header.privacy.epsilon
    return header, ClientUpdate(header.node_id, header.sample_count, deltas, meta)


def _read_header(blob: bytes) -> tuple[UpdateHeader, int]:
    if len(blob) < _PREFIX.size:
        raise DecodeError(f"update is truncated ({len(blob)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise DecodeError(f"not an update (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise DecodeError(
            f"update format version {version} is not supported (this is {FORMAT_VERSION})"
        )
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(blob):
        raise DecodeError(f"header length {header_len} is out of bounds")
    raw = blob[_PREFIX.size : _PREFIX.size + header_len]
    try:
        header = UpdateHeader.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise DecodeError(f"header is not JSON ({first['msg']})") from None
        where = ".".join(str(p) for p in first["loc"]) or "header"
        reason = first["msg"].removeprefix("Value error, ")
        raise DecodeError(f"invalid header: {where}: {reason}") from None
    return header, _PREFIX.size + header_len


def _check_tensors(header: UpdateHeader, base: GlobalAdapter) -> None:
    if header.frozen_a != base.frozen_a:
        raise DecodeError(
            f"update has frozen_a={header.frozen_a}, the round's adapter has {base.frozen_a}"
        )
    expected = {}
    for name, (a, b) in base.factors.items():
        expected[f"{name}.lora_b"] = b.shape
        if not base.frozen_a:
            expected[f"{name}.lora_a"] = a.shape
    names = [t.name for t in header.tensors]
    if len(set(names)) != len(names) or set(names) != set(expected):
        missing, extra = set(expected) - set(names), set(names) - set(expected)
        raise DecodeError(
            "tensors do not match the global adapter"
            + (f"; missing {sorted(missing)[:3]}" if missing else "")
            + (f"; unexpected {sorted(extra)[:3]}" if extra else "")
            + ("; duplicated names" if len(set(names)) != len(names) else "")
        )
    for entry in header.tensors:
        shape = expected[entry.name]
        if tuple(entry.shape) != shape:
            raise DecodeError(f"{entry.name}: shape {entry.shape} != global adapter {shape}")
        size = shape[0] * shape[1]
        dense = header.codec.top_k_fraction is None
        if entry.count > size or (dense and entry.count != size):
            raise DecodeError(f"{entry.name}: {entry.count} values for a {shape} tensor")
        if entry.nbytes != segment_bytes(entry.count, header.codec):
            raise DecodeError(
                f"{entry.name}: {entry.nbytes} bytes do not hold {entry.count} values"
            )


def _decode_body(header: UpdateHeader, body: bytes) -> dict[str, Delta]:
    parts: dict[str, dict[str, np.ndarray]] = {}
    offset = 0
    for entry in header.tensors:
        segment = body[offset : offset + entry.nbytes]
        offset += entry.nbytes
        array = _decode_segment(entry, segment, header.codec)
        name, _, part = entry.name.rpartition(".")
        parts.setdefault(name, {})[part] = array
    return {name: Delta(p.get("lora_a"), p["lora_b"]) for name, p in parts.items()}


def _decode_segment(entry: TensorEntry, segment: bytes, spec: CodecSpec) -> np.ndarray:
    size = entry.shape[0] * entry.shape[1]
    index = None
    if spec.top_k_fraction:
        index = np.frombuffer(segment[: 4 * entry.count], dtype="<u4")
        segment = segment[4 * entry.count :]
        if index.size and (int(index[-1]) >= size or np.any(np.diff(index.astype(np.int64)) <= 0)):
            raise DecodeError(f"{entry.name}: sparse indices are out of range or not increasing")
    if spec.values == "int8":
        n_scales = math.ceil(entry.count / spec.block)
        scales = np.frombuffer(segment[: 4 * n_scales], dtype="<f4")
        codes = np.frombuffer(segment[4 * n_scales :], dtype=np.int8)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise DecodeError(f"{entry.name}: int8 scales are negative, NaN or infinite")
        values = int8_decode(codes, scales.astype(np.float32), spec.block)
    else:
        values = np.frombuffer(segment, dtype="<f4" if spec.values == "fp32" else "<f2")
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise DecodeError(f"{entry.name}: values are NaN or infinite")
    full = values if index is None else _scatter(index, values, size)
    return full.reshape(entry.shape)
