"""Shares travel through the aggregator sealed to their recipient: X25519 between the
sender's and the recipient's signed share keys, HKDF-SHA256 to a ChaCha20-Poly1305 key (salt:
the key set's sha256; info: round and the pair), a random 96-bit nonce, and the round, key
set, sender and recipient as associated data. The aggregator relays what it cannot read or
alter; a box opens only what its neighbour sealed to it for this round.
"""

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import b64
from appliance.privacy.secagg.plus_messages import b64_bytes

_INFO = "appliance/secagg/v2/share-seal"
NONCE_BYTES = 12


def _key(
    own: X25519PrivateKey, peer_public: bytes, round_id: str, keyset_sha256: str, pair: list[str]
) -> ChaCha20Poly1305:
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError("bad_key", f"unusable share key ({exc})") from None
    info = json.dumps([_INFO, round_id, sorted(pair)]).encode()
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(keyset_sha256), info=info
    ).derive(shared)
    return ChaCha20Poly1305(key)


def _aad(round_id: str, keyset_sha256: str, sender: str, recipient: str) -> bytes:
    return json.dumps([_INFO, round_id, keyset_sha256, sender, recipient]).encode()


def seal_share(
    own: X25519PrivateKey,
    recipient_public: bytes,
    plain: bytes,
    *,
    round_id: str,
    keyset_sha256: str,
    sender: str,
    recipient: str,
) -> str:
    """base64(nonce + ciphertext + tag) of `plain` for `recipient`."""
    cipher = _key(own, recipient_public, round_id, keyset_sha256, [sender, recipient])
    nonce = os.urandom(NONCE_BYTES)
    aad = _aad(round_id, keyset_sha256, sender, recipient)
    return b64(nonce + cipher.encrypt(nonce, plain, aad))


def open_share(
    own: X25519PrivateKey,
    sender_public: bytes,
    sealed: str,
    *,
    round_id: str,
    keyset_sha256: str,
    sender: str,
    recipient: str,
) -> bytes:
    """The plain shares, or `SecAggError("bad_seal")` when anything was altered or misdirected."""
    raw = b64_bytes(sealed, f"sealed share from {sender}")
    cipher = _key(own, sender_public, round_id, keyset_sha256, [sender, recipient])
    try:
        return cipher.decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(round_id, keyset_sha256, sender, recipient)
        )
    except InvalidTag:
        raise SecAggError("bad_seal", f"the share from {sender} does not open") from None
