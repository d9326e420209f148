"""Masks in the ring Z_(2^bits), bits 16 or 32: the SecAgg+ (version 2) vectors.

A 16-bit ring halves the masked bytes of the 32-bit one, and is exact as long as no sum can
wrap: every coordinate of the sum of the reporting boxes' weighted codes (plus the DP noise
shares, bounded by their margin) must stay within +-(2^15 - 1). `ring_bits_for` picks the
smallest ring whose signed range holds n * 127 * max_weight + noise margin.

The pseudo-random mask of a 32-byte seed is the ChaCha20 keystream (zero nonce: every seed
is used once) read as little-endian unsigned integers of the ring's width.
"""

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.masks import SEED_BYTES

RING_BITS = (16, 32)
_NONCE = bytes(16)


def signed_limit(bits: int) -> int:
    """The largest |value| the ring reads back as a signed integer."""
    return (1 << (bits - 1)) - 1


def ring_bits_for(bound: int) -> int:
    """The smallest ring (16 or 32 bits) in which sums up to |bound| never wrap."""
    for bits in RING_BITS:
        if bound <= signed_limit(bits):
            return bits
    raise ValueError(f"a sum bound of {bound} does not fit even a 32-bit ring")


def _dtype(bits: int) -> str:
    if bits not in RING_BITS:
        raise SecAggError("malformed", f"ring of {bits} bits is not supported")
    return "<u2" if bits == 16 else "<u4"


def expand(seed: bytes, count: int, bits: int) -> np.ndarray:
    """`count` ring elements (as uint32) from the ChaCha20 keystream keyed by `seed`."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("bad_seed", f"seed has {len(seed)} bytes, not {SEED_BYTES}")
    width = bits // 8
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(width * count)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=_dtype(bits)).astype(np.uint32)


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """Integers (any signed or unsigned dtype) modulo 2^bits, as uint32."""
    wide = np.asarray(values).astype(np.int64) & ((1 << bits) - 1)
    return wide.astype(np.uint32)


def add(vector: np.ndarray, other: np.ndarray, sign: int, bits: int) -> np.ndarray:
    """vector + sign * other modulo 2^bits (unsigned arithmetic of the ring's width wraps)."""
    dtype = np.uint16 if bits == 16 else np.uint32
    a: np.ndarray = vector.astype(dtype)
    b: np.ndarray = other.astype(dtype)
    with np.errstate(over="ignore"):
        out: np.ndarray = np.add(a, b) if sign > 0 else np.subtract(a, b)
    return out.astype(np.uint32)


def apply_mask(vector: np.ndarray, seed: bytes, sign: int, bits: int) -> np.ndarray:
    """vector + sign * PRG(seed) modulo 2^bits."""
    return add(vector, expand(seed, vector.size, bits), sign, bits)


def to_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements read back as signed integers (int64) in [-2^(bits-1), 2^(bits-1))."""
    wide = np.asarray(values).astype(np.int64) & ((1 << bits) - 1)
    return np.where(wide >= 1 << (bits - 1), wide - (1 << bits), wide)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Little-endian bytes of the ring elements: 2 or 4 bytes each."""
    return np.asarray(values, dtype=np.uint32).astype(_dtype(bits)).tobytes()


def unpack(body: bytes, count: int, bits: int) -> np.ndarray:
    """Ring elements from their bytes (the length is checked by the caller)."""
    return np.frombuffer(body, dtype=_dtype(bits), count=count).astype(np.uint32)
