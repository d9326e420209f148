"""The global adapter on its way down: a delta to the version a box has, not the whole file.

A full global adapter carries A and B in fp32 (1.48 MB for rank 8 on the built-in model), yet
A is frozen and derived from the seed and B moves little in a round. The delta carries only
B_new - B_base per tensor, blockwise int8 (one float32 scale per block), zstd-compressed, in a
blob `APGD` + version + JSON header + body.

No drift: the aggregator *defines* the new global as what a box rebuilds from the delta
(`quantized_global`: base + decoded step), saves that, and the header names the sha256 of that
file; a box rebuilds it bit for bit (the same float32 additions), writes it with the same
metadata and checks the file's sha256 before it installs anything. The base is identified by a
digest of its factors, so a box that holds another version (or none) is found out before a
single value is decoded and asks for the full copy instead.
"""

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.config.lora import LoraSpec
from appliance.federation.codec.compression import CompressionError, compress, decompress
from appliance.federation.codec.quantize import int8_decode, int8_encode
from appliance.federation.updates import Factors, GlobalAdapter

MAGIC = b"APGD"
FORMAT_VERSION: Literal[1] = 1
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1 << 20
DEFAULT_BLOCK = 64


class DeltaError(ValueError):
    """A global delta was refused; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DeltaTensor(_Strict):
    """One B factor's step in the body."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$", max_length=200)
    shape: tuple[int, int]
    nbytes: int = Field(ge=0)


class DeltaHeader(_Strict):
    """Everything about a global delta except its values."""

    format: Literal[1]
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The base model.")
    round_id: str = Field(min_length=1, max_length=64)
    from_version: int = Field(ge=0)
    from_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="factors_digest(base).")
    from_lora: LoraSpec | None = Field(
        default=None, description="The LoRA shape, to rebuild version 0 (set only for it)."
    )
    to_version: int = Field(ge=1)
    to_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The rebuilt global file.")
    block: int = Field(ge=8, le=4096)
    tensors: list[DeltaTensor] = Field(min_length=1, max_length=100_000)
    body_bytes: int = Field(ge=0)
    body_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class GlobalStep:
    """The int8 step from a base to a new global, per tensor, and what it rebuilds."""

    base: GlobalAdapter
    segments: dict[str, bytes]
    rebuilt: Factors


def factors_digest(adapter: GlobalAdapter) -> str:
    """sha256 over alpha and every factor's name, shape and float32 bytes, in name order:
    identifies a version's content whatever file it came from."""
    digest = hashlib.sha256(struct.pack("<d?", adapter.alpha, adapter.frozen_a))
    for name in sorted(adapter.factors):
        for part in adapter.factors[name]:
            array = np.ascontiguousarray(part, dtype="<f4")
            digest.update(f"{name}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def can_step(base: GlobalAdapter, target: Factors) -> bool:
    """Whether a delta can carry `target` from `base`: A frozen and unchanged, same tensors."""
    if not base.frozen_a or set(target) != set(base.factors):
        return False
    return all(
        np.array_equal(target[name][0], a) and target[name][1].shape == b.shape
        for name, (a, b) in base.factors.items()
    )


def quantized_step(base: GlobalAdapter, target: Factors, block: int) -> GlobalStep:
    """Quantize target B - base B per tensor; `rebuilt` is what every receiver gets back."""
    segments, rebuilt = {}, {}
    for name, (a, b) in base.factors.items():
        step = np.asarray(target[name][1], np.float32) - b
        if not np.isfinite(step).all():
            raise ValueError(f"{name}: the new global adapter holds NaN or infinite values")
        codes, scales = int8_encode(step, block)
        segments[name] = scales.astype("<f4").tobytes() + codes.tobytes()
        restored = int8_decode(codes, scales, block).reshape(b.shape)
        rebuilt[name] = (a, (b + restored).astype(np.float32))
    return GlobalStep(base, segments, rebuilt)


def encode_delta(
    step: GlobalStep,
    *,
    model_sha256: str,
    round_id: str,
    to_version: int,
    to_sha256: str,
    lora: LoraSpec | None,
    block: int,
) -> bytes:
    """The blob; `lora` is needed (and sent) only when the base is version 0."""
    names = sorted(step.segments)
    body = b"".join(step.segments[n] for n in names)
    header = DeltaHeader(
        format=FORMAT_VERSION,
        model_sha256=model_sha256,
        round_id=round_id,
        from_version=step.base.version,
        from_digest=factors_digest(step.base),
        from_lora=lora if step.base.version == 0 else None,
        to_version=to_version,
        to_sha256=to_sha256,
        block=block,
        tensors=[
            DeltaTensor(name=n, shape=step.base.factors[n][1].shape, nbytes=len(step.segments[n]))
            for n in names
        ],
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    raw = header.model_dump_json(exclude_none=True).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw + compress(body, "zstd")


def read_header(blob: bytes, max_bytes: int) -> tuple[DeltaHeader, int]:
    """The header and where the body starts, or `DeltaError` (nothing decoded yet)."""
    if len(blob) > max_bytes:
        raise DeltaError(f"global delta is {len(blob)} bytes, over the limit of {max_bytes}")
    if len(blob) < _PREFIX.size:
        raise DeltaError(f"global delta is truncated ({len(blob)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise DeltaError(f"not a global delta (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise DeltaError(f"global delta format {version} is not supported (this is 1)")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(blob):
        raise DeltaError(f"header length {header_len} is out of bounds")
    try:
        header = DeltaHeader.model_validate_json(blob[_PREFIX.size : _PREFIX.size + header_len])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise DeltaError(f"invalid delta header: {where}: {first['msg']}") from None
    return header, _PREFIX.size + header_len


def apply_delta(blob: bytes, base: GlobalAdapter, max_bytes: int) -> GlobalAdapter:
    """The new global adapter rebuilt on `base`, or `DeltaError` with the reason."""
    header, offset = read_header(blob, max_bytes)
    return apply_body(header, blob[offset:], base)


def apply_body(header: DeltaHeader, data: bytes, base: GlobalAdapter) -> GlobalAdapter:
    """What `apply_delta` does once the header is read: the compressed body `data` on `base`."""
    if header.from_version != base.version or header.from_digest != factors_digest(base):
        raise DeltaError(
            f"the delta is to v{header.from_version} as the aggregator has it; this box's "
            f"v{base.version} differs"
        )
    _check_tensors(header, base)
    try:
        body = decompress(data, "zstd", header.body_bytes)
    except CompressionError as exc:
        raise DeltaError(str(exc)) from None
    if hashlib.sha256(body).hexdigest() != header.body_sha256:
        raise DeltaError("delta body sha256 does not match the header")
    factors: Factors = {}
    start = 0
    for entry in header.tensors:
        segment = body[start : start + entry.nbytes]
        start += entry.nbytes
        a, b = base.factors[entry.name]
        step = _decode_segment(entry, segment, header.block)
        factors[entry.name] = (a, (b + step).astype(np.float32))
    return GlobalAdapter(header.to_version, factors, base.alpha, base.frozen_a)


def _check_tensors(header: DeltaHeader, base: GlobalAdapter) -> None:
    names = [t.name for t in header.tensors]
    if len(set(names)) != len(names) or set(names) != set(base.factors):
        raise DeltaError("delta tensors do not match the base global adapter")
    for entry in header.tensors:
        shape = base.factors[entry.name][1].shape
        if tuple(entry.shape) != shape:
            raise DeltaError(f"{entry.name}: shape {entry.shape} != base B {shape}")
        count = shape[0] * shape[1]
        if entry.nbytes != 4 * math.ceil(count / header.block) + count:
            raise DeltaError(f"{entry.name}: {entry.nbytes} bytes do not hold {count} values")
    if sum(t.nbytes for t in header.tensors) != header.body_bytes:
        raise DeltaError("delta tensor byte lengths do not add up to body_bytes")


def _decode_segment(entry: DeltaTensor, segment: bytes, block: int) -> np.ndarray:
    count = entry.shape[0] * entry.shape[1]
    n_scales = math.ceil(count / block)
    scales = np.frombuffer(segment[: 4 * n_scales], dtype="<f4").astype(np.float32)
    codes = np.frombuffer(segment[4 * n_scales :], dtype=np.int8)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise DeltaError(f"{entry.name}: int8 scales are negative, NaN or infinite")
    values = int8_decode(codes, scales, block)
    if not np.isfinite(values).all():
        raise DeltaError(f"{entry.name}: values are NaN or infinite")
    return values.reshape(entry.shape)
