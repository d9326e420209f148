"""The update blob: `APUP` magic, format version, a header, then the compressed body.

The header names every tensor with its shape, value count and byte length, the codec
parameters and the sample count, so a receiver can check everything against the global
adapter before it decodes a single value, and reject with a precise reason.

Format 1 (what every codec of format 1 still writes, byte for byte): a JSON header; body, per
tensor in header order: for top-k, uint32 flat indices (sorted, unique); then the values:
float32, float16, or (int8) one float32 scale per block followed by int8 codes.

Format 2 (written only when the codec uses an option format 1 lacks: int4 values, low-rank
factors, a shared-basis subspace or a residual top-k): the JSON header is zstd-compressed
(inflated to at most MAX_HEADER_BYTES), since at 50x and more the header of 16 tensors is a
third of the blob. Body, per tensor: the coded parts (low rank: P then Q; subspace: the
coefficients; else all values), each as in format 1 or, for int4, float32 scales then two
codes per byte; then, with a residual top-k, the sorted indices (uint16 where the tensor has
at most 65,536 values, else uint32) and float16 values of the largest remaining errors. Every
count and length follows from shape and codec, and the receiver checks them all.
"""

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
import zstandard
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from appliance.federation.codec import lowrank, subspace
from appliance.federation.codec.compression import (
    Compression,
    CompressionError,
    compress,
    decompress,
    inflate_bounded,
)
from appliance.federation.codec.quantize import (
    int4_decode,
    int4_encode,
    int8_decode,
    int8_encode,
    top_k_count,
    top_k_indices,
)
from appliance.federation.privacy_claim import DpReport
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter

MAGIC = b"APUP"
FORMAT_VERSION: Literal[1] = 1
"""The format every codec without a format-2 option writes."""
FORMAT_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1 << 20


class DecodeError(ValueError):
    """An update blob was refused; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class CodecSpec(_Strict):
    """How values are coded: precision, block size, sparsity or factoring, lossless pass."""

    values: Literal["fp32", "fp16", "int8", "int4"] = Field(
        default="int8", description="Value coding."
    )
    block: int = Field(default=64, ge=8, le=4096, description="Values per int8/int4 scale.")
    top_k_fraction: float | None = Field(
        default=None, gt=0, le=1, description="Send only this share of largest values."
    )
    compression: Compression = Field(default="zstd", description="Lossless pass on top.")
    lowrank_rank: int | None = Field(
        default=None, ge=1, le=4096, description="Send each factor as rank-q P @ Q (q < r)."
    )
    subspace_dim: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Send only the coefficients on a k-column basis both sides derive.",
    )
    subspace_basis: Literal["seed", "global"] = Field(
        default="seed",
        description="`seed`: a random basis from the round; `global`: the round's global "
        "factor (an r x r core), completed by seeded columns.",
    )
    residual_top_k_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Also send this share of the largest errors left by the coding (fp16).",
    )

    @model_validator(mode="after")
    def _options_combine(self) -> Self:
        shapes = [self.top_k_fraction, self.lowrank_rank, self.subspace_dim]
        if sum(x is not None for x in shapes) > 1:
            raise ValueError("top_k_fraction, lowrank_rank and subspace_dim exclude each other")
        if self.top_k_fraction is not None and self.residual_top_k_fraction is not None:
            raise ValueError("residual_top_k_fraction does not combine with top_k_fraction")
        if self.subspace_basis != "seed" and self.subspace_dim is None:
            raise ValueError("subspace_basis needs subspace_dim")
        return self

    @property
    def format_version(self) -> int:
        """1 where format 1 can say it (those blobs stay byte for byte as before), else 2."""
        plain = (self.lowrank_rank, self.subspace_dim, self.residual_top_k_fraction)
        return 1 if self.values != "int4" and all(x is None for x in plain) else 2

    @model_serializer(mode="wrap")
    def _format_1_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """A codec format 1 can say is written in its old shape everywhere it is written
        (update headers, plans in announcements, the round store and audit logs), so what
        older code wrote and reads stays byte for byte the same."""
        data: dict[str, object] = handler(self)
        if self.format_version == 1:
            for name in _V2_FIELDS:
                data.pop(name, None)
        return data


_V2_FIELDS = ("lowrank_rank", "subspace_dim", "subspace_basis", "residual_top_k_fraction")


class TensorEntry(_Strict):
    """One factor in the body."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+\.lora_[ab]$", max_length=200)
    shape: tuple[int, int]
    count: int = Field(ge=0)
    nbytes: int = Field(ge=0)


class UpdateHeader(_Strict):
    """Everything about an update except its values."""

    format: Literal[1, 2]
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
    basis_seed: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{16}$",
        description="Seed of the shared basis (subspace codecs): follows from the round.",
    )

    @model_validator(mode="after")
    def _body_adds_up(self) -> Self:
        if sum(t.nbytes for t in self.tensors) != self.body_bytes:
            raise ValueError("tensor byte lengths do not add up to body_bytes")
        return self

    @model_validator(mode="after")
    def _format_fits_codec(self) -> Self:
        if self.format != self.codec.format_version:
            raise ValueError(
                f"format {self.format} does not fit the codec (it is written as format "
                f"{self.codec.format_version})"
            )
        if (self.basis_seed is None) != (self.codec.subspace_dim is None):
            raise ValueError("basis_seed goes with subspace_dim, and only with it")
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
    *,
    base: GlobalAdapter | None = None,
) -> EncodedUpdate:
    """Encode deltas (only B where A is frozen) into a blob; `privacy` goes in the header.

    `base` is the round's global adapter; only `subspace_basis = "global"` needs it."""
    if spec.subspace_basis == "global" and base is None:
        raise ValueError('subspace_basis "global" needs the round\'s global adapter (base=)')
    frozen = all(d.a is None for d in deltas.values())
    seed = None
    if spec.subspace_dim is not None:
        seed = subspace.round_seed(context.round_id, context.global_version)
    entries, segments, sent, dense = [], [], {}, 0
    for name, delta in deltas.items():
        parts = {"lora_b": delta.b} if frozen else {"lora_a": delta.a, "lora_b": delta.b}
        decoded = {}
        for part, array in parts.items():
            assert array is not None
            tensor = f"{name}.{part}"
            values = np.asarray(array, np.float32)
            if spec.format_version == 1:
                segment, count, decoded[part] = _encode_values(values, spec)
            else:
                own = None if base is None else _global_factor(base, name, part)
                segment, count, decoded[part] = _encode_v2(values, spec, tensor, seed, own)
            entries.append(
                TensorEntry(name=tensor, shape=array.shape, count=count, nbytes=len(segment))
            )
            segments.append(segment)
            dense += array.size * 4
        sent[name] = Delta(decoded.get("lora_a"), decoded["lora_b"])
    body = b"".join(segments)
    header = UpdateHeader(
        format=1 if spec.format_version == 1 else 2,
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
        basis_seed=seed,
    )
    header_bytes = _header_bytes(header)
    blob = _PREFIX.pack(MAGIC, header.format, len(header_bytes)) + header_bytes
    return EncodedUpdate(blob + compress(body, spec.compression), sent, dense)


def _header_bytes(header: UpdateHeader) -> bytes:
    """Format 1: the JSON as before the format-2 fields existed (byte for byte, also without
    DP); format 2: compact JSON without defaults, zstd-compressed."""
    leave_out: set[str] = {"basis_seed"} if header.basis_seed is None else set()
    if header.privacy is None:
        leave_out.add("privacy")
    if header.format == 1:
        return header.model_dump_json(exclude=leave_out).encode()
    data = header.model_dump(mode="json", exclude=leave_out | {"codec"})
    data["codec"] = header.codec.model_dump(mode="json", exclude_defaults=True)
    text = json.dumps(data, separators=(",", ":"))
    return zstandard.ZstdCompressor(level=19).compress(text.encode())


def _global_factor(base: GlobalAdapter, name: str, part: str) -> np.ndarray | None:
    """The round's global value of one factor (None where the adapter lacks the tensor)."""
    pair = base.factors.get(name)
    if pair is None:
        return None
    return pair[0] if part == "lora_a" else pair[1]


def _encode_values(array: np.ndarray, spec: CodecSpec) -> tuple[bytes, int, np.ndarray]:
    """One factor -> (segment bytes, value count, what the receiver will decode)."""
    flat = array.ravel()
    if not np.isfinite(flat).all():
        raise ValueError("update holds NaN or infinite values; refusing to send it")
    index = top_k_indices(flat, spec.top_k_fraction) if spec.top_k_fraction else None
    values = flat if index is None else flat[index]
    coded, restored = _code(values, spec)
    reconstruction = restored if index is None else _scatter(index, restored, flat.size)
    prefix = b"" if index is None else index.astype("<u4").tobytes()
    return prefix + coded, values.size, reconstruction.reshape(array.shape)


def _encode_v2(
    array: np.ndarray,
    spec: CodecSpec,
    tensor: str,
    seed: str | None,
    global_factor: np.ndarray | None,
) -> tuple[bytes, int, np.ndarray]:
    """One factor in format 2 -> (segment bytes, value count, what the receiver decodes)."""
    if not np.isfinite(array).all():
        raise ValueError("update holds NaN or infinite values; refusing to send it")
    _check_shape_fits(tensor, array.shape, spec, ValueError)

    def code(flat: np.ndarray) -> tuple[bytes, np.ndarray]:
        return _code(flat, spec)

    if spec.lowrank_rank is not None:
        segment, restored = lowrank.factor(array, spec.lowrank_rank, code)
    elif spec.subspace_dim is not None:
        assert seed is not None
        basis = subspace.basis_for(
            spec.subspace_basis,
            seed=seed,
            tensor=tensor,
            dim=spec.subspace_dim,
            rows=array.shape[0],
            global_factor=global_factor,
        )
        segment, restored = subspace.project(array, basis, code)
    else:
        segment, flat = code(array.ravel())
        restored = flat.reshape(array.shape)
    if spec.residual_top_k_fraction is not None:
        error = (array - restored).ravel()
        index = top_k_indices(error, spec.residual_top_k_fraction)
        values = _fp16(error[index])
        segment += index.astype(_index_dtype(array.size)).tobytes() + values.tobytes()
        restored = _add_residual(restored, index, values)
    return segment, _v2_counts(array.shape, spec)[1], restored


def _fp16(values: np.ndarray) -> np.ndarray:
    """float16 of `values`, refusing what float16 cannot hold instead of sending infinities."""
    if values.size and np.abs(values).max() > np.finfo(np.float16).max:
        raise ValueError("update values exceed the fp16 range; use int8 or fp32")
    return values.astype("<f2")


def _index_dtype(size: int) -> str:
    return "<u2" if size <= 1 << 16 else "<u4"


def _add_residual(restored: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The coded part plus the sent errors at `index` (float32 adds: the same on both sides)."""
    out = restored.astype(np.float32).ravel().copy()
    out[index] = out[index] + values.astype(np.float32)
    return out.reshape(restored.shape)


def _code(values: np.ndarray, spec: CodecSpec) -> tuple[bytes, np.ndarray]:
    if spec.values == "fp32":
        return values.astype("<f4").tobytes(), values.astype(np.float32)
    if spec.values == "fp16":
        half = _fp16(values)
        return half.tobytes(), half.astype(np.float32)
    if spec.values == "int4":
        packed, scales = int4_encode(values, spec.block)
        restored = int4_decode(packed, values.size, scales, spec.block)
        return scales.astype("<f4").tobytes() + packed, restored
    codes, scales = int8_encode(values, spec.block)
    return scales.astype("<f4").tobytes() + codes.tobytes(), int8_decode(codes, scales, spec.block)


def _scatter(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.float32)
    out[index] = values
    return out


def segment_bytes(count: int, spec: CodecSpec) -> int:
    """Byte length of a format-1 segment holding `count` values under `spec`."""
    index = 4 * count if spec.top_k_fraction else 0
    return index + _coded_bytes(count, spec)


def _coded_bytes(count: int, spec: CodecSpec) -> int:
    """Byte length of `count` values coded as `spec.values` (scales included)."""
    if spec.values == "int8":
        return 4 * math.ceil(count / spec.block) + count
    if spec.values == "int4":
        return 4 * math.ceil(count / spec.block) + math.ceil(count / 2)
    return count * (4 if spec.values == "fp32" else 2)


def _v2_parts(shape: tuple[int, int], spec: CodecSpec) -> list[int]:
    """Value counts of the coded parts of one format-2 tensor (before any residual)."""
    rows, columns = shape
    if spec.lowrank_rank is not None:
        return [rows * spec.lowrank_rank, spec.lowrank_rank * columns]
    if spec.subspace_dim is not None:
        return [spec.subspace_dim * columns]
    return [rows * columns]


def _v2_counts(shape: tuple[int, int], spec: CodecSpec) -> tuple[int, int]:
    """(byte length, value count) of one format-2 tensor: both follow from shape and codec."""
    parts = _v2_parts(shape, spec)
    nbytes, count = sum(_coded_bytes(n, spec) for n in parts), sum(parts)
    if spec.residual_top_k_fraction is not None:
        size = shape[0] * shape[1]
        kept = top_k_count(size, spec.residual_top_k_fraction)
        width = 2 if _index_dtype(size) == "<u2" else 4
        nbytes, count = nbytes + kept * (width + 2), count + kept
    return nbytes, count


def _check_shape_fits(
    tensor: str, shape: tuple[int, ...], spec: CodecSpec, error: type[ValueError]
) -> None:
    """Low rank must be below the smaller side, a subspace below the row count."""
    if spec.lowrank_rank is not None and spec.lowrank_rank >= min(shape):
        raise error(
            f"{tensor}: lowrank_rank {spec.lowrank_rank} is not below the smaller side "
            f"of its {tuple(shape)} shape (the LoRA rank for B)"
        )
    if spec.subspace_dim is not None and spec.subspace_dim >= shape[0]:
        raise error(f"{tensor}: subspace_dim {spec.subspace_dim} is not below its {shape[0]} rows")


def decode_update(
    blob: bytes, base: GlobalAdapter, max_bytes: int
) -> tuple[UpdateHeader, ClientUpdate]:
    """Check an update blob against the global adapter and decode it, or raise `DecodeError`."""
    if len(blob) > max_bytes:
        raise DecodeError(f"update is {len(blob)} bytes, over the limit of {max_bytes}")
    header, offset = _read_header(blob)
    _check_tensors(header, base)
    _check_seed(header)
    try:
        body = decompress(blob[offset:], header.codec.compression, header.body_bytes)
    except CompressionError as exc:
        raise DecodeError(str(exc)) from None
    if hashlib.sha256(body).hexdigest() != header.body_sha256:
        raise DecodeError("body sha256 does not match the header")
    deltas = _decode_body(header, body, base)
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
    if version not in FORMAT_VERSIONS:
        raise DecodeError(
            f"update format version {version} is not supported (this reads "
            f"{', '.join(map(str, FORMAT_VERSIONS))})"
        )
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(blob):
        raise DecodeError(f"header length {header_len} is out of bounds")
    raw = blob[_PREFIX.size : _PREFIX.size + header_len]
    if version == 2:
        try:
            raw = inflate_bounded(raw, MAX_HEADER_BYTES)
        except CompressionError as exc:
            raise DecodeError(f"compressed header: {exc}") from None
    try:
        header = UpdateHeader.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise DecodeError(f"header is not JSON ({first['msg']})") from None
        where = ".".join(str(p) for p in first["loc"]) or "header"
        reason = first["msg"].removeprefix("Value error, ")
        raise DecodeError(f"invalid header: {where}: {reason}") from None
    if header.format != version:
        raise DecodeError(f"header says format {header.format}, the prefix {version}")
    return header, _PREFIX.size + header_len


def _check_seed(header: UpdateHeader) -> None:
    """A shared basis must come from this round's seed, or both sides decode different bases."""
    if header.basis_seed is None:
        return
    expected = subspace.round_seed(header.round_id, header.global_version)
    if header.basis_seed != expected:
        raise DecodeError(
            f"basis seed {header.basis_seed} does not follow from round {header.round_id!r} "
            f"at global version {header.global_version} ({expected})"
        )


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
        if header.format == 2:
            _check_v2_entry(entry, shape, header.codec)
            continue
        size = shape[0] * shape[1]
        dense = header.codec.top_k_fraction is None
        if entry.count > size or (dense and entry.count != size):
            raise DecodeError(f"{entry.name}: {entry.count} values for a {shape} tensor")
        if entry.nbytes != segment_bytes(entry.count, header.codec):
            raise DecodeError(
                f"{entry.name}: {entry.nbytes} bytes do not hold {entry.count} values"
            )


def _check_v2_entry(entry: TensorEntry, shape: tuple[int, int], spec: CodecSpec) -> None:
    """Format 2: the codec must fit the shape, and count and length must be what it gives."""
    _check_shape_fits(entry.name, shape, spec, DecodeError)
    nbytes, count = _v2_counts(shape, spec)
    if entry.count != count or entry.nbytes != nbytes:
        raise DecodeError(
            f"{entry.name}: {entry.count} values in {entry.nbytes} bytes, the codec gives "
            f"{count} in {nbytes} for a {shape} tensor"
        )


def _decode_body(header: UpdateHeader, body: bytes, base: GlobalAdapter) -> dict[str, Delta]:
    parts: dict[str, dict[str, np.ndarray]] = {}
    offset = 0
    for entry in header.tensors:
        segment = body[offset : offset + entry.nbytes]
        offset += entry.nbytes
        name, _, part = entry.name.rpartition(".")
        if header.format == 2:
            own = _global_factor(base, name, part)
            array = _decode_v2(entry, segment, header, own)
        else:
            array = _decode_segment(entry, segment, header.codec)
        parts.setdefault(name, {})[part] = array
    return {name: Delta(p.get("lora_a"), p["lora_b"]) for name, p in parts.items()}


def _decode_v2(
    entry: TensorEntry, segment: bytes, header: UpdateHeader, global_factor: np.ndarray | None
) -> np.ndarray:
    """One format-2 tensor, rebuilt exactly as the box's `_encode_v2` credited it."""
    spec, shape = header.codec, (entry.shape[0], entry.shape[1])
    pieces, offset = [], 0
    for count in _v2_parts(shape, spec):
        length = _coded_bytes(count, spec)
        pieces.append(_decode_values(entry.name, segment[offset : offset + length], count, spec))
        offset += length
    if spec.lowrank_rank is not None:
        q = spec.lowrank_rank
        restored = lowrank.product(pieces[0].reshape(shape[0], q), pieces[1].reshape(q, shape[1]))
    elif spec.subspace_dim is not None:
        assert header.basis_seed is not None
        basis = subspace.basis_for(
            spec.subspace_basis,
            seed=header.basis_seed,
            tensor=entry.name,
            dim=spec.subspace_dim,
            rows=shape[0],
            global_factor=global_factor,
        )
        restored = lowrank.product(basis, pieces[0].reshape(spec.subspace_dim, shape[1]))
    else:
        restored = pieces[0].reshape(shape)
    if spec.residual_top_k_fraction is not None:
        restored = _decode_residual(entry.name, segment[offset:], shape, restored)
    if not np.isfinite(restored).all():
        raise DecodeError(f"{entry.name}: values are NaN or infinite")
    return restored


def _decode_residual(
    tensor: str, segment: bytes, shape: tuple[int, int], restored: np.ndarray
) -> np.ndarray:
    """The residual top-k part: sorted unique indices in range, finite float16 values."""
    size = shape[0] * shape[1]
    dtype = _index_dtype(size)
    kept = len(segment) // (np.dtype(dtype).itemsize + 2)
    index = np.frombuffer(segment[: kept * np.dtype(dtype).itemsize], dtype=dtype)
    values = np.frombuffer(segment[kept * np.dtype(dtype).itemsize :], dtype="<f2")
    if index.size and (int(index[-1]) >= size or np.any(np.diff(index.astype(np.int64)) <= 0)):
        raise DecodeError(f"{tensor}: residual indices are out of range or not increasing")
    if not np.isfinite(values).all():
        raise DecodeError(f"{tensor}: residual values are NaN or infinite")
    return _add_residual(restored, index.astype(np.int64), values)


def _decode_values(tensor: str, segment: bytes, count: int, spec: CodecSpec) -> np.ndarray:
    """`count` values coded as `spec.values` (the segment's length is already checked)."""
    if spec.values in ("int8", "int4"):
        n_scales = math.ceil(count / spec.block)
        scales = np.frombuffer(segment[: 4 * n_scales], dtype="<f4")
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise DecodeError(f"{tensor}: {spec.values} scales are negative, NaN or infinite")
        if spec.values == "int8":
            codes = np.frombuffer(segment[4 * n_scales :], dtype=np.int8)
            values = int8_decode(codes, scales.astype(np.float32), spec.block)
        else:
            try:
                values = int4_decode(
                    segment[4 * n_scales :], count, scales.astype(np.float32), spec.block
                )
            except ValueError as exc:
                raise DecodeError(f"{tensor}: {exc}") from None
    else:
        values = np.frombuffer(segment, dtype="<f4" if spec.values == "fp32" else "<f2")
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise DecodeError(f"{tensor}: values are NaN or infinite")
    return values


def _decode_segment(entry: TensorEntry, segment: bytes, spec: CodecSpec) -> np.ndarray:
    size = entry.shape[0] * entry.shape[1]
    index = None
    if spec.top_k_fraction:
        index = np.frombuffer(segment[: 4 * entry.count], dtype="<u4")
        segment = segment[4 * entry.count :]
        if index.size and (int(index[-1]) >= size or np.any(np.diff(index.astype(np.int64)) <= 0)):
            raise DecodeError(f"{entry.name}: sparse indices are out of range or not increasing")
    values = _decode_values(entry.name, segment, entry.count, spec)
    full = values if index is None else _scatter(index, values, size)
    return full.reshape(entry.shape)
