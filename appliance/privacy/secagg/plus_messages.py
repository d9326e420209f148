"""SecAgg+ (plan version 2) messages and the version-2 masked update.

Small messages travel in the transport's signed envelope on `msg/<sender>/<kind>`:

    secagg2_key     box -> aggregator   PlusKey: share-encryption and mask-agreement X25519
                                        keys and a commitment to the self-mask seed, signed
                                        with the box's identity key
    secagg2_keys    aggregator -> boxes PlusKeySet: the round's PlusKeys, relayed unchanged
    secagg2_shares  box -> aggregator   ShareBundle: Shamir shares of the box's self-mask
                                        seed and mask key, encrypted for each neighbour
    secagg2_relay   aggregator -> boxes ShareRelay: the shares for one recipient, and who
                                        sent shares (the set masks are made with)
    secagg2_commit  aggregator -> boxes PlusCommit: who reported, who dropped after sharing
    secagg2_ack     box -> aggregator   CommitAck: the box's signature over the commit and
                                        the hash of the global adapter it trained from
    secagg2_acks    aggregator -> boxes AckSet: the signed acks (the consistency check)
    secagg2_reveal  box -> aggregator   ShareReveal: per neighbour, the self-mask share
                                        (it reported) or the mask-key share (it dropped)

The masked update is an artifact of kind `masked_update`, format 2: 2 or 4 bytes per
coordinate (the round's ring).
"""

import base64
import binascii
import json
from functools import cached_property
from typing import Literal, Self

import numpy as np
from pydantic import Field, ValidationError, model_validator

from appliance.config.base import TopicSafeId
from appliance.federation.messages import ROUND_ID, SHA256
from appliance.identity import NodeKey, TrustStore
from appliance.identity.trust import BadSignatureError, UnknownSignerError
from appliance.privacy.secagg import ring
from appliance.privacy.secagg.encoding import Layout, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.masks import PUBLIC_KEY_BYTES, digest
from appliance.privacy.secagg.messages import (
    _PREFIX,
    KEY_B64,
    MASKED_MAGIC,
    MAX_MASKED_HEADER,
    SIGNATURE_B64,
    b64,
    unb64,
)
from appliance.privacy.secagg.shamir import SHARE_BYTES
from appliance.transport.wire import WireModel as Message

MAX_BOXES = 150
"""A key set (two keys and a commitment per box, ~400 bytes) must fit a 64 KiB message."""
SHARE_B64 = r"^[A-Za-z0-9+/]{88}$"
"""Base64 of a 66-byte share."""
SEALED_B64 = r"^[A-Za-z0-9+/]{214}==$"
"""Base64 of nonce (12) + two shares (132) + tag (16) = 160 bytes."""
MASKED_FORMAT_V2 = 2
_KEY_CONTEXT = "appliance/secagg/v2/keys"
_ACK_CONTEXT = "appliance/secagg/v2/commit-ack"


def _sorted_unique(ids: list[str], what: str) -> None:
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{what} must be sorted and unique")


def _verify(trust: TrustStore, node_id: str, data: bytes, signature: str, what: str) -> None:
    try:
        trust.verify(node_id, data, unb64(signature, 64, "signature"))
    except UnknownSignerError as exc:
        raise SecAggError("unknown_signer", str(exc)) from None
    except BadSignatureError as exc:
        raise SecAggError("bad_signature", f"{what} of {node_id}: {exc}") from None


class PlusKey(Message):
    """A box's two public keys for one round and its self-mask commitment, signed."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    share_key: str = Field(pattern=KEY_B64, description="X25519 key the shares are sealed to.")
    mask_key: str = Field(pattern=KEY_B64, description="X25519 key of the pairwise masks.")
    self_mask_sha256: str = Field(pattern=SHA256, description="sha256 of the self-mask seed.")
    signature: str = Field(pattern=SIGNATURE_B64)

    @staticmethod
    def signed_bytes_of(
        round_id: str, node_id: str, share_key: str, mask_key: str, commitment: str
    ) -> bytes:
        """Domain, round, node, both keys and the commitment: nothing else can match."""
        return json.dumps(
            [_KEY_CONTEXT, round_id, node_id, share_key, mask_key, commitment]
        ).encode()

    @classmethod
    def create(
        cls, key: NodeKey, round_id: str, share_key: bytes, mask_key: bytes, commitment: str
    ) -> "PlusKey":
        share, mask = b64(share_key), b64(mask_key)
        signed = cls.signed_bytes_of(round_id, key.node_id, share, mask, commitment)
        return cls(
            round_id=round_id,
            node_id=key.node_id,
            share_key=share,
            mask_key=mask,
            self_mask_sha256=commitment,
            signature=b64(key.sign(signed)),
        )

    def verify(self, trust: TrustStore) -> tuple[bytes, bytes]:
        """Check the identity signature; the raw share and mask public keys."""
        signed = self.signed_bytes_of(
            self.round_id, self.node_id, self.share_key, self.mask_key, self.self_mask_sha256
        )
        _verify(trust, self.node_id, signed, self.signature, "keys")
        return (
            unb64(self.share_key, PUBLIC_KEY_BYTES, "share_key"),
            unb64(self.mask_key, PUBLIC_KEY_BYTES, "mask_key"),
        )


class PlusKeySet(Message):
    """The round's keys as the aggregator relays them; everything after is bound to it."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    keys: tuple[PlusKey, ...] = Field(min_length=2, max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _sorted_unique([k.node_id for k in self.keys], "keys")
        publics = [k.share_key for k in self.keys] + [k.mask_key for k in self.keys]
        if len(set(publics)) != len(publics):
            raise ValueError("a public key appears twice in the key set")
        if any(k.round_id != self.round_id for k in self.keys):
            raise ValueError("a key belongs to another round")
        return self

    @cached_property
    def sha256(self) -> str:
        """sha256 of the canonical JSON (computed once: the model is frozen)."""
        return digest(self.model_dump_json())

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(k.node_id for k in self.keys)

    def key_of(self, node_id: str) -> PlusKey:
        for key in self.keys:
            if key.node_id == node_id:
                return key
        raise SecAggError("not_participant", f"{node_id} is not in the key set")


class EncryptedShare(Message):
    """One neighbour's shares, sealed to it (ChaCha20-Poly1305 under an X25519 key)."""

    recipient: TopicSafeId
    sealed: str = Field(pattern=SEALED_B64)


class ShareBundle(Message):
    """A box's shares of its two secrets, one sealed box per neighbour."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    keyset_sha256: str = Field(pattern=SHA256)
    shares: tuple[EncryptedShare, ...] = Field(min_length=1, max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _sorted_unique([s.recipient for s in self.shares], "recipients")
        return self


class RelayedShare(Message):
    sender: TopicSafeId
    sealed: str = Field(pattern=SEALED_B64)


class ShareRelay(Message):
    """The shares sealed to `recipient`, and every box whose shares were relayed."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    recipient: TopicSafeId
    keyset_sha256: str = Field(pattern=SHA256)
    shared: tuple[TopicSafeId, ...] = Field(min_length=1, max_length=MAX_BOXES)
    shares: tuple[RelayedShare, ...] = Field(max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _sorted_unique(list(self.shared), "shared")
        _sorted_unique([s.sender for s in self.shares], "senders")
        return self


class PlusCommit(Message):
    """The aggregator's commitment: who shared, who reported, who dropped after sharing."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    keyset_sha256: str = Field(pattern=SHA256)
    shared: tuple[TopicSafeId, ...] = Field(min_length=2, max_length=MAX_BOXES)
    reporting: tuple[TopicSafeId, ...] = Field(min_length=1, max_length=MAX_BOXES)
    dropped: tuple[TopicSafeId, ...] = Field(max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _partition(self) -> Self:
        for ids, what in ((self.shared, "shared"), (self.reporting, "reporting")):
            _sorted_unique(list(ids), what)
        _sorted_unique(list(self.dropped), "dropped")
        if set(self.reporting) & set(self.dropped):
            raise ValueError("a node is both reporting and dropped")
        if set(self.reporting) | set(self.dropped) != set(self.shared):
            raise ValueError("reporting and dropped must partition shared")
        return self

    @cached_property
    def sha256(self) -> str:
        """sha256 of the canonical JSON (computed once: the model is frozen)."""
        return digest(self.model_dump_json())


class CommitAck(Message):
    """A box's signed agreement with a commit, and the global adapter it trained from."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    commit_sha256: str = Field(pattern=SHA256)
    global_sha256: str = Field(pattern=SHA256)
    signature: str = Field(pattern=SIGNATURE_B64)

    @staticmethod
    def signed_bytes_of(round_id: str, node_id: str, commit: str, global_sha: str) -> bytes:
        return json.dumps([_ACK_CONTEXT, round_id, node_id, commit, global_sha]).encode()

    @classmethod
    def create(cls, key: NodeKey, round_id: str, commit: str, global_sha: str) -> "CommitAck":
        signed = cls.signed_bytes_of(round_id, key.node_id, commit, global_sha)
        return cls(
            round_id=round_id,
            node_id=key.node_id,
            commit_sha256=commit,
            global_sha256=global_sha,
            signature=b64(key.sign(signed)),
        )

    def verify(self, trust: TrustStore) -> None:
        signed = self.signed_bytes_of(
            self.round_id, self.node_id, self.commit_sha256, self.global_sha256
        )
        _verify(trust, self.node_id, signed, self.signature, "commit ack")


class AckSet(Message):
    """The acks the aggregator holds for its commit: every box checks them before revealing."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    commit_sha256: str = Field(pattern=SHA256)
    acks: tuple[CommitAck, ...] = Field(min_length=1, max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _sorted_unique([a.node_id for a in self.acks], "acks")
        return self

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(a.node_id for a in self.acks)


class RevealedShare(Message):
    owner: TopicSafeId
    share: str = Field(pattern=SHARE_B64)


class ShareReveal(Message):
    """A box's shares for the unmasking: self-mask shares of reporting neighbours, mask-key
    shares of dropped ones; never both kinds for one owner."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    commit_sha256: str = Field(pattern=SHA256)
    self_mask: tuple[RevealedShare, ...] = Field(max_length=MAX_BOXES)
    mask_key: tuple[RevealedShare, ...] = Field(max_length=MAX_BOXES)

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        owners_b = [s.owner for s in self.self_mask]
        owners_k = [s.owner for s in self.mask_key]
        _sorted_unique(owners_b, "self_mask owners")
        _sorted_unique(owners_k, "mask_key owners")
        if set(owners_b) & set(owners_k):
            raise ValueError("both shares of one owner revealed")
        return self


def share_bytes(revealed: RevealedShare) -> bytes:
    return unb64(revealed.share, SHARE_BYTES, f"share of {revealed.owner}")


class MaskedHeaderV2(Message):
    """Everything about a version-2 masked update but its values."""

    format: Literal[2]
    round_id: str = Field(pattern=ROUND_ID)
    node_id: TopicSafeId
    keyset_sha256: str = Field(pattern=SHA256)
    ring_bits: Literal[16, 32]
    weight: int = Field(ge=1, description="Capped sample count; the sum is divided by the total.")
    layout: tuple[tuple[str, int, int], ...] = Field(min_length=1, max_length=100_000)
    count: int = Field(ge=1)


def pack_masked_v2(header: MaskedHeaderV2, values: np.ndarray) -> bytes:
    """Blob: magic `APSM`, format 2, header length, JSON header, the ring elements."""
    if values.size != header.count:
        raise ValueError("values must match the header's count")
    raw = header.model_dump_json().encode()
    prefix = _PREFIX.pack(MASKED_MAGIC, MASKED_FORMAT_V2, len(raw))
    return prefix + raw + ring.pack(values, header.ring_bits)


def unpack_masked_v2(blob: bytes, layout: Layout, bits: int) -> tuple[MaskedHeaderV2, np.ndarray]:
    """Parse a format-2 masked update and check it against the round, or `SecAggError`."""
    if len(blob) < _PREFIX.size:
        raise SecAggError("truncated", f"masked update has only {len(blob)} bytes")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MASKED_MAGIC:
        raise SecAggError("malformed", f"not a masked update (magic {magic!r})")
    if version != MASKED_FORMAT_V2:
        raise SecAggError("malformed", f"masked update format {version} is not this round's 2")
    if header_len > MAX_MASKED_HEADER or _PREFIX.size + header_len > len(blob):
        raise SecAggError("truncated", f"header length {header_len} runs past the blob")
    try:
        header = MaskedHeaderV2.model_validate_json(blob[_PREFIX.size : _PREFIX.size + header_len])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "header"
        raise SecAggError("malformed", f"{where}: {err['msg']}") from None
    if header.layout != layout:
        raise SecAggError("wrong_layout", "tensors or shapes differ from the round's adapter")
    if header.count != layout_size(layout):
        raise SecAggError("wrong_length", f"count {header.count} != {layout_size(layout)}")
    if header.ring_bits != bits:
        raise SecAggError("wrong_ring", f"{header.ring_bits}-bit ring, the round's is {bits}")
    body = blob[_PREFIX.size + header_len :]
    expected = bits // 8 * header.count
    if len(body) != expected:
        raise SecAggError(
            "truncated" if len(body) < expected else "wrong_length",
            f"body has {len(body)} bytes, {expected} expected",
        )
    return header, ring.unpack(body, header.count, bits)


def b64_bytes(text: str, what: str) -> bytes:
    """Base64 of any length (sealed shares), or `SecAggError`."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SecAggError("malformed", f"{what} is not base64") from None
