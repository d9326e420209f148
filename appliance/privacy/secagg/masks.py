"""Pairwise masks: X25519 agreement, HKDF to a per-pair seed, ChaCha20 keystream as uint32s.

For boxes u < v (by node id) sharing seed s_uv, u adds PRG(s_uv) and v subtracts it, modulo
2^32; summed over all pairs the masks cancel, and each single masked vector is uniform to
anyone who does not know the seeds. Seeds are bound to the round and to the exact key set
(HKDF salt = its sha256), so a seed revealed for a dropped box is useless in any other round.
"""

import hashlib
import json

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.privacy.secagg.errors import SecAggError

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
_INFO = "appliance/secagg/v1/pair-seed"
_NONCE = bytes(16)  # 4-byte block counter 0 + 12-byte nonce 0: every key (seed) is used once


def pair_seed(
    own: X25519PrivateKey,
    peer_public: bytes,
    *,
    round_id: str,
    keyset_sha256: str,
    own_id: str,
    peer_id: str,
) -> bytes:
    """The 32-byte seed this box shares with `peer_id` in this round (same on both sides)."""
    if len(peer_public) != PUBLIC_KEY_BYTES:
        raise SecAggError("bad_key", f"{peer_id}: public key has {len(peer_public)} bytes")
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise SecAggError("bad_key", f"{peer_id}: unusable public key ({exc})") from None
    own_public = own.public_key().public_bytes_raw()
    pair = sorted([(own_id, own_public.hex()), (peer_id, peer_public.hex())])
    info = json.dumps([_INFO, round_id, pair], separators=(",", ":")).encode()
    return HKDF(
        algorithm=hashes.SHA256(),
        length=SEED_BYTES,
        salt=bytes.fromhex(keyset_sha256),
        info=info,
    ).derive(shared)


def expand(seed: bytes, count: int) -> np.ndarray:
    """`count` uint32 values from the ChaCha20 keystream keyed by `seed`."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("bad_seed", f"seed has {len(seed)} bytes, not {SEED_BYTES}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * count)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def sign_for(own_id: str, peer_id: str) -> int:
    """+1 when this box adds the pair's mask (its id sorts first), -1 when it subtracts it."""
    if own_id == peer_id:
        raise ValueError("a box has no mask with itself")
    return 1 if own_id < peer_id else -1


def apply_mask(vector: np.ndarray, seed: bytes, sign: int) -> np.ndarray:
    """vector + sign * PRG(seed) modulo 2^32 (uint32 arithmetic wraps)."""
    mask = expand(seed, vector.size)
    with np.errstate(over="ignore"):
        out: np.ndarray = (vector + mask if sign > 0 else vector - mask).astype(np.uint32)
    return out


def digest(text: str) -> str:
    """sha256 hex of a canonical JSON text (key sets and commits are named by it)."""
    return hashlib.sha256(text.encode()).hexdigest()
