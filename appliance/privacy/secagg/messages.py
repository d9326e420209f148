"""Secure-aggregation messages and the masked-update blob.

Small messages travel in the transport's signed envelope on `msg/<sender>/<kind>`:

    secagg_key     box -> aggregator   MaskKey: the box's X25519 key for the round, signed
                                       with its Ed25519 identity key (inner signature)
    secagg_keys    aggregator -> boxes KeySet: the MaskKeys of the round, relayed unchanged;
                                       each box checks every inner signature itself, so the
                                       aggregator cannot substitute a key
    secagg_commit  aggregator -> boxes ReportingSet: who reported and who dropped
    secagg_reveal  box -> aggregator   SeedReveal: the seeds shared with dropped boxes only

The masked update is an artifact of kind `masked_update` (dense, 4 bytes per coordinate).
"""

import base64
import binascii
import json
import struct
from typing import Literal, Self

import numpy as np
from pydantic import Field, ValidationError, model_validator

from appliance.config.base import TopicSafeId
from appliance.federation.messages import ROUND_ID, SHA256
from appliance.identity import NodeKey, TrustStore
from appliance.identity.trust import BadSignatureError, UnknownSignerError
from appliance.privacy.secagg.encoding import Layout, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.masks import PUBLIC_KEY_BYTES, SEED_BYTES, digest
from appliance.transport.wire import WireModel as Message

KEY_B64 = r"^[A-Za-z0-9+/]{43}=$"
"""Base64 of 32 bytes (X25519 public keys, seeds)."""
SIGNATURE_B64 = r"^[A-Za-z0-9+/]{86}==$"
"""Base64 of 64 bytes (Ed25519 signatures)."""
MAX_KEYS = 200
"""A key set must fit one control message (64 KiB): about 300 bytes per box."""
_KEY_CONTEXT = "appliance/secagg/v1/mask-key"

MASKED_MAGIC = b"APSM"
MASKED_FORMAT = 1
_PREFIX = struct.Struct("<4sHI")
MAX_MASKED_HEADER = 1 << 20


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SecAggError("malformed", f"{what} is not base64") from None
    if len(raw) != size:
        raise SecAggError("malformed", f"{what} has {len(raw)} bytes, not {size}")
    return raw


class MaskKey(Message):
    """A box's X25519 public key for one round, signed with its identity key."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    public_key: str = Field(pattern=KEY_B64, description="X25519 public key, base64.")
    signature: str = Field(pattern=SIGNATURE_B64, description="Ed25519 over signed_bytes().")

    @staticmethod
    def signed_bytes_of(round_id: str, node_id: str, public_key: str) -> bytes:
        """What the identity key signs: domain, round, node and key (no other use can match)."""
        return json.dumps([_KEY_CONTEXT, round_id, node_id, public_key]).encode()

    @classmethod
    def create(cls, key: NodeKey, round_id: str, public_key: bytes) -> "MaskKey":
        text = b64(public_key)
        signature = key.sign(cls.signed_bytes_of(round_id, key.node_id, text))
        return cls(
            round_id=round_id, node_id=key.node_id, public_key=text, signature=b64(signature)
        )

    def verify(self, trust: TrustStore) -> bytes:
        """Check the inner signature against `node_id`'s trusted key; the raw public key."""
        signature = unb64(self.signature, 64, "signature")
        try:
            trust.verify(
                self.node_id,
                self.signed_bytes_of(self.round_id, self.node_id, self.public_key),
                signature,
            )
        except UnknownSignerError as exc:
            raise SecAggError("unknown_signer", str(exc)) from None
        except BadSignatureError as exc:
            raise SecAggError("bad_signature", f"mask key of {self.node_id}: {exc}") from None
        return unb64(self.public_key, PUBLIC_KEY_BYTES, "public_key")


class KeySet(Message):
    """The round's mask keys, relayed by the aggregator; masks are made against exactly these."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    keys: tuple[MaskKey, ...] = Field(min_length=2, max_length=MAX_KEYS)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [k.node_id for k in self.keys]
        if ids != sorted(ids):
            raise ValueError("keys must be sorted by node_id")
        if len(set(ids)) != len(ids):
            raise ValueError("a node appears twice in the key set")
        if len({k.public_key for k in self.keys}) != len(ids):
            raise ValueError("two nodes share one public key")
        if any(k.round_id != self.round_id for k in self.keys):
            raise ValueError("a key belongs to another round")
        return self

    @property
    def sha256(self) -> str:
        return digest(self.model_dump_json())

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(k.node_id for k in self.keys)


class ReportingSet(Message):
    """The aggregator's commitment: whose masked updates it holds and who dropped out."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    keyset_sha256: str = Field(pattern=SHA256)
    reporting: tuple[TopicSafeId, ...] = Field(min_length=1, max_length=MAX_KEYS)
    dropped: tuple[TopicSafeId, ...] = Field(max_length=MAX_KEYS)

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        if len(set(self.reporting)) != len(self.reporting) or len(set(self.dropped)) != len(
            self.dropped
        ):
            raise ValueError("a node is listed twice")
        if set(self.reporting) & set(self.dropped):
            raise ValueError("a node is both reporting and dropped")
        return self

    @property
    def sha256(self) -> str:
        return digest(self.model_dump_json())


class PeerSeed(Message):
    """One pairwise seed, revealed because `peer` dropped out."""

    peer: TopicSafeId
    seed: str = Field(pattern=KEY_B64)


class SeedReveal(Message):
    """A surviving box's seeds with the dropped boxes of a committed round."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    commit_sha256: str = Field(pattern=SHA256)
    seeds: tuple[PeerSeed, ...] = Field(max_length=MAX_KEYS)


class MaskedHeader(Message):
    """Everything about a masked update but its values."""

    format: Literal[1]
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    keyset_sha256: str = Field(pattern=SHA256)
    weight: int = Field(ge=1, description="Capped sample count; the sum is divided by the total.")
    layout: tuple[tuple[str, int, int], ...] = Field(min_length=1, max_length=100_000)
    count: int = Field(ge=1)


def pack_masked(header: MaskedHeader, values: np.ndarray) -> bytes:
    """Blob: magic `APSM`, format, header length, JSON header, little-endian uint32 values."""
    if values.dtype != np.uint32 or values.size != header.count:
        raise ValueError("values must be uint32 and match the header's count")
    raw = header.model_dump_json().encode()
    return (
        _PREFIX.pack(MASKED_MAGIC, MASKED_FORMAT, len(raw)) + raw + values.astype("<u4").tobytes()
    )


def unpack_masked(blob: bytes, layout: Layout) -> tuple[MaskedHeader, np.ndarray]:
    """Parse a masked-update blob and check it against the round's layout, or `SecAggError`."""
    if len(blob) < _PREFIX.size:
        raise SecAggError("truncated", f"masked update has only {len(blob)} bytes")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MASKED_MAGIC:
        raise SecAggError("malformed", f"not a masked update (magic {magic!r})")
    if version != MASKED_FORMAT:
        raise SecAggError("malformed", f"masked update format {version} is not supported")
    if header_len > MAX_MASKED_HEADER or _PREFIX.size + header_len > len(blob):
        raise SecAggError("truncated", f"header length {header_len} runs past the blob")
    try:
        header = MaskedHeader.model_validate_json(blob[_PREFIX.size : _PREFIX.size + header_len])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "header"
        raise SecAggError("malformed", f"{where}: {err['msg']}") from None
    if header.layout != layout:
        raise SecAggError("wrong_layout", "tensors or shapes differ from the round's adapter")
    if header.count != layout_size(layout):
        raise SecAggError("wrong_length", f"count {header.count} != {layout_size(layout)}")
    body = blob[_PREFIX.size + header_len :]
    if len(body) != 4 * header.count:
        raise SecAggError(
            "truncated" if len(body) < 4 * header.count else "wrong_length",
            f"body has {len(body)} bytes, {4 * header.count} expected",
        )
    return header, np.frombuffer(body, dtype="<u4").astype(np.uint32)


def seed_bytes(peer_seed: PeerSeed) -> bytes:
    return unb64(peer_seed.seed, SEED_BYTES, f"seed for {peer_seed.peer}")
