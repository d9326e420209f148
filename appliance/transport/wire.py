"""What travels on the federation topics: versioned pydantic schemas and the chunk format.

Control messages (manifests, wants, acks) are JSON inside a signed envelope: `body` is the
exact JSON text that was signed, so a receiver verifies the bytes it was given rather than a
re-serialisation. Chunks are binary (a fixed header and the data) so a 50 MB artifact is not
inflated by base64. Every schema carries `v`; a receiver refuses versions it does not know.
"""

import base64
import binascii
import hashlib
import math
import struct
from typing import Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.config.base import TopicSafeId
from appliance.identity import BadSignatureError, NodeKey, TrustStore, UnknownSignerError
from appliance.transport.rejects import RejectedError

ARTIFACT_ID_PATTERN = r"^[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_CONTROL_BYTES = 64 * 1024
MAX_WANT_RANGES = 256

CHUNK_MAGIC = b"APC\x01"
_CHUNK_HEADER = struct.Struct(">4s16sI32s")
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size

MetaValue = str | int | float | bool


class WireModel(BaseModel):
    """Strict, closed, finite: a message with an unknown key, a wrong type or NaN is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Manifest(WireModel):
    """Describes one artifact; signed by its sender, it vouches for every byte (`sha256`)."""

    v: Literal[1] = 1
    artifact_id: str = Field(pattern=ARTIFACT_ID_PATTERN, description="Random 128-bit hex id.")
    kind: TopicSafeId = Field(description="`update`, `global_adapter`...")
    sender: TopicSafeId = Field(description="Node that signed it.")
    recipients: tuple[TopicSafeId, ...] = Field(
        min_length=1, max_length=1024, description="Nodes that must acknowledge it."
    )
    size_bytes: int = Field(ge=1, description="Exact size of the artifact.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="Hash of the whole artifact.")
    chunk_bytes: int = Field(ge=1, description="Size of every chunk but the last.")
    chunk_count: int = Field(ge=1, description="ceil(size_bytes / chunk_bytes).")
    created: float = Field(ge=0, description="Unix time the sender created it.")
    meta: dict[str, MetaValue] = Field(
        default_factory=dict, max_length=64, description="Small caller-defined facts."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.chunk_count != math.ceil(self.size_bytes / self.chunk_bytes):
            raise ValueError("chunk_count does not match size_bytes / chunk_bytes")
        return self

    def chunk_size(self, index: int) -> int:
        """Length of chunk `index` (the last one may be short)."""
        if index < self.chunk_count - 1:
            return self.chunk_bytes
        return self.size_bytes - self.chunk_bytes * (self.chunk_count - 1)


class Want(WireModel):
    """A receiver asks an artifact's sender for the chunks it still misses."""

    v: Literal[1] = 1
    artifact_id: str = Field(pattern=ARTIFACT_ID_PATTERN)
    sender: TopicSafeId = Field(description="The artifact's sender.")
    receiver: TopicSafeId = Field(description="Who asks (signs this).")
    ranges: tuple[tuple[int, int], ...] = Field(
        max_length=MAX_WANT_RANGES,
        description="Half-open chunk index ranges [start, end) still missing; empty = resend "
        "the manifest.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for start, end in self.ranges:
            if not 0 <= start < end:
                raise ValueError(f"invalid range [{start}, {end})")
        return self


class Ack(WireModel):
    """A receiver confirms it verified and took the artifact; the sender may forget it."""

    v: Literal[1] = 1
    artifact_id: str = Field(pattern=ARTIFACT_ID_PATTERN)
    sender: TopicSafeId = Field(description="The artifact's sender.")
    receiver: TopicSafeId = Field(description="Who confirms (signs this).")
    sha256: str = Field(pattern=SHA256_PATTERN, description="Hash the receiver verified.")


class Envelope(WireModel):
    """A signed control message: `signature` (base64 Ed25519) covers `body` exactly."""

    v: Literal[1] = 1
    body: str = Field(max_length=MAX_CONTROL_BYTES)
    signature: str = Field(max_length=128)


M = TypeVar("M", bound=WireModel)


def seal(message: WireModel, key: NodeKey) -> bytes:
    """Serialise and sign `message`; returns the envelope's JSON bytes."""
    body = message.model_dump_json()
    signature = base64.b64encode(key.sign(body.encode())).decode()
    return Envelope(body=body, signature=signature).model_dump_json().encode()


def open_envelope(payload: bytes, writer: str, trust: TrustStore, schema: type[M]) -> M:
    """Verify that `writer` (the topic's writer level) signed `payload`; parse its body.

    Raises `RejectedError` with reason `too_large`, `malformed`, `unknown_signer`,
    `bad_signature` or `invalid`.
    """
    if len(payload) > MAX_CONTROL_BYTES:
        raise RejectedError("too_large", f"{len(payload)} bytes > {MAX_CONTROL_BYTES}")
    try:
        envelope = Envelope.model_validate_json(payload)
    except ValidationError as exc:
        raise RejectedError("malformed", _first_error(exc)) from None
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise RejectedError("malformed", "signature is not base64") from None
    body = envelope.body.encode()
    try:
        trust.verify(writer, body, signature)
    except UnknownSignerError as exc:
        raise RejectedError("unknown_signer", str(exc)) from None
    except BadSignatureError as exc:
        raise RejectedError("bad_signature", str(exc)) from None
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        raise RejectedError("invalid", _first_error(exc)) from None


def read_sealed(payload: bytes, schema: type[M]) -> M:
    """Parse an envelope this node sealed itself (from its own outbox): no verification."""
    return schema.model_validate_json(Envelope.model_validate_json(payload).body)


def encode_chunk(artifact_id: str, index: int, data: bytes) -> bytes:
    """Binary chunk: magic, artifact id, index, sha256 of `data`, then `data`."""
    header = _CHUNK_HEADER.pack(
        CHUNK_MAGIC, bytes.fromhex(artifact_id), index, hashlib.sha256(data).digest()
    )
    return header + data


def decode_chunk(payload: bytes) -> tuple[str, int, bytes, memoryview]:
    """`(artifact_id, index, sha256, data)`; `RejectedError("malformed_chunk")` if unreadable."""
    if len(payload) < CHUNK_HEADER_BYTES:
        raise RejectedError("malformed_chunk", f"only {len(payload)} bytes, no chunk header")
    magic, raw_id, index, digest = _CHUNK_HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise RejectedError("malformed_chunk", f"unknown magic/version {magic!r}")
    return raw_id.hex(), index, digest, memoryview(payload)[CHUNK_HEADER_BYTES:]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
    return f"{loc}: {err['msg']}"
